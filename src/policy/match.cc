// Matching primitives for the policy engine: globs, ARNs, addresses, numbers and dates. No
// regex, no recursion and no allocation: these run per statement on the request path.
#include <arpa/inet.h>

#include <charconv>
#include <cmath>
#include <cstring>

#include "policy/compiled.h"

namespace gatehouse::policy::detail {

namespace {

constexpr std::string_view kAwsPrefix = "arn:aws:";
constexpr std::string_view kGatehousePrefix = "arn:gatehouse:";

// Splits an ARN into its six components (the last one, the resource, may hold more colons).
// False when `arn` has fewer than five colons or does not start with "arn".
bool split_arn(std::string_view arn, std::array<std::string_view, 6>& parts) noexcept {
  std::size_t start = 0;
  for (std::size_t i = 0; i < 5; ++i) {
    const std::size_t colon = arn.find(':', start);
    if (colon == std::string_view::npos) {
      return false;
    }
    parts[i] = arn.substr(start, colon - start);
    start = colon + 1;
  }
  parts[5] = arn.substr(start);
  return true;
}

// A partition as the engine compares it: "aws" is an alias of "gatehouse".
std::string_view canonical_partition(std::string_view p) noexcept {
  return p == "aws" ? std::string_view("gatehouse") : p;
}

bool all_digits(std::string_view s) noexcept {
  if (s.empty()) {
    return false;
  }
  for (char c : s) {
    if (c < '0' || c > '9') {
      return false;
    }
  }
  return true;
}

// Parses exactly `n` digits at s[pos], advancing pos.
bool take_digits(std::string_view s, std::size_t& pos, std::size_t n, int& out) noexcept {
  if (pos + n > s.size()) {
    return false;
  }
  int v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = s[pos + i];
    if (c < '0' || c > '9') {
      return false;
    }
    v = v * 10 + (c - '0');
  }
  pos += n;
  out = v;
  return true;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

bool leap(int y) noexcept { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

std::optional<std::int64_t> parse_iso8601(std::string_view s) noexcept {
  std::size_t pos = 0;
  int year = 0;
  int month = 0;
  int day = 0;
  if (!take_digits(s, pos, 4, year) || pos >= s.size() || s[pos++] != '-' ||
      !take_digits(s, pos, 2, month) || pos >= s.size() || s[pos++] != '-' ||
      !take_digits(s, pos, 2, day)) {
    return std::nullopt;
  }
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12 || day < 1 ||
      day > kDays[month - 1] + (month == 2 && leap(year) ? 1 : 0)) {
    return std::nullopt;
  }
  std::int64_t ms =
      days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day)) * 86'400'000;
  if (pos == s.size()) {
    return ms;
  }
  if (s[pos] != 'T' && s[pos] != 't') {
    return std::nullopt;
  }
  ++pos;
  int hour = 0;
  int minute = 0;
  int second = 0;
  if (!take_digits(s, pos, 2, hour) || pos >= s.size() || s[pos++] != ':' ||
      !take_digits(s, pos, 2, minute)) {
    return std::nullopt;
  }
  if (pos < s.size() && s[pos] == ':') {
    ++pos;
    if (!take_digits(s, pos, 2, second)) {
      return std::nullopt;
    }
  }
  if (hour > 23 || minute > 59 || second > 60) {
    return std::nullopt;
  }
  ms += (hour * 3600 + minute * 60 + second) * std::int64_t{1000};
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    std::int64_t scale = 100;
    const std::size_t first = pos;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      ms += (s[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (pos == first || pos - first > 9) {
      return std::nullopt;
    }
  }
  if (pos == s.size()) {
    return ms;  // no zone: UTC, as IAM reads it
  }
  if ((s[pos] == 'Z' || s[pos] == 'z') && pos + 1 == s.size()) {
    return ms;
  }
  if (s[pos] != '+' && s[pos] != '-') {
    return std::nullopt;
  }
  const int sign = s[pos] == '+' ? 1 : -1;
  ++pos;
  int zh = 0;
  int zm = 0;
  if (!take_digits(s, pos, 2, zh)) {
    return std::nullopt;
  }
  if (pos < s.size() && s[pos] == ':') {
    ++pos;
  }
  if (!take_digits(s, pos, 2, zm) || pos != s.size() || zh > 23 || zm > 59) {
    return std::nullopt;
  }
  return ms - std::int64_t{sign} * (zh * 3600 + zm * 60) * 1000;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view subject, bool fold) noexcept {
  constexpr std::size_t kNone = std::string_view::npos;
  std::size_t p = 0;
  std::size_t s = 0;
  std::size_t star_p = kNone;  // pattern index just after the last '*'
  std::size_t star_s = 0;      // subject index that '*' currently extends to
  while (s < subject.size()) {
    if (p < pattern.size()) {
      char pc = pattern[p];
      if (pc == '*') {
        star_p = ++p;
        star_s = s;
        continue;
      }
      std::size_t width = 1;
      const bool any = pc == '?';
      if (pc == '\\' && p + 1 < pattern.size()) {
        pc = pattern[p + 1];
        width = 2;
      }
      const char sc = fold ? core::ascii_lower(subject[s]) : subject[s];
      if (any || pc == sc) {
        p += width;
        ++s;
        continue;
      }
    }
    if (star_p == kNone) {
      return false;
    }
    // Backtrack: let the last '*' swallow one more character. Earlier stars never need to
    // move, which keeps this linear in practice and O(n*m) at worst.
    p = star_p;
    s = ++star_s;
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

void append_glob_text(std::string& out, std::string_view text) {
  for (char c : text) {
    if (c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
}

void append_glob_literal(std::string& out, std::string_view text) {
  for (char c : text) {
    if (c == '\\' || c == '*' || c == '?') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
}

bool arn_match(std::string_view glob_pattern, std::string_view arn) noexcept {
  std::array<std::string_view, 6> want;
  if (!split_arn(glob_pattern, want)) {
    return glob_match(glob_pattern, arn, false);
  }
  std::array<std::string_view, 6> have;
  if (!split_arn(arn, have)) {
    return false;
  }
  for (std::size_t i = 0; i < want.size(); ++i) {
    const std::string_view w = i == 1 ? canonical_partition(want[i]) : want[i];
    const std::string_view h = i == 1 ? canonical_partition(have[i]) : have[i];
    if (!glob_match(w, h, false)) {
      return false;
    }
  }
  return true;
}

void normalize_partition(std::string& arn) {
  if (arn.starts_with(kAwsPrefix)) {
    arn.replace(0, kAwsPrefix.size(), kGatehousePrefix);
  }
}

bool same_arn(std::string_view normalized, std::string_view arn) noexcept {
  if (arn.starts_with(kAwsPrefix)) {
    return normalized.starts_with(kGatehousePrefix) &&
           normalized.substr(kGatehousePrefix.size()) == arn.substr(kAwsPrefix.size());
  }
  return normalized == arn;
}

std::string_view arn_account(std::string_view arn) noexcept {
  std::array<std::string_view, 6> parts;
  if (!split_arn(arn, parts) || parts[0] != "arn") {
    return {};
  }
  return parts[4];
}

void lower_ascii(std::string& s) noexcept {
  for (char& c : s) {
    c = core::ascii_lower(c);
  }
}

std::optional<Cidr> parse_cidr(std::string_view s) noexcept {
  const std::size_t slash = s.find('/');
  const std::string_view addr = s.substr(0, slash);
  char buf[64];
  if (addr.empty() || addr.size() >= sizeof(buf)) {
    return std::nullopt;
  }
  std::memcpy(buf, addr.data(), addr.size());
  buf[addr.size()] = '\0';
  Cidr out;
  if (inet_pton(AF_INET, buf, out.bytes.data()) == 1) {
    out.family = 4;
    out.prefix = 32;
  } else if (inet_pton(AF_INET6, buf, out.bytes.data()) == 1) {
    out.family = 6;
    out.prefix = 128;
  } else {
    return std::nullopt;
  }
  if (slash != std::string_view::npos) {
    const std::string_view bits = s.substr(slash + 1);
    unsigned prefix = 0;
    if (!all_digits(bits) || bits.size() > 3) {
      return std::nullopt;
    }
    std::from_chars(bits.data(), bits.data() + bits.size(), prefix);
    if (prefix > out.prefix) {
      return std::nullopt;
    }
    out.prefix = static_cast<std::uint8_t>(prefix);
  }
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (out.family == 6 && out.prefix >= 96 && std::memcmp(out.bytes.data(), kMapped, 12) == 0) {
    std::memmove(out.bytes.data(), out.bytes.data() + 12, 4);
    std::memset(out.bytes.data() + 4, 0, 12);
    out.family = 4;
    out.prefix = static_cast<std::uint8_t>(out.prefix - 96);
  }
  return out;
}

bool cidr_contains(const Cidr& net, const Cidr& addr) noexcept {
  if (net.family != addr.family || addr.prefix < net.prefix) {
    return false;
  }
  const std::size_t full = net.prefix / 8;
  if (std::memcmp(net.bytes.data(), addr.bytes.data(), full) != 0) {
    return false;
  }
  const unsigned rest = net.prefix % 8;
  if (rest == 0) {
    return true;
  }
  const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (net.bytes[full] & mask) == (addr.bytes[full] & mask);
}

std::optional<double> parse_number(std::string_view s) noexcept {
  double v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

std::optional<std::int64_t> parse_date(std::string_view s) noexcept {
  if (s.size() <= 12 && all_digits(s)) {  // epoch seconds, up to year ~33658
    std::int64_t seconds = 0;
    std::from_chars(s.data(), s.data() + s.size(), seconds);
    return seconds * 1000;
  }
  return parse_iso8601(s);
}

std::optional<bool> parse_bool(std::string_view s) noexcept {
  if (iequals(s, "true")) {
    return true;
  }
  if (iequals(s, "false")) {
    return false;
  }
  return std::nullopt;
}

void append_segment(std::string& out, const Segment& segment, std::string_view value, bool glob) {
  if (!glob) {
    out.append(value);
  } else if (segment.kind == Segment::Kind::kText) {
    append_glob_text(out, value);
  } else {
    append_glob_literal(out, value);
  }
}

}  // namespace gatehouse::policy::detail
