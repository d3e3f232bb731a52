#include "config/value.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>
#include <set>
#include <system_error>
#include <vector>

namespace gatehouse::config::detail {
namespace {

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_alpha(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_hex(char c) noexcept {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Digits only, saturating at UINT64_MAX; nullopt if `s` is empty or has a non-digit.
std::optional<std::uint64_t> parse_digits(std::string_view s) noexcept {
  if (s.empty()) {
    return std::nullopt;
  }
  std::uint64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) {
      return std::nullopt;
    }
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) {
      v = std::numeric_limits<std::uint64_t>::max();
    } else {
      v = v * 10 + d;
    }
  }
  return v;
}

std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) noexcept {
  if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b) {
    return std::numeric_limits<std::uint64_t>::max();
  }
  return a * b;
}

bool ends_with(std::string_view s, std::string_view suffix) noexcept {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) noexcept {
  if (s.size() < prefix.size()) {
    return false;
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
    if (c != prefix[i]) {
      return false;
    }
  }
  return true;
}

// RFC 3986 pchar, minus '%' (checked separately as a %XX escape).
bool is_pchar(char c) noexcept {
  if (is_alpha(c) || is_digit(c)) {
    return true;
  }
  constexpr std::string_view kOther = "-._~!$&'()*+,;=:@";
  return kOther.find(c) != std::string_view::npos;
}

std::optional<std::uint16_t> parse_port(std::string_view s, std::uint16_t min) noexcept {
  if (s.size() > 5) {
    return std::nullopt;
  }
  const auto v = parse_digits(s);
  if (!v || *v > 65535 || *v < min) {
    return std::nullopt;
  }
  return static_cast<std::uint16_t>(*v);
}

// inet_pton reads a C string: an embedded NUL would hide whatever follows it.
bool is_ipv4(const std::string& s) noexcept {
  in_addr a{};
  return s.find('\0') == std::string::npos && inet_pton(AF_INET, s.c_str(), &a) == 1;
}

bool is_ipv6(const std::string& s) noexcept {
  in6_addr a{};
  return s.find('\0') == std::string::npos && inet_pton(AF_INET6, s.c_str(), &a) == 1;
}

// RFC 1123 host name: dot-separated labels of letters, digits and '-', not starting or ending
// with '-', each 1..63 bytes, 253 bytes in all.
bool is_dns_name(std::string_view s) noexcept {
  if (s.empty() || s.size() > 253) {
    return false;
  }
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = s.find('.', start);
    const std::string_view label =
        s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      if (!is_alpha(c) && !is_digit(c) && c != '-') {
        return false;
      }
    }
    if (dot == std::string_view::npos) {
      return true;
    }
    start = dot + 1;
  }
}

bool is_param_name(std::string_view s) noexcept {
  if (s.empty() || s.size() > 64) {
    return false;
  }
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return is_alpha(c) || is_digit(c) || c == '_'; });
}

// Shared by route templates (`params` true) and fixed paths.
std::optional<std::string> check_path(std::string_view s, bool params) {
  if (s.empty()) {
    return "must not be empty";
  }
  if (s.front() != '/') {
    return "'" + printable(s) + "' must start with '/'";
  }
  std::set<std::string_view> names;
  std::size_t start = 1;
  while (true) {
    const std::size_t slash = s.find('/', start);
    const bool last = slash == std::string_view::npos;
    const std::string_view seg = s.substr(start, last ? std::string_view::npos : slash - start);
    if (seg.empty()) {
      if (!last) {
        return "'" + printable(s) + "' has an empty segment ('//')";
      }
      return std::nullopt;
    }
    if (seg == "." || seg == "..") {
      return "'" + printable(s) + "' has a '" + std::string(seg) + "' segment";
    }
    if (seg.find_first_of("{}") != std::string_view::npos) {
      if (!params) {
        return "'" + printable(s) + "' must not contain '{' or '}'";
      }
      if (seg.size() < 3 || seg.front() != '{' || seg.back() != '}') {
        return "parameter in segment '" + printable(seg) +
               "' must be the whole segment, like {id} or {proxy+}";
      }
      std::string_view name = seg.substr(1, seg.size() - 2);
      const bool greedy = name.back() == '+';
      if (greedy) {
        name.remove_suffix(1);
      }
      if (!is_param_name(name)) {
        return "parameter name '" + printable(name) + "' must match [A-Za-z0-9_]{1,64}";
      }
      if (greedy && !last) {
        return "greedy parameter {" + std::string(name) + "+} must be the last segment";
      }
      if (!names.insert(name).second) {
        return "duplicate parameter '" + std::string(name) + "'";
      }
    } else {
      for (std::size_t i = 0; i < seg.size(); ++i) {
        const char c = seg[i];
        if (c == '%') {
          if (i + 2 >= seg.size() || !is_hex(seg[i + 1]) || !is_hex(seg[i + 2])) {
            return "'" + printable(s) + "' has a '%' that is not followed by two hex digits";
          }
          i += 2;
          continue;
        }
        if (!is_pchar(c)) {
          return "'" + printable(s) + "' has a character not allowed in a URL path: '" +
                 printable(std::string_view(&c, 1)) + "'";
        }
      }
    }
    if (last) {
      return std::nullopt;
    }
    start = slash + 1;
  }
}

}  // namespace

