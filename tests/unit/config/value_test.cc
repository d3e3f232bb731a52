#include "config/value.h"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

namespace gatehouse::config::detail {
namespace {

using std::chrono::milliseconds;

TEST(ParseInteger, AcceptsDecimalOnly) {
  EXPECT_EQ(parse_integer("0"), 0);
  EXPECT_EQ(parse_integer("42"), 42);
  EXPECT_EQ(parse_integer("-7"), -7);
  EXPECT_EQ(parse_integer("+7"), 7);
  EXPECT_EQ(parse_integer(""), std::nullopt);
  EXPECT_EQ(parse_integer("-"), std::nullopt);
  EXPECT_EQ(parse_integer("0x10"), std::nullopt);
  EXPECT_EQ(parse_integer("1e3"), std::nullopt);
  EXPECT_EQ(parse_integer("1.0"), std::nullopt);
  EXPECT_EQ(parse_integer(" 1"), std::nullopt);
  EXPECT_EQ(parse_integer("1 "), std::nullopt);
}

TEST(ParseInteger, Saturates) {
  EXPECT_EQ(parse_integer("9223372036854775807"), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(parse_integer("99999999999999999999999"), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(parse_integer("-99999999999999999999999"), std::numeric_limits<std::int64_t>::min());
}

TEST(ParseDecimal, DigitsWithAnOptionalFraction) {
  EXPECT_EQ(parse_decimal("0"), 0.0);
  EXPECT_EQ(parse_decimal("100"), 100.0);
  EXPECT_EQ(parse_decimal("0.5"), 0.5);
  EXPECT_EQ(parse_decimal(".5"), 0.5);
  EXPECT_EQ(parse_decimal("5."), 5.0);
  EXPECT_EQ(parse_decimal("+2.25"), 2.25);
  EXPECT_EQ(parse_decimal("-1"), -1.0);
  EXPECT_EQ(parse_decimal("0.001"), 0.001);
  EXPECT_EQ(parse_decimal("007.50"), 7.5);
}

TEST(ParseDecimal, RejectsOtherShapes) {
  for (const std::string_view s : {"", ".", "-", "+.", "1e3", "1E3", "0x10", ".inf", "inf", "nan",
                                   "1.2.3", " 1", "1 ", "1,5", "--1", "1_000", "+-1"}) {
    EXPECT_EQ(parse_decimal(s), std::nullopt) << s;
  }
}

TEST(ParseDecimal, SaturatesOutOfRange) {
  const std::string huge = "1" + std::string(400, '0');
  EXPECT_EQ(parse_decimal(huge), std::numeric_limits<double>::infinity());
  EXPECT_EQ(parse_decimal("-" + huge), -std::numeric_limits<double>::infinity());
  const auto tiny = parse_decimal("0." + std::string(400, '0') + "1");
  ASSERT_TRUE(tiny.has_value());
  EXPECT_EQ(*tiny, 0.0);
}

TEST(ParseSize, BytesAndBinarySuffixes) {
  EXPECT_EQ(parse_size("0"), 0U);
  EXPECT_EQ(parse_size("1024"), 1024U);
  EXPECT_EQ(parse_size("16KiB"), 16U * 1024);
  EXPECT_EQ(parse_size("10MiB"), 10U * 1024 * 1024);
  EXPECT_EQ(parse_size("4GiB"), 4ULL * 1024 * 1024 * 1024);
  EXPECT_EQ(parse_size("99999999999GiB"), std::numeric_limits<std::uint64_t>::max());
}

TEST(ParseSize, RejectsOtherShapes) {
  for (const std::string_view s :
       {"", "KiB", "16KB", "16kib", "16 KiB", "-1", "1.5MiB", "16K", "0x10", "+5", "16KiBKiB"}) {
    EXPECT_EQ(parse_size(s), std::nullopt) << s;
  }
}

TEST(ParseDuration, Units) {
  EXPECT_EQ(parse_duration("500ms"), milliseconds(500));
  EXPECT_EQ(parse_duration("10s"), milliseconds(10'000));
  EXPECT_EQ(parse_duration("2m"), milliseconds(120'000));
  EXPECT_EQ(parse_duration("1h"), milliseconds(3'600'000));
  EXPECT_EQ(parse_duration("0s"), milliseconds(0));
  EXPECT_EQ(parse_duration("99999999999999999999h"),
            milliseconds(std::numeric_limits<std::int64_t>::max()));
}

TEST(ParseDuration, RejectsBareNumbersAndOtherShapes) {
  for (const std::string_view s :
       {"", "10", "0", "s", "ms", "10 s", "10sec", "1.5s", "-1s", "10S", "10us", "1d", "10ms5"}) {
    EXPECT_EQ(parse_duration(s), std::nullopt) << s;
  }
}

TEST(FormatDuration, LargestExactUnit) {
  EXPECT_EQ(format_duration(milliseconds(0)), "0s");
  EXPECT_EQ(format_duration(milliseconds(100)), "100ms");
  EXPECT_EQ(format_duration(milliseconds(1500)), "1500ms");
  EXPECT_EQ(format_duration(milliseconds(10'000)), "10s");
  EXPECT_EQ(format_duration(milliseconds(600'000)), "10m");
  EXPECT_EQ(format_duration(milliseconds(3'600'000)), "1h");
}

TEST(ParseListen, Accepts) {
  auto l = parse_listen("127.0.0.1:8080");
  ASSERT_TRUE(l) << l.error();
  EXPECT_EQ(l->host, "127.0.0.1");
  EXPECT_EQ(l->port, 8080);
  l = parse_listen("[::1]:0");
  ASSERT_TRUE(l) << l.error();
  EXPECT_EQ(l->host, "::1");
  EXPECT_EQ(l->port, 0);
  l = parse_listen("localhost:65535");
  ASSERT_TRUE(l) << l.error();
  EXPECT_EQ(l->port, 65535);
  EXPECT_TRUE(parse_listen("0.0.0.0:80"));
  EXPECT_TRUE(parse_listen("[::]:80"));
}

TEST(ParseListen, Rejects) {
  EXPECT_EQ(parse_listen("8080").error(),
            "expected \"host:port\" (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"), got '8080'");
  EXPECT_EQ(parse_listen(":8080").error(),
            "expected \"host:port\" (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"), got ':8080'");
  EXPECT_EQ(parse_listen("127.0.0.1:65536").error(), "port '65536' is not a number in 0..65535");
  EXPECT_EQ(parse_listen("127.0.0.1:").error(), "port '' is not a number in 0..65535");
  EXPECT_EQ(parse_listen("127.0.0.1:-1").error(), "port '-1' is not a number in 0..65535");
  EXPECT_EQ(parse_listen("example.com:80").error(),
            "host 'example.com' is not an IP address or \"localhost\"");
  EXPECT_EQ(parse_listen("::1:8080").error(),
            "IPv6 addresses need brackets, e.g. \"[::1]:8080\"; got '::1:8080'");
  EXPECT_EQ(parse_listen("[::g]:80").error(), "'::g' is not an IPv6 address");
  EXPECT_FALSE(parse_listen("[::1]8080"));
  EXPECT_FALSE(parse_listen("[::1]:"));
  EXPECT_FALSE(parse_listen("256.0.0.1:80"));
  EXPECT_FALSE(parse_listen("01.2.3.4:80"));
  EXPECT_FALSE(parse_listen(std::string_view("127.0.0.1\0x:80", 14)));
}

TEST(ParseUpstreamUrl, Parts) {
  auto u = parse_upstream_url("http://127.0.0.1:9000/v1");
  ASSERT_TRUE(u) << u.error();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 9000);
  EXPECT_EQ(u->base_path, "/v1");
  u = parse_upstream_url("http://api.internal");
  ASSERT_TRUE(u) << u.error();
  EXPECT_EQ(u->host, "api.internal");
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->base_path, "");
  u = parse_upstream_url("HTTP://[::1]:81/a/b/");
  ASSERT_TRUE(u) << u.error();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 81);
  EXPECT_EQ(u->base_path, "/a/b");
  u = parse_upstream_url("http://h/");
  ASSERT_TRUE(u) << u.error();
  EXPECT_EQ(u->base_path, "");
}

TEST(ParseUpstreamUrl, Rejects) {
  EXPECT_EQ(parse_upstream_url("https://a").error(),
            "https upstreams are not supported yet; use http://");
  EXPECT_EQ(parse_upstream_url("ftp://a").error(),
            "expected http://host[:port][/base], got 'ftp://a'");
  EXPECT_EQ(parse_upstream_url("127.0.0.1:9000").error(),
            "expected http://host[:port][/base], got '127.0.0.1:9000'");
  EXPECT_EQ(parse_upstream_url("http://").error(), "'http://' has no host");
  EXPECT_EQ(parse_upstream_url("http://a:0").error(), "port '0' is not a number in 1..65535");
  EXPECT_EQ(parse_upstream_url("http://a:99999").error(),
            "port '99999' is not a number in 1..65535");
  EXPECT_EQ(parse_upstream_url("http://u:p@a").error(), "'http://u:p@a' must not have user info");
  EXPECT_EQ(parse_upstream_url("http://a/?q").error(),
            "'http://a/?q' must not have a query or a fragment");
  EXPECT_EQ(parse_upstream_url("http://a_b").error(), "host 'a_b' is not a valid host name");
  EXPECT_EQ(parse_upstream_url("http://-a").error(), "host '-a' is not a valid host name");
  EXPECT_EQ(parse_upstream_url("http://a..b").error(), "host 'a..b' is not a valid host name");
  EXPECT_EQ(parse_upstream_url("http://[::1").error(), "'http://[::1' has an unclosed '['");
  EXPECT_EQ(parse_upstream_url("http://a/b c").error(),
            "base path '/b c' has a character not allowed in a URL path: ' '");
  EXPECT_EQ(parse_upstream_url("http://a/../b").error(), "base path '/../b' has a '..' segment");
}

TEST(CheckPathTemplate, Accepts) {
  for (const std::string_view s : {"/", "/hello", "/items/{id}", "/items/{id}/", "/files/{proxy+}",
                                   "/a/{b}/c/{d_1}", "/~user/%20x", "/a:b@c!$&'()*+,;=-._"}) {
    EXPECT_EQ(check_path_template(s), std::nullopt) << s;
  }
}

TEST(CheckPathTemplate, Rejects) {
  EXPECT_EQ(check_path_template(""), "must not be empty");
  EXPECT_EQ(check_path_template("hello"), "'hello' must start with '/'");
  EXPECT_EQ(check_path_template("/a//b"), "'/a//b' has an empty segment ('//')");
  EXPECT_EQ(check_path_template("/a/../b"), "'/a/../b' has a '..' segment");
  EXPECT_EQ(check_path_template("/a/./b"), "'/a/./b' has a '.' segment");
  EXPECT_EQ(check_path_template("/items/x{id}"),
            "parameter in segment 'x{id}' must be the whole segment, like {id} or {proxy+}");
  EXPECT_EQ(check_path_template("/items/{id"),
            "parameter in segment '{id' must be the whole segment, like {id} or {proxy+}");
  EXPECT_EQ(check_path_template("/items/{}"),
            "parameter in segment '{}' must be the whole segment, like {id} or {proxy+}");
  EXPECT_EQ(check_path_template("/items/{a-b}"),
            "parameter name 'a-b' must match [A-Za-z0-9_]{1,64}");
  EXPECT_EQ(check_path_template("/items/{+}"), "parameter name '' must match [A-Za-z0-9_]{1,64}");
  EXPECT_EQ(check_path_template("/{p+}/x"), "greedy parameter {p+} must be the last segment");
  EXPECT_EQ(check_path_template("/{id}/{id}"), "duplicate parameter 'id'");
  EXPECT_EQ(check_path_template("/a?b"), "'/a?b' has a character not allowed in a URL path: '?'");
  EXPECT_EQ(check_path_template("/a%2"), "'/a%2' has a '%' that is not followed by two hex digits");
  EXPECT_EQ(check_path_template("/a%zz"),
            "'/a%zz' has a '%' that is not followed by two hex digits");
  EXPECT_EQ(check_path_template("/a\nb"),
            "'/a\\x0ab' has a character not allowed in a URL path: '\\x0a'");
}

TEST(CheckAbsolutePath, NoParameters) {
  EXPECT_EQ(check_absolute_path("/healthz"), std::nullopt);
  EXPECT_EQ(check_absolute_path("/a/{b}"), "'/a/{b}' must not contain '{' or '}'");
}

TEST(Names, Predicates) {
  EXPECT_TRUE(is_name("prod"));
  EXPECT_TRUE(is_name("A_b-9"));
  EXPECT_FALSE(is_name(""));
  EXPECT_FALSE(is_name("a b"));
  EXPECT_FALSE(is_name("a.b"));
  EXPECT_TRUE(is_http_token("GET"));
  EXPECT_TRUE(is_http_token("M-SEARCH"));
  EXPECT_FALSE(is_http_token("GE T"));
  EXPECT_FALSE(is_http_token(""));
  EXPECT_FALSE(is_http_token("a:b"));
  EXPECT_TRUE(is_sha256_hex(std::string(64, 'a')));
  EXPECT_TRUE(is_sha256_hex(std::string(64, 'F')));
  EXPECT_FALSE(is_sha256_hex(std::string(63, 'a')));
  EXPECT_FALSE(is_sha256_hex(std::string(64, 'g')));
  EXPECT_TRUE(has_control("a\tb", false));
  EXPECT_FALSE(has_control("a\tb", true));
  EXPECT_TRUE(has_control("a\x7f", true));
  EXPECT_FALSE(has_control("caf\xc3\xa9", false));
}

TEST(Printable, EscapesAndTruncates) {
  EXPECT_EQ(printable("plain"), "plain");
  EXPECT_EQ(printable(std::string_view("a\0b\n\x1b[31m", 9)), "a\\x00b\\x0a\\x1b[31m");
  EXPECT_EQ(printable("caf\xc3\xa9"), "caf\\xc3\\xa9");
  EXPECT_EQ(printable(std::string(100, 'x'), 4), "xxxx...");
  EXPECT_EQ(printable("abcd", 4), "abcd");
}

TEST(Closest, SuggestsLikelyTypos) {
  constexpr std::array<std::string_view, 3> kKeys{"listen", "threads", "shutdown_grace"};
  EXPECT_EQ(closest("listn", kKeys), "listen");
  EXPECT_EQ(closest("thread", kKeys), "threads");
  EXPECT_EQ(closest("shutdown_grce", kKeys), "shutdown_grace");
  EXPECT_EQ(closest("zzz", kKeys), "");
  EXPECT_EQ(closest("x", kKeys), "");
  EXPECT_EQ(closest("", kKeys), "");
  EXPECT_EQ(closest(std::string(1000, 'l'), kKeys), "");
}

}  // namespace
}  // namespace gatehouse::config::detail
