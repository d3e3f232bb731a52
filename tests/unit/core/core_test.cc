#include "core/core.h"

#include <gtest/gtest.h>

#include <set>

namespace gatehouse::core {
namespace {

TEST(Error, TableMapsCodesToStatusAndName) {
  EXPECT_EQ(http_status(ErrorCode::kRouteNotFound), 404);
  EXPECT_EQ(error_name(ErrorCode::kRouteNotFound), "RouteNotFound");
  EXPECT_EQ(http_status(ErrorCode::kHeaderTooLarge), 431);
  EXPECT_EQ(http_status(ErrorCode::kPayloadTooLarge), 413);
  EXPECT_EQ(http_status(ErrorCode::kTooManyRequests), 429);
  EXPECT_EQ(reason_phrase(431), "Request Header Fields Too Large");
}

TEST(Clock, ManualClockMovesOnlyWhenAdvanced) {
  ManualClock clock;
  const auto t0 = clock.now();
  const auto w0 = clock.wall();
  EXPECT_EQ(clock.now(), t0);
  clock.advance(std::chrono::milliseconds(1500));
  EXPECT_EQ(clock.now() - t0, std::chrono::milliseconds(1500));
  EXPECT_EQ(clock.wall() - w0, std::chrono::milliseconds(1500));
}

TEST(RequestId, UniqueAndHex) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    RequestId id;
    next_request_id(id);
    const std::string s(view(id));
    ASSERT_EQ(s.size(), 16u);
    ASSERT_EQ(s.find_first_not_of("0123456789abcdef"), std::string::npos);
    ASSERT_TRUE(seen.insert(s).second);
  }
}

TEST(Json, EscapesControlQuotesAndInvalidUtf8) {
  std::string out;
  json_escape(out, "a\"b\\c\n\x01");
  EXPECT_EQ(out, "a\\\"b\\\\c\\n\\u0001");
  out.clear();
  json_escape(out, "caf\xc3\xa9");  // valid UTF-8 is kept
  EXPECT_EQ(out, "caf\xc3\xa9");
  out.clear();
  json_escape(out, "\xc3(\xff\xed\xa0\x80");  // truncated, invalid byte, surrogate
  EXPECT_EQ(out, "\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

TEST(Hash, Sha256KnownVector) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Hash, ConstantTimeEqual) {
  EXPECT_TRUE(constant_time_equal("secret", "secret"));
  EXPECT_FALSE(constant_time_equal("secret", "secreT"));
  EXPECT_FALSE(constant_time_equal("secret", "secret2"));
  EXPECT_TRUE(constant_time_equal("", ""));
}

TEST(Format, Uint) {
  char buf[20];
  EXPECT_EQ(std::string(buf, format_uint(buf, 0)), "0");
  EXPECT_EQ(std::string(buf, format_uint(buf, 18446744073709551615ull)), "18446744073709551615");
}

TEST(Random, HexLengthAndDistinct) {
  const auto a = random_hex(16);
  const auto b = random_hex(16);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace gatehouse::core