std::optional<std::int64_t> parse_integer(std::string_view s) noexcept {
  bool negative = false;
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  const auto magnitude = parse_digits(s);
  if (!magnitude) {
    return std::nullopt;
  }
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (negative) {
    if (*magnitude > kMax) {
      return std::numeric_limits<std::int64_t>::min();
    }
    return -static_cast<std::int64_t>(*magnitude);
  }
  if (*magnitude > kMax) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return static_cast<std::int64_t>(*magnitude);
}

std::optional<double> parse_decimal(std::string_view s) noexcept {
  bool negative = false;
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  const std::size_t dot = s.find('.');
  const std::string_view whole = s.substr(0, dot);
  const std::string_view fraction =
      dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
  const auto all_digits = [](std::string_view d) {
    return std::all_of(d.begin(), d.end(), is_digit);
  };
  if (whole.size() + fraction.size() == 0 || !all_digits(whole) || !all_digits(fraction)) {
    return std::nullopt;
  }
  double v = 0;
  const auto [end, ec] =
      std::from_chars(s.data(), s.data() + s.size(), v, std::chars_format::fixed);
  if (ec == std::errc::result_out_of_range) {
    // Out of range one way or the other: a non-zero whole part can only overflow.
    const bool big = std::any_of(whole.begin(), whole.end(), [](char c) { return c != '0'; });
    v = big ? std::numeric_limits<double>::infinity() : 0.0;
  } else if (ec != std::errc() || end != s.data() + s.size()) {
    return std::nullopt;  // not expected after the syntax check above
  }
  return negative ? -v : v;
}

std::optional<std::uint64_t> parse_size(std::string_view s) noexcept {
  struct Unit {
    std::string_view suffix;
    std::uint64_t factor;
  };
  constexpr std::array<Unit, 3> kUnits{{
      {"KiB", 1024ULL},
      {"MiB", 1024ULL * 1024},
      {"GiB", 1024ULL * 1024 * 1024},
  }};
  for (const Unit& u : kUnits) {
    if (ends_with(s, u.suffix)) {
      const auto n = parse_digits(s.substr(0, s.size() - u.suffix.size()));
      if (!n) {
        return std::nullopt;
      }
      return saturating_mul(*n, u.factor);
    }
  }
  return parse_digits(s);
}

std::optional<std::chrono::milliseconds> parse_duration(std::string_view s) noexcept {
  struct Unit {
    std::string_view suffix;
    std::uint64_t ms;
  };
  // "ms" before "m" and "s": the longest suffix wins.
  constexpr std::array<Unit, 4> kUnits{{
      {"ms", 1},
      {"s", 1000},
      {"m", 60'000},
      {"h", 3'600'000},
  }};
  for (const Unit& u : kUnits) {
    if (ends_with(s, u.suffix)) {
      const auto n = parse_digits(s.substr(0, s.size() - u.suffix.size()));
      if (!n) {
        return std::nullopt;
      }
      const std::uint64_t ms = std::min<std::uint64_t>(
          saturating_mul(*n, u.ms),
          static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
      return std::chrono::milliseconds(static_cast<std::int64_t>(ms));
    }
  }
  return std::nullopt;
}

std::string format_duration(std::chrono::milliseconds d) {
  const std::int64_t ms = d.count();
  if (ms == 0) {
    return "0s";
  }
  if (ms % 3'600'000 == 0) {
    return std::to_string(ms / 3'600'000) + "h";
  }
  if (ms % 60'000 == 0) {
    return std::to_string(ms / 60'000) + "m";
  }
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + "s";
  }
  return std::to_string(ms) + "ms";
}

tl::expected<Listen, std::string> parse_listen(std::string_view s) {
  const std::string shape =
      "expected \"host:port\" (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"), got '" + printable(s) +
      "'";
  std::string host;
  std::string_view port;
  if (!s.empty() && s.front() == '[') {
    const std::size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return tl::unexpected(shape);
    }
    host = std::string(s.substr(1, close - 1));
    port = s.substr(close + 2);
    if (!is_ipv6(host)) {
      return tl::unexpected("'" + printable(host) + "' is not an IPv6 address");
    }
  } else {
    const std::size_t colon = s.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
      return tl::unexpected(shape);
    }
    if (s.find(':') != colon) {
      return tl::unexpected("IPv6 addresses need brackets, e.g. \"[::1]:8080\"; got '" +
                            printable(s) + "'");
    }
    host = std::string(s.substr(0, colon));
    port = s.substr(colon + 1);
    if (host != "localhost" && !is_ipv4(host)) {
      return tl::unexpected("host '" + printable(host) + "' is not an IP address or \"localhost\"");
    }
  }
  const auto p = parse_port(port, 0);
  if (!p) {
    return tl::unexpected("port '" + printable(port) + "' is not a number in 0..65535");
  }
  return Listen{std::move(host), *p};
}

