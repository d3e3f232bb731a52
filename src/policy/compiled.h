#pragma once
// Private to src/policy: the compiled form of a policy (built by parse.cc, read by evaluate.cc)
// and the matching primitives both use (match.cc). Everything here is allocation-free unless it
// appends to a caller's string.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/core.h"
#include "policy/policy.h"

namespace gatehouse::policy::detail {

// ---- matching primitives (match.cc) ----------------------------------------------------------

// Glob match of a whole string. In `pattern`, '*' matches any run of characters (including '/'
// and ':', as IAM's Resource and Action wildcards do), '?' exactly one, and '\' makes the next
// character literal. With `fold`, subject characters are ASCII-lowercased before comparing
// (the pattern must already be lowercase). Worst case O(|pattern| * |subject|), no recursion.
[[nodiscard]] bool glob_match(std::string_view pattern, std::string_view subject,
                              bool fold) noexcept;
// Appends policy text as a glob: '*' and '?' stay wildcards, '\' is escaped.
void append_glob_text(std::string& out, std::string_view text);
// Appends text that must match literally ('*', '?' and '\' escaped).
void append_glob_literal(std::string& out, std::string_view text);

// ARN component-wise glob (ArnLike): partition, service, region, account and resource are
// matched separately, so '*' in the region cannot swallow the account. The partitions "aws"
// and "gatehouse" are the same. A pattern that is not ARN-shaped (fewer than six components,
// e.g. "*") is matched as a whole-string glob.
[[nodiscard]] bool arn_match(std::string_view glob_pattern, std::string_view arn) noexcept;
// "arn:aws:..." is read as "arn:gatehouse:...": rewrites the prefix in place.
void normalize_partition(std::string& arn);
// True when `arn` equals `normalized` (an ARN with the gatehouse partition) after normalizing.
[[nodiscard]] bool same_arn(std::string_view normalized, std::string_view arn) noexcept;
// The account component of an ARN ("" if not ARN-shaped).
[[nodiscard]] std::string_view arn_account(std::string_view arn) noexcept;

using core::iequals;  // ASCII case-insensitive (core/core.h)
void lower_ascii(std::string& s) noexcept;

// An IPv4 or IPv6 network (an address is a /32 or /128).
struct Cidr {
  std::array<std::uint8_t, 16> bytes{};
  std::uint8_t family = 0;  // 4 or 6
  std::uint8_t prefix = 0;
};
// "10.0.0.0/8", "2001:db8::/32", "192.0.2.7". An IPv4-mapped IPv6 address is read as IPv4.
[[nodiscard]] std::optional<Cidr> parse_cidr(std::string_view s) noexcept;
[[nodiscard]] bool cidr_contains(const Cidr& net, const Cidr& addr) noexcept;
// A finite decimal number ("10", "-1.5", "1e3").
[[nodiscard]] std::optional<double> parse_number(std::string_view s) noexcept;
// ISO 8601 ("2024-05-01", "2024-05-01T12:00:00Z", "...T12:00:00.250+02:00") or epoch seconds
// ("1714564800"), as epoch milliseconds.
[[nodiscard]] std::optional<std::int64_t> parse_date(std::string_view s) noexcept;
// "true" / "false", any case.
[[nodiscard]] std::optional<bool> parse_bool(std::string_view s) noexcept;

// ---- compiled policy ---------------------------------------------------------------------------

// A piece of a value that may hold policy variables.
struct Segment {
  enum class Kind : std::uint8_t {
    kText,      // policy text ('*' and '?' are wildcards where the value is a glob)
    kLiteral,   // from ${*}, ${?} or ${$}: always literal
    kVariable,  // ${key} or ${key, 'default'}; text is the lowercased key
  };
  Kind kind = Kind::kText;
  std::string text;
  bool has_default = false;
  std::string fallback;
};

// A Resource or Condition value. Without variables it is stored ready to use in `fixed`;
// with variables it is resolved per request from `segments`.
struct Template {
  std::vector<Segment> segments;  // empty when the value has no variables
  std::string fixed;              // glob form (escaped) if `glob`, else the raw value
  bool glob = false;
  [[nodiscard]] bool has_variables() const noexcept { return !segments.empty(); }
};
// Appends a segment's text in the template's form (glob or raw).
void append_segment(std::string& out, const Segment& segment, std::string_view value, bool glob);

enum class OpKind : std::uint8_t {
  kString,
  kStringIgnoreCase,
  kStringLike,
  kNumeric,
  kDate,
  kBool,
  kBinary,
  kIp,
  kArn,
  kNull,
};
enum class Cmp : std::uint8_t { kEq, kLt, kLe, kGt, kGe };
enum class SetPrefix : std::uint8_t { kNone, kForAllValues, kForAnyValue };

struct ConditionValue {
  Template value;
  // The operand pre-parsed at parse time when the value has no variables.
  double number = 0;
  std::int64_t date_ms = 0;
  bool boolean = false;
  Cidr cidr;
};

struct Condition {
  OpKind kind = OpKind::kString;
  Cmp cmp = Cmp::kEq;
  bool negated = false;    // StringNotEquals, NotIpAddress, ArnNotLike, ...
  bool if_exists = false;  // ...IfExists
  SetPrefix set = SetPrefix::kNone;
  std::string key;  // lowercased condition key
  std::vector<ConditionValue> values;
};

// A compiled Principal or NotPrincipal.
struct PrincipalSet {
  bool any = false;                   // "*" or {"AWS": "*"}
  std::vector<std::string> accounts;  // "123456789012" or arn:...:iam::123456789012:root
  std::vector<std::string> arns;      // normalized to the gatehouse partition
  std::vector<std::string> services;
  std::vector<std::string> federated;
};

struct Statement {
  std::string sid;
  bool deny = false;
  bool not_action = false;
  std::vector<std::string> actions;  // lowercased globs
  bool not_resource = false;
  std::vector<Template> resources;  // globs, partition normalized
  bool has_principal = false;
  bool not_principal = false;
  PrincipalSet principals;
  std::vector<Condition> conditions;
};

struct CompiledPolicy {
  std::string id;
  std::string version;
  std::vector<Statement> statements;
};

}  // namespace gatehouse::policy::detail
