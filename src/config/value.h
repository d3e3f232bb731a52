#pragma once
// Private to the config module: parsers and checks for the scalar values of gatehouse.yaml
// (durations, sizes, listen addresses, upstream urls, path templates, names). Pure functions on
// text, no YAML, so the schema walker (schema.cc) and the tests share them. Thread-safe.

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tl/expected.hpp>

#include "config/config.h"

namespace gatehouse::config::detail {

// A decimal integer: optional sign, then 1..n ASCII digits, nothing else ("0x10", "1e3", "1.0"
// and "" are not integers). Values beyond int64 saturate to INT64_MIN / INT64_MAX, so a range
// check still reports the right side.
[[nodiscard]] std::optional<std::int64_t> parse_integer(std::string_view s) noexcept;

// A decimal number: optional sign, digits with an optional fraction ("100", "0.5", ".5", "5.",
// "-1"); no exponent, inf or nan, no spaces. Magnitudes beyond double saturate to +-infinity and
// those too small for it become 0, so a range check still reports the right side.
[[nodiscard]] std::optional<double> parse_decimal(std::string_view s) noexcept;

// A size in bytes: digits with an optional binary suffix KiB, MiB or GiB ("16KiB", "10MiB",
// "1048576"). Saturates at UINT64_MAX. nullopt for anything else (signs, spaces, "KB", "1.5MiB").
[[nodiscard]] std::optional<std::uint64_t> parse_size(std::string_view s) noexcept;

// A duration: digits followed by exactly one unit, ms, s, m or h ("500ms", "10s", "2m", "1h").
// A bare integer has no unit and is rejected (nullopt). Saturates at INT64_MAX milliseconds.
[[nodiscard]] std::optional<std::chrono::milliseconds> parse_duration(std::string_view s) noexcept;

// "600000ms" -> "10m", "1500ms" -> "1500ms": the largest unit that divides `d` exactly.
[[nodiscard]] std::string format_duration(std::chrono::milliseconds d);

// "host:port" for a listening socket. The host is an IPv4 literal, an IPv6 literal in brackets
// ("[::1]:8080", stored without the brackets) or "localhost"; the port is 0..65535. The error
// is a message without the field path.
[[nodiscard]] tl::expected<Listen, std::string> parse_listen(std::string_view s);

// The parts of an upstream url "http://host[:port][/base]".
struct UpstreamUrl {
  std::string host;  // a DNS name, an IPv4 literal or an IPv6 literal (without brackets)
  std::uint16_t port = 80;
  std::string base_path;  // "" or "/v1"; trailing slashes removed
};
// Only http:// is accepted (https:// is recognised and refused as not supported yet). No user
// info, query or fragment; port 1..65535. The error is a message without the field path.
[[nodiscard]] tl::expected<UpstreamUrl, std::string> parse_upstream_url(std::string_view s);

// Checks a route path template: starts with '/'; segments of URL path characters; a segment is
// either literal text or a whole parameter "{name}" (name [A-Za-z0-9_]{1,64}); a greedy
// parameter "{name+}" may only be the last segment; no empty segment ("//") except a trailing
// '/'; no duplicate parameter names. Returns an error message, or nullopt when valid.
[[nodiscard]] std::optional<std::string> check_path_template(std::string_view s);

// Checks a fixed absolute path such as "/healthz": starts with '/', then URL path characters
// only (no '{', '}', '?', '#', spaces or control characters). nullopt when valid.
[[nodiscard]] std::optional<std::string> check_absolute_path(std::string_view s);

// [A-Za-z0-9_-]+ (length is checked by the caller).
[[nodiscard]] bool is_name(std::string_view s) noexcept;
// An RFC 9110 token (the syntax of methods and header names), non-empty.
[[nodiscard]] bool is_http_token(std::string_view s) noexcept;
// Exactly 64 hex digits, either case.
[[nodiscard]] bool is_sha256_hex(std::string_view s) noexcept;
// True if `s` has a byte below 0x20 (other than tab when `allow_tab`) or 0x7f.
[[nodiscard]] bool has_control(std::string_view s, bool allow_tab) noexcept;

// `s` made safe to print in a one-line message: control bytes and non-ASCII bytes as \xNN,
// cut to `max` characters with "..." appended. Input text is attacker-chosen (a config may come
// from a reload API); messages end up in logs and terminals.
[[nodiscard]] std::string printable(std::string_view s, std::size_t max = 64);

// The candidate closest to `word` by edit distance, if close enough to be a likely typo
// (distance <= 2, and less than half of the word); "" otherwise.
[[nodiscard]] std::string_view closest(std::string_view word,
                                       std::span<const std::string_view> candidates);

}  // namespace gatehouse::config::detail