tl::expected<UpstreamUrl, std::string> parse_upstream_url(std::string_view s) {
  if (starts_with_nocase(s, "https://")) {
    return tl::unexpected(std::string("https upstreams are not supported yet; use http://"));
  }
  if (!starts_with_nocase(s, "http://")) {
    return tl::unexpected("expected http://host[:port][/base], got '" + printable(s) + "'");
  }
  std::string_view rest = s.substr(7);
  if (rest.find_first_of("?#") != std::string_view::npos) {
    return tl::unexpected("'" + printable(s) + "' must not have a query or a fragment");
  }
  const std::size_t slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  const std::string_view path =
      slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) {
    return tl::unexpected("'" + printable(s) + "' must not have user info");
  }
  UpstreamUrl url;
  std::string_view port;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return tl::unexpected("'" + printable(s) + "' has an unclosed '['");
    }
    url.host = std::string(authority.substr(1, close - 1));
    if (!is_ipv6(url.host)) {
      return tl::unexpected("'" + printable(url.host) + "' is not an IPv6 address");
    }
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return tl::unexpected("expected http://host[:port][/base], got '" + printable(s) + "'");
      }
      has_port = true;
      port = after.substr(1);
    }
  } else {
    const std::size_t colon = authority.find(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      has_port = true;
      port = authority.substr(colon + 1);
    }
    if (url.host.empty()) {
      return tl::unexpected("'" + printable(s) + "' has no host");
    }
    if (!is_dns_name(url.host)) {
      return tl::unexpected("host '" + printable(url.host) + "' is not a valid host name");
    }
  }
  if (has_port) {
    const auto p = parse_port(port, 1);
    if (!p) {
      return tl::unexpected("port '" + printable(port) + "' is not a number in 1..65535");
    }
    url.port = *p;
  }
  if (!path.empty()) {
    if (auto err = check_absolute_path(path)) {
      return tl::unexpected("base path " + *err);
    }
    std::string_view base = path;
    while (!base.empty() && base.back() == '/') {
      base.remove_suffix(1);
    }
    url.base_path = std::string(base);
  }
  return url;
}

std::optional<std::string> check_path_template(std::string_view s) { return check_path(s, true); }

std::optional<std::string> check_absolute_path(std::string_view s) { return check_path(s, false); }

bool is_name(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return is_alpha(c) || is_digit(c) || c == '_' || c == '-';
  });
}

bool is_http_token(std::string_view s) noexcept {
  constexpr std::string_view kTchar = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return is_alpha(c) || is_digit(c) || kTchar.find(c) != std::string_view::npos;
  });
}

bool is_sha256_hex(std::string_view s) noexcept {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), is_hex);
}

bool has_control(std::string_view s, bool allow_tab) noexcept {
  return std::any_of(s.begin(), s.end(), [&](char c) {
    const auto u = static_cast<unsigned char>(c);
    return (u < 0x20 && !(allow_tab && c == '\t')) || u == 0x7f;
  });
}

std::string printable(std::string_view s, std::size_t max) {
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  std::size_t shown = 0;
  for (char c : s) {
    if (shown == max) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    }
    ++shown;
  }
  return out;
}

std::string_view closest(std::string_view word, std::span<const std::string_view> candidates) {
  // Keys are short; anything long is not a typo of one, and the quadratic table stays small.
  if (word.empty() || word.size() > 64) {
    return {};
  }
  std::string_view best;
  std::size_t best_distance = 3;
  std::vector<std::size_t> row;
  std::vector<std::size_t> prev;
  for (const std::string_view cand : candidates) {
    // The distance is at least the difference in length, and only 2 or less can win: this skips
    // most candidates of a long list (route names) without the quadratic table.
    if (cand.size() > word.size() + 2 || word.size() > cand.size() + 2) {
      continue;
    }
    // Levenshtein distance, two rows.
    prev.resize(cand.size() + 1);
    row.resize(cand.size() + 1);
    for (std::size_t j = 0; j <= cand.size(); ++j) {
      prev[j] = j;
    }
    for (std::size_t i = 1; i <= word.size(); ++i) {
      row[0] = i;
      for (std::size_t j = 1; j <= cand.size(); ++j) {
        const std::size_t cost = word[i - 1] == cand[j - 1] ? 0 : 1;
        row[j] = std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost});
      }
      std::swap(row, prev);
    }
    const std::size_t d = prev[cand.size()];
    if (d < best_distance && 2 * d < word.size()) {
      best_distance = d;
      best = cand;
    }
  }
  return best;
}

}  // namespace gatehouse::config::detail
