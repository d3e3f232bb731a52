// The schema of gatehouse.yaml: THE one place that lists every key, its type, its bounds and its
// format. Defaults are the member initialisers in config.h (a value that is absent, or that fails
// its check, keeps the default). To add a key: add the member (with its default and bounds in a
// comment) to config.h, add one row to the section's table below, document it in
// gatehouse.example.yaml, and add a rejection case to tests/unit/config/bad/.
#include "config/schema.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <variant>

#include "config/value.h"
#include "core/core.h"
#include "policy/policy.h"

namespace gatehouse::config::detail {
namespace {

using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr std::int64_t kKiB = 1024;
constexpr std::int64_t kMiB = 1024 * kKiB;
constexpr std::int64_t kGiB = 1024 * kMiB;
constexpr std::int64_t kMilli = 1000;  // kRate bounds are in thousandths of a request per second

// How a key's YAML value is read.
enum class Kind : std::uint8_t {
  kBool,        // true | false
  kInt,         // decimal integer; min..max is the value
  kSize,        // bytes: 1024, 16KiB, 10MiB, 1GiB; min..max in bytes
  kDuration,    // 500ms, 10s, 2m, 1h; min..max in milliseconds
  kString,      // any scalar; min..max is the length in bytes; `format` checks the text
  kStringList,  // a string or a sequence of strings; min..max items; `format` for each
  kListen,      // "host:port"
  kUrl,         // "http://host[:port][/base]"
  kMethods,     // a method or a sequence of methods; min..max items
  kRate,        // a decimal number of requests per second (0.5, 100); min..max in thousandths
  kHeaders,     // mapping of header name to value; at most max entries
  kSection,     // a nested mapping with its own table
  kList,        // a sequence of mappings, each with the table; min..max items
};

// Extra checks on the text of a kString / kStringList value.
enum class Format : std::uint8_t {
  kText,        // anything (response bodies)
  kLine,        // no control characters except tab
  kName,        // [A-Za-z0-9_-]{1,64}
  kRoutePath,   // a route template: /items/{id}, /files/{proxy+}
  kPath,        // a fixed absolute path: /healthz
  kPrefix,      // "" or a fixed absolute path without a trailing '/'
  kSha256,      // "" or 64 hex digits (stored lower-case); never echoed, it may be a pasted token
  kLogLevel,    // trace|debug|info|warn|error|off
  kAccessLog,   // stdout|stderr|off|file path
  kStoreUrl,    // sqlite://PATH or postgres://...; never echoed, it may carry a password
  kRouteName,   // a route name: 1..256 bytes, no control characters except tab
  kHeaderName,  // an HTTP token of at most 256 bytes, not a framing header (stored lower-case)
  kPeriod,      // DAY | WEEK | MONTH
  kFsPath,      // an absolute filesystem path without control characters
  kInvoker,     // route:NAME | trigger:NAME | workflow:NAME | principal:ARN, optional trailing '*'
  kAccountId,   // 12 decimal digits
  kRegion,      // [a-z0-9-]{1,32}
};

// The kinds of invocation source a function's `invokers` may name.
constexpr std::array<std::string_view, 4> kInvokerKinds{
    "route:", "trigger:", "workflow:", "principal:"};

constexpr std::array<std::string_view, 6> kLogLevels{"trace", "debug", "info",
                                                     "warn",  "error", "off"};

// Quota periods, and the largest offset each allows: a weekly period starts on weekday offset
// (0 = Sunday), a monthly one on day offset + 1, and day 28 is the last every month has.
struct PeriodInfo {
  std::string_view name;
  std::uint32_t max_offset;
};
constexpr std::array<PeriodInfo, 3> kPeriods{{{"DAY", 0}, {"WEEK", 6}, {"MONTH", 27}}};

// Request headers that frame or route the request; an API key cannot travel in one of them.
constexpr std::array<std::string_view, 9> kFramingRequestHeaders{
    "host",    "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "expect"};

std::string ascii_lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  });
  return s;
}

// `m` thousandths as a decimal: 1 -> "0.001", 1500 -> "1.5", 1000000000 -> "1000000".
std::string thousandths(std::int64_t m) {
  std::string out = std::to_string(m / kMilli);
  std::int64_t rest = m % kMilli;
  if (rest != 0) {
    std::string digits = std::to_string(rest);
    digits.insert(0, 3 - digits.size(), '0');
    digits.erase(digits.find_last_not_of('0') + 1);
    out += "." + digits;
  }
  return out;
}

// A YAML value and where to report problems with it: the value's own position, or its key's
// when the value is null (yaml-cpp marks an empty value at the start of the next token).
struct Value {
  YAML::Node node;
  Position pos;
};

class Walker;

template <class S>
struct Field;

// Custom decoding for a key whose value does not land in a single member.
template <class S>
using Hook = void (*)(Walker&, const Field<S>&, const Value&, const std::string& path, S&);

// Lists the keys of a nested table, for schema_keys().
using Describe = void (*)(const std::string& prefix, std::vector<KeyInfo>& out);

template <class S>
using Slot =
    std::variant<bool S::*, std::uint16_t S::*, std::uint32_t S::*, std::uint64_t S::*,
                 milliseconds S::*, std::string S::*, std::vector<std::string> S::*, Hook<S>>;

// One key of section S.
template <class S>
struct Field {
  std::string_view key;
  Kind kind = Kind::kString;
  Slot<S> slot;
  std::int64_t min = 0;  // meaning depends on kind (see Kind)
  std::int64_t max = 0;
  Format format = Format::kLine;
  bool required = false;
  Describe describe = nullptr;  // kSection and kList only
};

// ---------------------------------------------------------------------------------------------
// Diagnostics and the generic walker.

std::string join(const std::string& path, std::string_view key) {
  if (path.empty()) {
    return std::string(key);
  }
  std::string out;
  out.reserve(path.size() + 1 + key.size());
  out += path;
  out += '.';
  out += key;
  return out;
}

std::string index_path(const std::string& path, std::size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

// True if scalar `n` may be read as the YAML core type `type` ("int", "bool"): it is plain
// (untagged, unquoted) or explicitly tagged with that type (!!int 5).
bool may_be(const YAML::Node& n, std::string_view type) {
  const std::string& tag = n.Tag();
  constexpr std::string_view kCore = "tag:yaml.org,2002:";
  return tag == "?" ||
         (tag.size() == kCore.size() + type.size() && std::string_view(tag).starts_with(kCore) &&
          std::string_view(tag).ends_with(type));
}

bool is_yaml_bool(std::string_view s) {
  return s == "true" || s == "True" || s == "TRUE" || s == "false" || s == "False" || s == "FALSE";
}

// YAML 1.2 core schema float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?, .inf, .nan.
bool is_yaml_float(std::string_view s) {
  if (s == ".inf" || s == "-.inf" || s == "+.inf" || s == ".nan" || s == ".Inf" || s == ".NaN") {
    return true;
  }
  std::size_t i = 0;
  const auto digits = [&] {
    const std::size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      ++i;
    }
    return i - start;
  };
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) {
    ++i;
  }
  std::size_t mantissa = digits();
  if (i < s.size() && s[i] == '.') {
    ++i;
    mantissa += digits();
  }
  if (mantissa == 0) {
    return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) {
      ++i;
    }
    if (digits() == 0) {
      return false;
    }
  }
  return i == s.size();
}

// What a node is, in the words of an error message: "got a string".
std::string_view describe_node(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar:
      if (n.Tag() == "?") {
        const std::string& s = n.Scalar();
        if (parse_integer(s)) {
          return "an integer";
        }
        if (is_yaml_bool(s)) {
          return "a boolean";
        }
        if (is_yaml_float(s)) {
          return "a floating-point number";
        }
      }
      return "a string";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

class Walker {
 public:
  explicit Walker(Decoded& out) : out_(out) {}

  // False once the walk should stop: too many errors, or the expansion budget is spent.
  [[nodiscard]] bool go() const noexcept { return !stopped_ && !out_.diagnostics.full(); }

  // Charges the expansion budget for visiting a node; false (and one error) once spent.
  bool charge(const Value& v, std::size_t bytes) {
    constexpr std::size_t kNodeCost = 32;
    spent_ += kNodeCost + bytes;
    if (spent_ > kMaxExpandedBytes && !stopped_) {
      stopped_ = true;
      out_.diagnostics.add(v.pos, "",
                           "the document expands to more than 64 MiB (through aliases?); "
                           "stopped checking it");
    }
    return !stopped_;
  }

  void error(Position pos, std::string_view path, std::string_view message) {
    out_.diagnostics.add(pos, path, message);
  }

  void type_error(const Value& v, std::string_view path, std::string_view expected) {
    error(v.pos, path,
          "expected " + std::string(expected) + ", got " + std::string(describe_node(v.node)));
  }

  void remember(Position pos, const std::string& path) { out_.positions.emplace(path, pos); }

  // The name of the file being loaded (relative policy files are read next to it).
  [[nodiscard]] const std::string& source() const noexcept { return out_.config.source; }

  std::optional<bool> boolean(const Value& v, const std::string& path) {
    if (v.node.IsScalar() && may_be(v.node, "bool")) {
      const std::string& s = v.node.Scalar();
      if (is_yaml_bool(s)) {
        return s[0] == 't' || s[0] == 'T';
      }
    }
    type_error(v, path, "a boolean (true or false)");
    return std::nullopt;
  }

  // kInt: a plain decimal scalar within [min, max].
  std::optional<std::uint64_t> integer(const Value& v, const std::string& path, std::int64_t min,
                                       std::int64_t max) {
    const auto n =
        v.node.IsScalar() && may_be(v.node, "int") ? parse_integer(v.node.Scalar()) : std::nullopt;
    if (!n) {
      type_error(v, path, "an integer");
      return std::nullopt;
    }
    if (!in_range(v, path, *n<min, *n> max, std::to_string(min), std::to_string(max))) {
      return std::nullopt;
    }
    return static_cast<std::uint64_t>(*n);
  }

  // kSize: bytes, or a whole number with KiB, MiB or GiB, within [min, max] bytes.
  std::optional<std::uint64_t> size(const Value& v, const std::string& path, std::int64_t min,
                                    std::int64_t max) {
    if (!v.node.IsScalar()) {
      type_error(v, path, "a size");
      return std::nullopt;
    }
    const auto n = parse_size(v.node.Scalar());
    if (!n) {
      error(v.pos, path,
            "expected a size in bytes, or a whole number with KiB, MiB or GiB (e.g. 16KiB), "
            "got '" +
                printable(v.node.Scalar()) + "'");
      return std::nullopt;
    }
    if (!in_range(v, path, *n<static_cast<std::uint64_t>(min), *n> static_cast<std::uint64_t>(max),
                  std::to_string(min), std::to_string(max))) {
      return std::nullopt;
    }
    return *n;
  }

  // kDuration: a whole number with a unit, within [min, max].
  std::optional<milliseconds> duration(const Value& v, const std::string& path, std::int64_t min,
                                       std::int64_t max) {
    if (!v.node.IsScalar()) {
      type_error(v, path, "a duration");
      return std::nullopt;
    }
    const std::string& s = v.node.Scalar();
    const auto d = parse_duration(s);
    if (!d) {
      if (parse_integer(s)) {
        error(v.pos, path,
              "duration " + printable(s) + " needs a unit: ms, s, m or h (e.g. " + printable(s) +
                  "s)");
      } else {
        error(v.pos, path,
              "expected a duration: a whole number with ms, s, m or h (e.g. 10s), got '" +
                  printable(s) + "'");
      }
      return std::nullopt;
    }
    if (!in_range(v, path, d->count() < min, d->count() > max, format_duration(milliseconds(min)),
                  format_duration(milliseconds(max)))) {
      return std::nullopt;
    }
    return *d;
  }

  // kRate: a plain decimal number (fractions allowed, no exponent) within [min, max] thousandths.
  std::optional<double> rate(const Value& v, const std::string& path, std::int64_t min,
                             std::int64_t max) {
    const bool plain = v.node.IsScalar() && (may_be(v.node, "float") || may_be(v.node, "int"));
    const auto n = plain ? parse_decimal(v.node.Scalar()) : std::nullopt;
    if (!n) {
      if (plain && is_yaml_float(v.node.Scalar())) {
        error(v.pos, path,
              "expected a decimal number such as 100 or 0.5 (no exponent, inf or nan), got '" +
                  printable(v.node.Scalar()) + "'");
      } else {
        type_error(v, path, "a number");
      }
      return std::nullopt;
    }
    const double lo = static_cast<double>(min) / static_cast<double>(kMilli);
    const double hi = static_cast<double>(max) / static_cast<double>(kMilli);
    const bool below = *n < lo;
    const bool above = *n > hi;
    if (!in_range(v, path, below, above, thousandths(min), thousandths(max))) {
      return std::nullopt;
    }
    return *n;
  }

  // Where the value at `path` was seen during this walk (see Decoded::positions).
  [[nodiscard]] Position position(std::string_view path) const { return out_.position(path); }

  // kString: any scalar (YAML plain numbers and booleans are taken as their text), length
  // within [min, max] bytes, then `format`.
  std::optional<std::string> string(const Value& v, const std::string& path, std::int64_t min,
                                    std::int64_t max, Format format) {
    if (!v.node.IsScalar()) {
      type_error(v, path, "a string");
      return std::nullopt;
    }
    std::string s = v.node.Scalar();
    if (!charge(v, s.size())) {
      return std::nullopt;
    }
    const auto len = static_cast<std::int64_t>(s.size());
    if (len < min) {
      error(v.pos, path,
            min == 1 ? std::string("must not be empty")
                     : "is " + std::to_string(len) + " bytes long; the minimum is " +
                           std::to_string(min));
      return std::nullopt;
    }
    if (len > max) {
      error(v.pos, path,
            "is " + std::to_string(len) + " bytes long; the maximum is " + std::to_string(max));
      return std::nullopt;
    }
    if (auto err = check_format(format, s)) {
      error(v.pos, path, *err);
      return std::nullopt;
    }
    return s;
  }

 private:
  bool in_range(const Value& v, std::string_view path, bool below, bool above,
                const std::string& min, const std::string& max) {
    if (below) {
      error(v.pos, path, printable(v.node.Scalar()) + " is below the minimum " + min);
      return false;
    }
    if (above) {
      error(v.pos, path, printable(v.node.Scalar()) + " is above the maximum " + max);
      return false;
    }
    return true;
  }

  // An error message, or nullopt; may normalise `s` (kSha256 lower-cases it).
  static std::optional<std::string> check_format(Format format, std::string& s) {
    switch (format) {
      case Format::kText:
        return std::nullopt;
      case Format::kLine:
        if (has_control(s, true)) {
          return "must not contain control characters (such as newlines)";
        }
        return std::nullopt;
      case Format::kName:
        if (s.empty() || s.size() > 64 || !is_name(s)) {
          return "'" + printable(s) +
                 "' is not a valid name: use 1 to 64 letters, digits, '_' or '-'";
        }
        return std::nullopt;
      case Format::kRoutePath:
        return check_path_template(s);
      case Format::kPath:
        return check_absolute_path(s);
      case Format::kPrefix:
        if (s.empty()) {
          return std::nullopt;
        }
        if (auto err = check_absolute_path(s)) {
          return err;
        }
        if (s.back() == '/') {
          return "'" + printable(s) + "' must not end with '/'";
        }
        return std::nullopt;
      case Format::kSha256:
        if (s.empty()) {
          return std::nullopt;
        }
        if (!is_sha256_hex(s)) {
          return "must be \"\" or 64 hex digits (the SHA-256 of the token, "
                 "printf %s TOKEN | sha256sum), got " +
                 std::to_string(s.size()) + " characters";
        }
        std::transform(s.begin(), s.end(), s.begin(), [](char c) {
          return c >= 'A' && c <= 'F' ? static_cast<char>(c - 'A' + 'a') : c;
        });
        return std::nullopt;
      case Format::kLogLevel:
        if (std::find(kLogLevels.begin(), kLogLevels.end(), s) == kLogLevels.end()) {
          return "'" + printable(s) + "' is not one of trace, debug, info, warn, error, off";
        }
        return std::nullopt;
      case Format::kAccessLog:
        if (has_control(s, false)) {
          return "must be stdout, stderr, off or a file path without control characters";
        }
        return std::nullopt;
      case Format::kStoreUrl: {
        constexpr std::string_view kSqlite = "sqlite://";
        constexpr std::string_view kPostgres = "postgres://";
        const std::string_view sv = s;
        if (has_control(s, false)) {
          return "must not contain control characters";
        }
        if (sv.substr(0, kSqlite.size()) == kSqlite) {
          if (sv.size() == kSqlite.size()) {
            return "sqlite:// needs a file path, e.g. sqlite://./data/gatehouse.db";
          }
          return std::nullopt;
        }
        if (sv.substr(0, kPostgres.size()) == kPostgres && sv.size() > kPostgres.size()) {
          return std::nullopt;
        }
        return "must start with sqlite:// or postgres://";
      }
      case Format::kRouteName:
        if (s.empty()) {
          return "must not be empty";
        }
        if (s.size() > 256) {
          return "is " + std::to_string(s.size()) + " bytes long; the maximum is 256";
        }
        if (has_control(s, true)) {
          return "must not contain control characters (such as newlines)";
        }
        return std::nullopt;
      case Format::kHeaderName: {
        if (s.size() > 256 || !is_http_token(s)) {
          return "'" + printable(s) + "' is not a valid header name";
        }
        s = ascii_lower(std::move(s));
        const auto framing =
            std::find(kFramingRequestHeaders.begin(), kFramingRequestHeaders.end(), s);
        if (framing != kFramingRequestHeaders.end()) {
          return "'" + s + "' frames or routes the request and cannot carry an API key";
        }
        return std::nullopt;
      }
      case Format::kPeriod: {
        const auto is = [&](const PeriodInfo& p) { return p.name == s; };
        if (std::find_if(kPeriods.begin(), kPeriods.end(), is) != kPeriods.end()) {
          return std::nullopt;
        }
        std::string upper = s;
        std::transform(upper.begin(), upper.end(), upper.begin(), [](char c) {
          return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
        });
        const auto is_upper = [&](const PeriodInfo& p) { return p.name == upper; };
        if (std::find_if(kPeriods.begin(), kPeriods.end(), is_upper) != kPeriods.end()) {
          return "'" + printable(s) + "' must be upper-case: " + upper;
        }
        return "'" + printable(s) + "' is not one of DAY, WEEK, MONTH";
      }
      case Format::kFsPath:
        if (s.empty() || s[0] != '/') {
          return "'" + printable(s) + "' must be an absolute path";
        }
        if (has_control(s, false)) {
          return "must not contain control characters";
        }
        return std::nullopt;
      case Format::kAccountId:
        if (s.size() != 12 ||
            !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
          return "'" + printable(s) + "' is not an account id: use 12 decimal digits";
        }
        return std::nullopt;
      case Format::kRegion:
        if (s.empty() || s.size() > 32 || !std::all_of(s.begin(), s.end(), [](char c) {
              return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
            })) {
          return "'" + printable(s) + "' is not a region: use 1 to 32 of a-z, 0-9 and '-'";
        }
        return std::nullopt;
      case Format::kInvoker: {
        if (has_control(s, false)) {
          return "must not contain control characters";
        }
        if (std::string_view(s).starts_with("principal:") &&
            !std::string_view(s).substr(10).starts_with("arn:")) {
          return "'" + printable(s) +
                 "' must name the principal's ARN: principal:arn:gatehouse:iam::<account>:"
                 "role/NAME, ...:apikey/ID, ...:admin (docs/policy.md, \"Principals\")";
        }
        for (std::string_view kind : kInvokerKinds) {
          if (std::string_view(s).starts_with(kind) && s.size() > kind.size()) {
            return std::nullopt;
          }
        }
        return "'" + printable(s) +
               "' must be route:NAME, trigger:NAME, workflow:NAME or principal:ARN "
               "(a trailing '*' matches any suffix)";
      }
    }
    return std::nullopt;
  }

  Decoded& out_;
  std::size_t spent_ = 0;
  bool stopped_ = false;
};

// A table as the span walk_map takes (a fixed-extent span would not deduce).
template <class S, std::size_t N>
std::span<const Field<S>> rows(const std::array<Field<S>, N>& table) {
  return table;
}

template <class S>
void decode_field(Walker& w, const Field<S>& f, const Value& v, const std::string& path, S& out);
template <class S>
void decode_string_list(Walker& w, const Field<S>& f, const Value& v, const std::string& path,
                        std::vector<std::string>& out);

// Walks mapping `v` with `table` into `out`; returns the set of table rows seen (bit i = row i).
template <class S>
std::uint64_t walk_map(Walker& w, const Value& v, const std::string& path,
                       std::span<const Field<S>> table, S& out) {
  static_assert(std::is_default_constructible_v<S>);
  std::uint64_t seen = 0;
  if (v.node.IsMap()) {
    for (auto it = v.node.begin(); it != v.node.end() && w.go(); ++it) {
      const YAML::Node key = it->first;
      const Value value{it->second,
                        it->second.IsNull() ? position_of(key) : position_of(it->second)};
      const Position key_pos = position_of(key);
      if (!w.charge(value, 0)) {
        break;
      }
      if (!key.IsScalar()) {
        w.type_error(Value{key, key_pos}, path, "a string as the key");
        continue;
      }
      const std::string& name = key.Scalar();
      const auto row = std::find_if(table.begin(), table.end(),
                                    [&](const Field<S>& f) { return f.key == name; });
      if (row == table.end()) {
        std::array<std::string_view, 64> keys{};
        const std::size_t n = std::min(keys.size(), table.size());
        for (std::size_t i = 0; i < n; ++i) {
          keys[i] = table[i].key;
        }
        std::string message = "unknown key";
        if (name == "<<") {
          message += " (YAML merge keys are not supported)";
        }
        const std::string_view guess = closest(name, std::span(keys.data(), n));
        if (!guess.empty()) {
          message += " (did you mean '" + std::string(guess) + "'?)";
        }
        w.error(key_pos, join(path, printable(name)), message);
        continue;
      }
      const auto index = static_cast<std::size_t>(row - table.begin());
      const std::string child = join(path, row->key);
      if ((seen & (std::uint64_t{1} << index)) != 0) {
        w.error(key_pos, child, "duplicate key");
        continue;
      }
      seen |= std::uint64_t{1} << index;
      w.remember(value.pos, child);
      decode_field(w, *row, value, child, out);
    }
  } else if (!v.node.IsNull()) {
    w.type_error(v, path, "a mapping");
    return 0;
  }
  if (!w.go()) {
    return seen;
  }
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (table[i].required && (seen & (std::uint64_t{1} << i)) == 0) {
      w.error(v.pos, path, "missing required key '" + std::string(table[i].key) + "'");
    }
  }
  return seen;
}

template <class S>
void decode_field(Walker& w, const Field<S>& f, const Value& v, const std::string& path, S& out) {
  std::visit(
      [&](auto slot) {
        using T = decltype(slot);
        if constexpr (std::is_same_v<T, Hook<S>>) {
          slot(w, f, v, path, out);
        } else if constexpr (std::is_same_v<T, bool S::*>) {
          if (auto b = w.boolean(v, path)) {
            out.*slot = *b;
          }
        } else if constexpr (std::is_same_v<T, milliseconds S::*>) {
          if (auto d = w.duration(v, path, f.min, f.max)) {
            out.*slot = *d;
          }
        } else if constexpr (std::is_same_v<T, std::string S::*>) {
          if (auto s = w.string(v, path, f.min, f.max, f.format)) {
            out.*slot = std::move(*s);
          }
        } else if constexpr (std::is_same_v<T, std::vector<std::string> S::*>) {
          decode_string_list(w, f, v, path, out.*slot);
        } else {
          // An unsigned integer member; kInt or kSize. The bounds fit the member (checked by
          // the static_asserts below the tables), so the cast cannot truncate.
          using M = std::remove_reference_t<decltype(out.*slot)>;
          const auto n = f.kind == Kind::kSize ? w.size(v, path, f.min, f.max)
                                               : w.integer(v, path, f.min, f.max);
          if (n) {
            out.*slot = static_cast<M>(*n);
          }
        }
      },
      f.slot);
}

// A string or a sequence of strings, each checked with `f.format`; no duplicates. An item that
// fails is kept as "" (and a duplicate is kept too) so that indices still match the paths in
// messages; the config is discarded anyway once there is an error.
template <class S>
void decode_string_list(Walker& w, const Field<S>& f, const Value& v, const std::string& path,
                        std::vector<std::string>& out) {
  constexpr auto kAnyLength = std::numeric_limits<std::int64_t>::max();
  if (v.node.IsScalar()) {
    auto s = w.string(v, path, 0, kAnyLength, f.format);
    out.push_back(s ? std::move(*s) : std::string());
    return;
  }
  if (!v.node.IsSequence()) {
    w.type_error(v, path, "a string or a sequence of strings");
    return;
  }
  if (static_cast<std::int64_t>(v.node.size()) > f.max) {
    w.error(
        v.pos, path,
        "has " + std::to_string(v.node.size()) + " items; the maximum is " + std::to_string(f.max));
    return;
  }
  // A set, not a scan of `out`: plans[].routes may hold 10000 items.
  std::unordered_set<std::string> seen;
  std::size_t i = 0;
  for (auto it = v.node.begin(); it != v.node.end() && w.go(); ++it, ++i) {
    const Value item{*it, position_of(*it)};
    const std::string item_path = index_path(path, i);
    w.remember(item.pos, item_path);
    auto s = w.string(item, item_path, 0, kAnyLength, f.format);
    if (!s) {
      out.emplace_back();
      continue;
    }
    if (!seen.insert(*s).second) {
      w.error(item.pos, item_path, "duplicate '" + printable(*s) + "'");
    }
    out.push_back(std::move(*s));
  }
}

// ---------------------------------------------------------------------------------------------
// Nested sections and lists.

template <class T>
struct MemberOf;
template <class S, class C>
struct MemberOf<C S::*> {
  using Owner = S;
  using Type = C;
};
template <auto Member>
using OwnerOf = typename MemberOf<decltype(Member)>::Owner;
template <auto Member>
using TypeOf = typename MemberOf<decltype(Member)>::Type;

template <class S>
std::string_view kind_name(const Field<S>& f);
template <class S>
std::string bounds_text(const Field<S>& f);
template <class S>
std::string default_text(const Field<S>& f);

template <const auto& Table>
void describe_table(const std::string& prefix, std::vector<KeyInfo>& out) {
  for (const auto& f : Table) {
    const std::string path = join(prefix, f.key);
    out.push_back(KeyInfo{path, kind_name(f), bounds_text(f), default_text(f), f.required});
    if (f.describe != nullptr) {
      f.describe(f.kind == Kind::kList ? path + "[]" : path, out);
    }
  }
}

template <auto Member, const auto& Table>
void section_hook(Walker& w, const Field<OwnerOf<Member>>& /*f*/, const Value& v,
                  const std::string& path, OwnerOf<Member>& out) {
  walk_map(w, v, path, rows(Table), out.*Member);
}

template <auto Member, const auto& Table>
void list_hook(Walker& w, const Field<OwnerOf<Member>>& f, const Value& v, const std::string& path,
               OwnerOf<Member>& out) {
  using C = typename TypeOf<Member>::value_type;
  if (v.node.IsNull()) {
    return;
  }
  if (!v.node.IsSequence()) {
    w.type_error(v, path, "a sequence");
    return;
  }
  if (static_cast<std::int64_t>(v.node.size()) > f.max) {
    w.error(
        v.pos, path,
        "has " + std::to_string(v.node.size()) + " items; the maximum is " + std::to_string(f.max));
    return;
  }
  auto& list = out.*Member;
  std::size_t i = 0;
  for (auto it = v.node.begin(); it != v.node.end() && w.go(); ++it, ++i) {
    const Value item{*it, position_of(*it)};
    const std::string item_path = index_path(path, i);
    w.remember(item.pos, item_path);
    // Every item is kept, valid or not, so list indices match the paths in messages.
    C c{};
    if constexpr (requires { c.line; }) {
      c.line = item.pos.line;
    }
    if (!item.node.IsMap()) {
      w.type_error(item, item_path, "a mapping");
    } else {
      walk_map(w, item, item_path, rows(Table), c);
    }
    list.push_back(std::move(c));
  }
}

template <auto Member, const auto& Table>
constexpr Field<OwnerOf<Member>> section(std::string_view key, bool required = false) {
  return {.key = key,
          .kind = Kind::kSection,
          .slot = Hook<OwnerOf<Member>>{&section_hook<Member, Table>},
          .required = required,
          .describe = &describe_table<Table>};
}

template <auto Member, const auto& Table>
constexpr Field<OwnerOf<Member>> list(std::string_view key, std::int64_t max_items) {
  return {.key = key,
          .kind = Kind::kList,
          .slot = Hook<OwnerOf<Member>>{&list_hook<Member, Table>},
          .min = 0,
          .max = max_items,
          .describe = &describe_table<Table>};
}

// ---------------------------------------------------------------------------------------------
// Row builders, so the tables read as declarations.

template <class S, class T>
constexpr Field<S> integer(std::string_view key, T S::*member, std::int64_t min, std::int64_t max) {
  return {.key = key, .kind = Kind::kInt, .slot = member, .min = min, .max = max};
}

template <class S, class T>
constexpr Field<S> size(std::string_view key, T S::*member, std::int64_t min, std::int64_t max) {
  return {.key = key, .kind = Kind::kSize, .slot = member, .min = min, .max = max};
}

template <class S>
constexpr Field<S> duration(std::string_view key, milliseconds S::*member, milliseconds min,
                            milliseconds max) {
  return {
      .key = key, .kind = Kind::kDuration, .slot = member, .min = min.count(), .max = max.count()};
}

template <class S>
constexpr Field<S> boolean(std::string_view key, bool S::*member) {
  return {.key = key, .kind = Kind::kBool, .slot = member};
}

// A list of policies[] names (checked once the whole file is read): identity policies.
template <class S>
constexpr Field<S> policy_names(std::vector<std::string> S::*member) {
  return {.key = "policies",
          .kind = Kind::kStringList,
          .slot = member,
          .min = 0,
          .max = 10,
          .format = Format::kName};
}

template <class S>
constexpr Field<S> string(std::string_view key, std::string S::*member, std::int64_t min,
                          std::int64_t max, Format format, bool required = false) {
  return {.key = key,
          .kind = Kind::kString,
          .slot = member,
          .min = min,
          .max = max,
          .format = format,
          .required = required};
}

template <class S>
constexpr Field<S> custom(std::string_view key, Kind kind, Hook<S> hook, std::int64_t min,
                          std::int64_t max, Format format, bool required = false) {
  return {.key = key,
          .kind = kind,
          .slot = hook,
          .min = min,
          .max = max,
          .format = format,
          .required = required};
}

// ---------------------------------------------------------------------------------------------
// Hooks for values that are not a single member.

void decode_listen(Walker& w, const Field<ServerConfig>& f, const Value& v, const std::string& path,
                   ServerConfig& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  auto listen = parse_listen(*s);
  if (!listen) {
    w.error(v.pos, path, listen.error());
    return;
  }
  out.listen = std::move(*listen);
}

void decode_url(Walker& w, const Field<Upstream>& f, const Value& v, const std::string& path,
                Upstream& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  auto url = parse_upstream_url(*s);
  if (!url) {
    w.error(v.pos, path, url.error());
    return;
  }
  out.host = std::move(url->host);
  out.port = url->port;
  out.base_path = std::move(url->base_path);
}

// A method or a list of methods, upper-cased; "ANY" only alone.
void decode_methods(Walker& w, const Field<Route>& f, const Value& v, const std::string& path,
                    Route& out) {
  std::vector<std::pair<Value, std::string>> items;  // value, its path
  if (v.node.IsScalar()) {
    items.emplace_back(v, path);
  } else if (v.node.IsSequence()) {
    if (static_cast<std::int64_t>(v.node.size()) > f.max) {
      w.error(v.pos, path,
              "has " + std::to_string(v.node.size()) + " items; the maximum is " +
                  std::to_string(f.max));
      return;
    }
    std::size_t i = 0;
    for (auto it = v.node.begin(); it != v.node.end(); ++it, ++i) {
      items.emplace_back(Value{*it, position_of(*it)}, index_path(path, i));
    }
  } else {
    w.type_error(v, path, "a method or a sequence of methods");
    return;
  }
  if (items.empty()) {
    w.error(v.pos, path, "must list at least one method");
    return;
  }
  bool any = false;
  for (const auto& [item, item_path] : items) {
    auto m = w.string(item, item_path, 1, 32, Format::kLine);
    if (!m) {
      continue;
    }
    std::transform(m->begin(), m->end(), m->begin(), [](char c) {
      return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
    });
    if (!is_http_token(*m)) {
      w.error(item.pos, item_path, "'" + printable(*m) + "' is not a valid HTTP method");
      continue;
    }
    if (std::find(out.methods.begin(), out.methods.end(), *m) != out.methods.end()) {
      w.error(item.pos, item_path, "duplicate method '" + *m + "'");
      continue;
    }
    any = any || *m == "ANY";
    out.methods.push_back(std::move(*m));
  }
  if (any && out.methods.size() > 1) {
    w.error(v.pos, path, "ANY cannot be combined with other methods");
  }
}

void set_route_function(Walker& w, const Value& v, const std::string& path, std::string name,
                        Target& out);

void decode_function(Walker& w, const Field<Route>& f, const Value& v, const std::string& path,
                     Route& out) {
  if (auto s = w.string(v, path, f.min, f.max, f.format)) {
    set_route_function(w, v, path, std::move(*s), out.target);
  }
}

void decode_api_key(Walker& w, const Field<Route>& f, const Value& v, const std::string& path,
                    Route& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  if (*s == "none") {
    out.api_key = ApiKeyMode::kNone;
  } else if (*s == "optional") {
    out.api_key = ApiKeyMode::kOptional;
  } else if (*s == "required") {
    out.api_key = ApiKeyMode::kRequired;
  } else {
    w.error(v.pos, path, "'" + printable(*s) + "' is not one of none, optional, required");
  }
}

// A string that must be one of `allowed`; nullopt (and one error listing them) otherwise.
template <class S>
std::optional<std::string> one_of(Walker& w, const Field<S>& f, const Value& v,
                                  const std::string& path,
                                  std::initializer_list<std::string_view> allowed) {
  auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return std::nullopt;
  }
  if (std::find(allowed.begin(), allowed.end(), *s) != allowed.end()) {
    return s;
  }
  std::string list;
  for (std::string_view a : allowed) {
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  w.error(v.pos, path, "'" + printable(*s) + "' is not one of " + list);
  return std::nullopt;
}

void decode_route_auth(Walker& w, const Field<Route>& f, const Value& v, const std::string& path,
                       Route& out) {
  if (const auto s = one_of(w, f, v, path, {"api_key", "jwt", "sigv4"})) {
    out.auth = *s == "jwt"     ? RouteAuth::kJwt
               : *s == "sigv4" ? RouteAuth::kSigV4
                               : RouteAuth::kApiKey;
  }
}

// A JWKS URL must stay on this machine: the gateway fetches it, and a configurable fetch of any
// host would be a server-side request forgery waiting for a config mistake.
bool is_loopback_host(std::string_view host) {
  if (host == "localhost" || host == "::1") {
    return true;
  }
  if (!host.starts_with("127.")) {
    return false;
  }
  int dots = 0;
  for (char c : host) {
    if (c == '.') {
      ++dots;
    } else if (c < '0' || c > '9') {
      return false;
    }
  }
  return dots == 3;
}

// jwt.jwks: "pool NAME", "file PATH" or "url http://127.0.0.1:PORT/PATH".
void decode_jwks(Walker& w, const Field<JwtAuthorizerConfig>& f, const Value& v,
                 const std::string& path, JwtAuthorizerConfig& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  const std::string_view text = *s;
  const std::size_t space = text.find(' ');
  const std::string_view kind = text.substr(0, space);
  std::string_view rest = space == std::string_view::npos ? std::string_view() : text.substr(space);
  while (!rest.empty() && rest.front() == ' ') {
    rest.remove_prefix(1);
  }
  constexpr std::string_view kShape =
      "expected 'pool NAME', 'file PATH' or 'url http://127.0.0.1:PORT/PATH'";
  if (rest.empty() || (kind != "pool" && kind != "file" && kind != "url")) {
    w.error(v.pos, path, std::string(kShape) + ", got '" + printable(text) + "'");
    return;
  }
  if (kind == "pool") {
    if (rest.size() > 64 || !is_name(rest)) {
      w.error(v.pos, path, "'" + printable(rest) + "' is not a valid user pool name");
      return;
    }
    out.source = JwksSource::kPool;
  } else if (kind == "file") {
    out.source = JwksSource::kFile;
  } else {
    auto url = parse_upstream_url(rest);
    if (!url) {
      w.error(v.pos, path, url.error());
      return;
    }
    if (!is_loopback_host(url->host)) {
      w.error(v.pos, path,
              "JWKS URLs must be on loopback (127.0.0.0/8, ::1 or localhost), got host '" +
                  printable(url->host) + "'");
      return;
    }
    out.source = JwksSource::kUrl;
    out.url_host = url->host;
    out.url_port = url->port;
    out.url_path = url->base_path.empty() ? "/" : url->base_path;
  }
  out.jwks = std::string(kind) + " " + std::string(rest);
  out.location = std::string(rest);
}

void decode_token_use(Walker& w, const Field<JwtAuthorizerConfig>& f, const Value& v,
                      const std::string& path, JwtAuthorizerConfig& out) {
  if (auto s = one_of(w, f, v, path, {"access", "id", "any"})) {
    out.token_use = std::move(*s);
  }
}

// The algorithms a JWT authorizer accepts: EdDSA and RS256 only, with a reason for the others.
void decode_algorithms(Walker& w, const Field<JwtAuthorizerConfig>& f, const Value& v,
                       const std::string& path, JwtAuthorizerConfig& out) {
  std::vector<std::string> algs;
  decode_string_list(w, f, v, path, algs);
  for (std::size_t i = 0; i < algs.size(); ++i) {
    const std::string& a = algs[i];
    const std::string item = v.node.IsSequence() ? index_path(path, i) : path;
    const Position pos = v.node.IsSequence() ? w.position(item) : v.pos;
    if (a == "EdDSA" || a == "RS256") {
      out.algorithms.push_back(a);
    } else if (a.empty()) {
      continue;  // already reported
    } else if (a == "none" || a == "None" || a == "NONE") {
      w.error(pos, item, "'none' is never accepted: a token must be signed");
    } else if (a.size() >= 2 && (a[0] == 'H' || a[0] == 'h') && (a[1] == 'S' || a[1] == 's')) {
      w.error(pos, item,
              "'" + printable(a) +
                  "' is refused: an HMAC algorithm would let anyone holding the public key sign "
                  "tokens; use EdDSA or RS256");
    } else {
      w.error(pos, item, "'" + printable(a) + "' is not one of EdDSA, RS256");
    }
  }
}

void decode_signing_alg(Walker& w, const Field<UserPool>& f, const Value& v,
                        const std::string& path, UserPool& out) {
  if (auto s = one_of(w, f, v, path, {"EdDSA", "RS256"})) {
    out.signing_alg = std::move(*s);
  }
}

void decode_confirmation(Walker& w, const Field<UserPool>& f, const Value& v,
                         const std::string& path, UserPool& out) {
  if (auto s = one_of(w, f, v, path, {"auto", "admin"})) {
    out.confirmation = std::move(*s);
  }
}

void decode_rate(Walker& w, const Field<RateConfig>& f, const Value& v, const std::string& path,
                 RateConfig& out) {
  if (const auto rate = w.rate(v, path, f.min, f.max)) {
    out.rate = *rate;
    out.set = true;
  }
}

// A hook rather than a plain row so that schema_keys() shows no default: it is derived from rate.
void decode_burst(Walker& w, const Field<RateConfig>& f, const Value& v, const std::string& path,
                  RateConfig& out) {
  if (const auto n = w.integer(v, path, f.min, f.max)) {
    out.burst = static_cast<std::uint32_t>(*n);  // f.max fits (static_assert by the table)
  }
}

// Response headers the gateway computes itself; configuring them would let a route corrupt
// the framing of its own responses. Returns why `name` is refused, or nullopt.
std::optional<std::string_view> reserved_header(std::string_view name) {
  constexpr std::array<std::string_view, 7> kFraming{
      "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
      "trailer"};
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  });
  if (lower == "content-type") {
    return "set content_type instead";
  }
  if (std::find(kFraming.begin(), kFraming.end(), lower) != kFraming.end()) {
    return "is set by the gateway and cannot be configured";
  }
  return std::nullopt;
}

void decode_headers(Walker& w, const Field<StaticTarget>& f, const Value& v,
                    const std::string& path, StaticTarget& out) {
  if (v.node.IsNull()) {
    return;
  }
  if (!v.node.IsMap()) {
    w.type_error(v, path, "a mapping of header names to values");
    return;
  }
  if (static_cast<std::int64_t>(v.node.size()) > f.max) {
    w.error(v.pos, path,
            "has " + std::to_string(v.node.size()) + " headers; the maximum is " +
                std::to_string(f.max));
    return;
  }
  for (auto it = v.node.begin(); it != v.node.end() && w.go(); ++it) {
    const Value key{it->first, position_of(it->first)};
    const Value value{it->second, it->second.IsNull() ? key.pos : position_of(it->second)};
    if (!key.node.IsScalar()) {
      w.type_error(key, path, "a header name");
      continue;
    }
    const std::string& name = key.node.Scalar();
    const std::string header_path = join(path, printable(name));
    if (name.size() > 256 || !is_http_token(name)) {
      w.error(key.pos, header_path, "'" + printable(name) + "' is not a valid header name");
      continue;
    }
    if (const auto reason = reserved_header(name)) {
      w.error(key.pos, header_path, *reason);
      continue;
    }
    const bool duplicate = std::any_of(out.headers.begin(), out.headers.end(),
                                       [&](const auto& h) { return h.first == name; });
    if (duplicate) {
      w.error(key.pos, header_path, "duplicate key");
      continue;
    }
    auto text = w.string(value, header_path, 0, 8 * kKiB, Format::kLine);
    if (text) {
      out.headers.emplace_back(name, std::move(*text));
    }
  }
}

// target.function: the function a route invokes. routes[].function (the limits layer) may name
// it too, in either order; the two must agree.
void set_route_function(Walker& w, const Value& v, const std::string& path, std::string name,
                        Target& out) {
  if (!out.function.empty() && out.function != name) {
    w.error(v.pos, path,
            "'" + printable(name) + "' differs from the route's function '" +
                printable(out.function) + "'; a function target is limited as that function");
    return;
  }
  out.function = std::move(name);
}

void decode_target_function(Walker& w, const Field<Target>& f, const Value& v,
                            const std::string& path, Target& out) {
  if (auto s = w.string(v, path, f.min, f.max, f.format)) {
    out.kind = Target::Kind::kFunction;
    set_route_function(w, v, path, std::move(*s), out);
  }
}

void decode_payload_format(Walker& w, const Field<Target>& f, const Value& v,
                           const std::string& path, Target& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  if (*s == "2.0") {
    out.payload_format = PayloadFormat::kV2;
  } else if (*s == "1.0") {
    out.payload_format = PayloadFormat::kV1;
  } else {
    w.error(v.pos, path, "'" + printable(*s) + "' is not one of \"2.0\", \"1.0\"");
  }
}

void decode_runtime(Walker& w, const Field<FunctionConfig>& f, const Value& v,
                    const std::string& path, FunctionConfig& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  if (*s == "lambda") {
    out.runtime = FunctionRuntime::kLambda;
  } else if (*s == "exec") {
    out.runtime = FunctionRuntime::kExec;
  } else {
    w.error(v.pos, path, "'" + printable(*s) + "' is not one of lambda, exec");
  }
}

// An argv: a sequence of strings, duplicates allowed (unlike the name lists).
void decode_command(Walker& w, const Field<FunctionConfig>& f, const Value& v,
                    const std::string& path, FunctionConfig& out) {
  if (!v.node.IsSequence()) {
    w.type_error(v, path, "a sequence of strings (the argv)");
    return;
  }
  const auto n = static_cast<std::int64_t>(v.node.size());
  if (n < f.min || n > f.max) {
    w.error(v.pos, path,
            "has " + std::to_string(n) + " items; it needs " + std::to_string(f.min) + " to " +
                std::to_string(f.max));
    return;
  }
  std::size_t i = 0;
  for (auto it = v.node.begin(); it != v.node.end() && w.go(); ++it, ++i) {
    const Value item{*it, position_of(*it)};
    auto s = w.string(item, index_path(path, i), i == 0 ? 1 : 0, 4096, Format::kLine);
    out.command.push_back(s ? std::move(*s) : std::string());
  }
}

bool is_env_name(std::string_view s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

void decode_env(Walker& w, const Field<FunctionConfig>& f, const Value& v, const std::string& path,
                FunctionConfig& out) {
  if (v.node.IsNull()) {
    return;
  }
  if (!v.node.IsMap()) {
    w.type_error(v, path, "a mapping of variable names to values");
    return;
  }
  if (static_cast<std::int64_t>(v.node.size()) > f.max) {
    w.error(v.pos, path,
            "has " + std::to_string(v.node.size()) + " variables; the maximum is " +
                std::to_string(f.max));
    return;
  }
  for (auto it = v.node.begin(); it != v.node.end() && w.go(); ++it) {
    const Value key{it->first, position_of(it->first)};
    const Value value{it->second, it->second.IsNull() ? key.pos : position_of(it->second)};
    if (!key.node.IsScalar()) {
      w.type_error(key, path, "a variable name");
      continue;
    }
    const std::string& name = key.node.Scalar();
    const std::string var_path = join(path, printable(name));
    if (name.size() > 256 || !is_env_name(name)) {
      w.error(key.pos, var_path,
              "'" + printable(name) + "' is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)");
      continue;
    }
    // The runtime sets these itself; a function must not be able to point its own runtime
    // client elsewhere or lie about its name, limits, role or caller (GATEHOUSE_PRINCIPAL,
    // GATEHOUSE_SOURCE, ... of exec functions).
    if (std::string_view(name).starts_with("AWS_LAMBDA_") ||
        std::string_view(name).starts_with("GATEHOUSE_") || name == "_HANDLER" ||
        name == "LAMBDA_TASK_ROOT" || name == "LAMBDA_RUNTIME_DIR") {
      w.error(key.pos, var_path, "is set by the runtime and cannot be configured");
      continue;
    }
    const bool duplicate =
        std::any_of(out.env.begin(), out.env.end(), [&](const auto& e) { return e.first == name; });
    if (duplicate) {
      w.error(key.pos, var_path, "duplicate key");
      continue;
    }
    auto text = w.string(value, var_path, 0, 32 * kKiB, Format::kLine);
    if (text) {
      out.env.emplace_back(name, std::move(*text));
    }
  }
}

void decode_invokers(Walker& w, const Field<FunctionConfig>& f, const Value& v,
                     const std::string& path, FunctionConfig& out) {
  out.invokers_set = true;
  decode_string_list(w, f, v, path, out.invokers);
}

// ---------------------------------------------------------------------------------------------
// Policy documents (docs/policy.md, "Wiring"): an inline YAML/JSON mapping is converted to JSON
// text and validated with src/policy here, where the YAML positions are known, so a policy's
// error ("Statement[1].Effect: ...") is reported at the line of the offending element.

// Where each element of a converted document sits, by its policy JSON path ("Statement[1].Effect").
using JsonPositions = std::vector<std::pair<std::string, Position>>;

// Appends `n` as JSON to `out`. Every scalar becomes a JSON string: the policy language accepts
// strings wherever it accepts numbers and booleans, and YAML's guesses (is `2012-10-17` a date?)
// must not change a document. Keys are kept in order, repeats included (the policy parser
// refuses them with their path).
bool yaml_to_json(Walker& w, const Value& v, const std::string& path, std::string& out,
                  JsonPositions& where) {
  if (!w.charge(v, v.node.IsScalar() ? v.node.Scalar().size() : 0)) {
    return false;
  }
  where.emplace_back(path, v.pos);
  switch (v.node.Type()) {
    case YAML::NodeType::Scalar:
      out += '"';
      core::json_escape(out, v.node.Scalar());
      out += '"';
      return true;
    case YAML::NodeType::Sequence: {
      out += '[';
      std::size_t i = 0;
      for (auto it = v.node.begin(); it != v.node.end(); ++it, ++i) {
        out += i == 0 ? "" : ",";
        if (!yaml_to_json(w, Value{*it, position_of(*it)}, index_path(path, i), out, where)) {
          return false;
        }
      }
      out += ']';
      return true;
    }
    case YAML::NodeType::Map: {
      out += '{';
      bool first = true;
      for (auto it = v.node.begin(); it != v.node.end(); ++it) {
        if (!it->first.IsScalar()) {
          w.type_error(Value{it->first, position_of(it->first)}, path, "a string as the key");
          return false;
        }
        out += first ? "\"" : ",\"";
        first = false;
        core::json_escape(out, it->first.Scalar());
        out += "\":";
        const Value item{it->second,
                         it->second.IsNull() ? position_of(it->first) : position_of(it->second)};
        if (!yaml_to_json(w, item, join(path, it->first.Scalar()), out, where)) {
          return false;
        }
      }
      out += '}';
      return true;
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  out += "null";
  return true;
}

// The position of the element a policy error message names ("Statement[1].Effect: ..."): the
// longest recorded path that the message's path starts with; `fallback` when none.
Position policy_error_position(std::string_view message, const JsonPositions& where,
                               Position fallback) {
  std::string_view path = message.substr(0, message.find(": "));
  while (!path.empty()) {
    for (const auto& [p, pos] : where) {
      if (p == path) {
        return pos;
      }
    }
    const std::size_t cut = path.find_last_of(".[");
    path = path.substr(0, cut == std::string_view::npos ? 0 : cut);
  }
  return fallback;
}

// Reads a policy file named in the config, relative to the config file's directory.
std::optional<std::string> read_policy_file(const std::string& config_source,
                                            const std::string& name, std::string& error) {
  std::string path = name;
  if (!name.empty() && name[0] != '/') {
    const std::size_t slash = config_source.rfind('/');
    if (slash != std::string::npos) {
      path = config_source.substr(0, slash + 1) + name;
    }
  }
  // Non-blocking, and regular files only: a FIFO or a device must not hang the load.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    // The name as written: a relative one is read next to the config file.
    error = "cannot read the policy file '" + printable(name) +
            "': " + (fd < 0 ? std::strerror(errno) : "not a regular file");
    if (fd >= 0) {
      ::close(fd);
    }
    return std::nullopt;
  }
  if (static_cast<std::uint64_t>(st.st_size) > policy::kMaxPolicyBytes) {
    ::close(fd);
    error = "the policy file '" + printable(name) + "' is " + std::to_string(st.st_size) +
            " bytes; the limit is " + std::to_string(policy::kMaxPolicyBytes);
    return std::nullopt;
  }
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n <= 0) {
      break;
    }
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  text.resize(got);
  return text;
}

// A policy document value: a mapping (converted) or, when `file_allowed`, a string naming a
// JSON file. Validates it as `kind`; on success returns the JSON text.
std::optional<std::string> decode_document(Walker& w, const Value& v, const std::string& path,
                                           policy::PolicyKind kind, bool file_allowed) {
  std::string json;
  JsonPositions where;
  if (v.node.IsMap()) {
    if (!yaml_to_json(w, v, "", json, where)) {
      return std::nullopt;
    }
  } else if (file_allowed && v.node.IsScalar()) {
    auto name = w.string(v, path, 1, 4096, Format::kLine);
    if (!name) {
      return std::nullopt;
    }
    std::string error;
    auto text = read_policy_file(w.source(), *name, error);
    if (!text) {
      w.error(v.pos, path, error);
      return std::nullopt;
    }
    json = std::move(*text);
  } else {
    w.type_error(v, path,
                 file_allowed ? "a policy document (a mapping) or a file path"
                              : "a policy name or a policy document (a mapping)");
    return std::nullopt;
  }
  auto parsed = policy::parse_policy(json, "config", kind);
  if (!parsed) {
    const std::string& m = parsed.error().message;
    w.error(policy_error_position(m, where, v.pos), path, v.node.IsMap() ? m : "in the file: " + m);
    return std::nullopt;
  }
  return json;
}

void decode_named_document(Walker& w, const Field<NamedPolicy>& /*f*/, const Value& v,
                           const std::string& path, NamedPolicy& out) {
  if (auto json = decode_document(w, v, path, policy::PolicyKind::kAny, /*file_allowed=*/true)) {
    out.json = std::move(*json);
  }
}

// routes[].policy and functions[].policy: a policies[] name, or an inline resource policy.
template <class S>
void decode_policy_ref(Walker& w, const Field<S>& f, const Value& v, const std::string& path,
                       S& out) {
  if (v.node.IsScalar()) {
    if (auto name = w.string(v, path, f.min, f.max, Format::kName)) {
      out.policy.name = std::move(*name);
    }
    return;
  }
  if (auto json = decode_document(w, v, path, policy::PolicyKind::kResource, false)) {
    out.policy.json = std::move(*json);
  }
}

void decode_authorization_default(Walker& w, const Field<AuthorizationConfig>& f, const Value& v,
                                  const std::string& path, AuthorizationConfig& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  if (*s == "allow" || *s == "deny") {
    out.default_deny = *s == "deny";
  } else {
    w.error(v.pos, path, "'" + printable(*s) + "' is not one of allow, deny");
  }
}

void decode_network(Walker& w, const Field<SandboxConfig>& f, const Value& v,
                    const std::string& path, SandboxConfig& out) {
  const auto s = w.string(v, path, f.min, f.max, f.format);
  if (!s) {
    return;
  }
  if (*s == "none") {
    out.network = NetworkMode::kNone;
  } else if (*s == "loopback") {
    out.network = NetworkMode::kLoopback;
  } else if (*s == "host") {
    out.network = NetworkMode::kHost;
  } else {
    w.error(v.pos, path, "'" + printable(*s) + "' is not one of none, loopback, host");
  }
}

// ---------------------------------------------------------------------------------------------
// The tables. Leaves first: a section's table must be declared before the table that nests it.

constexpr std::array kServerFields{
    custom<ServerConfig>("listen", Kind::kListen, &decode_listen, 1, 256, Format::kLine),
    integer("threads", &ServerConfig::threads, 0, 256),
    duration("shutdown_grace", &ServerConfig::shutdown_grace, 0ms, 10min),
};

constexpr std::array kLimitsFields{
    size("max_header_bytes", &WireLimits::max_header_bytes, 1 * kKiB, 1 * kMiB),
    size("max_body_bytes", &WireLimits::max_body_bytes, 0, 4 * kGiB),
    duration("header_timeout", &WireLimits::header_timeout, 100ms, 10min),
    duration("body_timeout", &WireLimits::body_timeout, 100ms, 1h),
    size("min_body_rate", &WireLimits::min_body_rate, 0, 1 * kGiB),
    duration("body_grace", &WireLimits::body_grace, 0ms, 10min),
    duration("idle_timeout", &WireLimits::idle_timeout, 100ms, 1h),
    integer("max_connections", &WireLimits::max_connections, 1, 1'000'000),
    integer("max_connections_per_ip", &WireLimits::max_connections_per_ip, 1, 1'000'000),
    integer("max_pipelined", &WireLimits::max_pipelined, 1, 1024),
    integer("max_requests_per_connection", &WireLimits::max_requests_per_connection, 0,
            std::numeric_limits<std::uint32_t>::max()),
};

constexpr std::array kAdminFields{
    string("token_sha256", &AdminConfig::token_sha256, 0, 64, Format::kSha256),
    string("health_path", &AdminConfig::health_path, 1, 1024, Format::kPath),
    string("metrics_path", &AdminConfig::metrics_path, 1, 1024, Format::kPath),
    string("admin_prefix", &AdminConfig::admin_prefix, 1, 1024, Format::kPrefix),
    boolean("metrics_public", &AdminConfig::metrics_public),
    policy_names(&AdminConfig::policies),
};

constexpr std::array kLogFields{
    string("level", &LogConfig::level, 1, 64, Format::kLogLevel),
    string("access_log", &LogConfig::access_log, 1, 4096, Format::kAccessLog),
};

constexpr std::array kStoreFields{
    string("state", &StoreConfig::state, 1, 4096, Format::kStoreUrl),
};

// A throttle. `rate` is required, so `burst` alone is an error.
constexpr std::array kRateFields{
    custom<RateConfig>("rate", Kind::kRate, &decode_rate, 1, 1'000'000 * kMilli, Format::kLine,
                       /*required=*/true),
    custom<RateConfig>("burst", Kind::kInt, &decode_burst, 1, 1'000'000, Format::kLine),
};
// burst lands in a uint32 through its hook, which well_formed() cannot see. And the GCRA
// arithmetic takes burst * (1 / rate) in nanoseconds: with rate >= 0.001 and burst <= 1e6 that
// is at most 1e18 ns, inside int64.
static_assert(kRateFields[1].max <= std::numeric_limits<std::uint32_t>::max());
static_assert(kRateFields[0].min >= 1 && kRateFields[1].max <= 1'000'000);

template <auto Member>
void throttle_hook(Walker& w, const Field<OwnerOf<Member>>& /*f*/, const Value& v,
                   const std::string& path, OwnerOf<Member>& out) {
  RateConfig& r = out.*Member;
  walk_map(w, v, path, rows(kRateFields), r);
  if (r.set && r.burst == 0) {
    // No burst given: one second's worth of requests at once, and at least one.
    r.burst = static_cast<std::uint32_t>(std::max(1.0, std::ceil(r.rate)));
  }
}

template <auto Member>
constexpr Field<OwnerOf<Member>> throttle(std::string_view key, bool required = false) {
  return {.key = key,
          .kind = Kind::kSection,
          .slot = Hook<OwnerOf<Member>>{&throttle_hook<Member>},
          .required = required,
          .describe = &describe_table<kRateFields>};
}

constexpr std::array kQuotaFields{
    Field<QuotaConfig>{.key = "limit",
                       .kind = Kind::kInt,
                       .slot = &QuotaConfig::limit,
                       .min = 1,
                       .max = 1'000'000'000'000,
                       .required = true},
    string("period", &QuotaConfig::period, 1, 16, Format::kPeriod),
    integer("offset", &QuotaConfig::offset, 0, 27),  // the largest of kPeriods; checked below
};

// A quota; the offset bound depends on the period.
template <auto Member>
void quota_hook(Walker& w, const Field<OwnerOf<Member>>& /*f*/, const Value& v,
                const std::string& path, OwnerOf<Member>& out) {
  QuotaConfig& q = out.*Member;
  walk_map(w, v, path, rows(kQuotaFields), q);
  q.set = q.limit != 0;
  if (!v.node.IsMap() || q.offset == 0) {
    return;
  }
  // A period that failed its check leaves the default in q.period; its offset is not judged
  // against that default. (operator[] finds the first "period" key, the one walk_map used.)
  const YAML::Node period = v.node["period"];
  if (period && !(period.IsScalar() && period.Scalar() == q.period)) {
    return;
  }
  const auto info = std::find_if(kPeriods.begin(), kPeriods.end(),
                                 [&](const PeriodInfo& p) { return p.name == q.period; });
  if (info == kPeriods.end() || q.offset <= info->max_offset) {
    return;  // end(): cannot happen, the period passed Format::kPeriod
  }
  const std::string offset_path = join(path, "offset");
  w.error(w.position(offset_path), offset_path,
          info->max_offset == 0 ? "must be 0 for period " + q.period
                                : std::to_string(q.offset) + " is above the maximum " +
                                      std::to_string(info->max_offset) + " for period " + q.period);
}

template <auto Member>
constexpr Field<OwnerOf<Member>> quota(std::string_view key) {
  return {.key = key,
          .kind = Kind::kSection,
          .slot = Hook<OwnerOf<Member>>{&quota_hook<Member>},
          .describe = &describe_table<kQuotaFields>};
}

constexpr std::array kStageFields{
    string("name", &Stage::name, 1, 64, Format::kName, /*required=*/true),
    throttle<&Stage::throttle>("throttle"),
};

constexpr std::array kUpstreamFields{
    string("name", &Upstream::name, 1, 64, Format::kName, /*required=*/true),
    custom<Upstream>("url", Kind::kUrl, &decode_url, 1, 2048, Format::kLine, /*required=*/true),
    duration("connect_timeout", &Upstream::connect_timeout, 1ms, 1min),
    duration("timeout", &Upstream::timeout, 1ms, 1h),
    integer("max_idle", &Upstream::max_idle, 0, 10'000),
    size("max_response_bytes", &Upstream::max_response_bytes, 0, 4 * kGiB),
};

constexpr std::array kStaticFields{
    integer("status", &StaticTarget::status, 100, 599),
    string("body", &StaticTarget::body, 0, 1 * kMiB, Format::kText),
    string("content_type", &StaticTarget::content_type, 1, 256, Format::kLine),
    custom<StaticTarget>("headers", Kind::kHeaders, &decode_headers, 0, 64, Format::kLine),
};

constexpr std::array kHttpFields{
    string("upstream", &HttpTarget::upstream, 1, 64, Format::kName, /*required=*/true),
    string("path_prefix", &HttpTarget::path_prefix, 0, 1024, Format::kPrefix),
    boolean("strip_stage", &HttpTarget::strip_stage),
};

constexpr std::array kTargetFields{
    section<&Target::static_target, kStaticFields>("static"),
    section<&Target::http, kHttpFields>("http"),
    custom<Target>("function", Kind::kString, &decode_target_function, 1, 64, Format::kName),
    custom<Target>("payload_format", Kind::kString, &decode_payload_format, 1, 8, Format::kLine),
};

constexpr std::array kJwtFields{
    custom<JwtAuthorizerConfig>("jwks", Kind::kString, &decode_jwks, 1, 4096, Format::kLine,
                                /*required=*/true),
    string("issuer", &JwtAuthorizerConfig::issuer, 1, 1024, Format::kLine),
    Field<JwtAuthorizerConfig>{.key = "audience",
                               .kind = Kind::kStringList,
                               .slot = &JwtAuthorizerConfig::audience,
                               .min = 0,
                               .max = 100,
                               .format = Format::kLine},
    custom<JwtAuthorizerConfig>("token_use", Kind::kString, &decode_token_use, 1, 16,
                                Format::kLine),
    Field<JwtAuthorizerConfig>{.key = "scopes",
                               .kind = Kind::kStringList,
                               .slot = &JwtAuthorizerConfig::scopes,
                               .min = 0,
                               .max = 100,
                               .format = Format::kLine},
    custom<JwtAuthorizerConfig>("algorithms", Kind::kStringList, &decode_algorithms, 0, 16,
                                Format::kLine),
    duration("leeway", &JwtAuthorizerConfig::leeway, 0ms, 5min),
};

// A target is exactly one of static, http or function.
void decode_target(Walker& w, const Field<Route>& /*f*/, const Value& v, const std::string& path,
                   Route& out) {
  const std::uint64_t seen = walk_map(w, v, path, rows(kTargetFields), out.target);
  if (!v.node.IsMap() && !v.node.IsNull()) {
    return;  // already reported
  }
  constexpr std::uint64_t kStatic = 1;  // rows of kTargetFields
  constexpr std::uint64_t kHttp = 2;
  constexpr std::uint64_t kFunction = 4;
  constexpr std::uint64_t kPayloadFormat = 8;
  const std::uint64_t kinds = seen & (kStatic | kHttp | kFunction);
  if (kinds != 0 && (kinds & (kinds - 1)) != 0) {
    w.error(v.pos, path,
            "has more than one of 'static', 'http' and 'function'; a target is exactly one");
  } else if (kinds == 0) {
    w.error(v.pos, path, "needs one of 'static', 'http' or 'function'");
  }
  if ((seen & kPayloadFormat) != 0 && (seen & kFunction) == 0) {
    const std::string pf = join(path, "payload_format");
    w.error(w.position(pf), pf, "only applies to a 'function' target");
  }
  out.target.kind = kinds == kHttp       ? Target::Kind::kHttp
                    : kinds == kFunction ? Target::Kind::kFunction
                                         : Target::Kind::kStatic;
}

constexpr std::array kRouteFields{
    string("name", &Route::name, 1, 256, Format::kLine),
    custom<Route>("method", Kind::kMethods, &decode_methods, 1, 16, Format::kLine,
                  /*required=*/true),
    string("path", &Route::path, 1, 2048, Format::kRoutePath, /*required=*/true),
    Field<Route>{.key = "stages",
                 .kind = Kind::kStringList,
                 .slot = &Route::stages,
                 .min = 0,
                 .max = 100,
                 .format = Format::kName},
    custom<Route>("function", Kind::kString, &decode_function, 1, 64, Format::kName),
    Field<Route>{.key = "target",
                 .kind = Kind::kSection,
                 .slot = Hook<Route>{&decode_target},
                 .required = true,
                 .describe = &describe_table<kTargetFields>},
    custom<Route>("api_key", Kind::kString, &decode_api_key, 1, 64, Format::kLine),
    custom<Route>("auth", Kind::kString, &decode_route_auth, 1, 64, Format::kLine),
    section<&Route::jwt, kJwtFields>("jwt"),
    throttle<&Route::throttle>("throttle"),
    integer("concurrency", &Route::concurrency, 0, 1'000'000),
    custom<Route>("policy", Kind::kString, &decode_policy_ref<Route>, 1, 64, Format::kName),
};

constexpr std::array kApiKeysFields{
    string("header", &ApiKeysConfig::header, 1, 256, Format::kHeaderName),
    duration("quota_flush_interval", &ApiKeysConfig::quota_flush_interval, 10ms, 1min),
    boolean("forward", &ApiKeysConfig::forward),
};

constexpr std::array kCredentialsFields{
    string("kek_file", &CredentialsConfig::kek_file, 1, 4096, Format::kLine),
};

constexpr std::array kThrottlingFields{
    throttle<&ThrottlingConfig::account>("account"),
    throttle<&ThrottlingConfig::client_ip>("client_ip"),
    integer("concurrency", &ThrottlingConfig::concurrency, 0, 1'000'000),
    duration("concurrency_wait", &ThrottlingConfig::concurrency_wait, 0ms, 1min),
};

constexpr std::array kSandboxFields{
    custom<SandboxConfig>("network", Kind::kString, &decode_network, 1, 16, Format::kLine),
    integer("tmp_mb", &SandboxConfig::tmp_mb, 1, 4096),
};

constexpr std::array kAsyncFields{
    integer("max_retries", &AsyncConfig::max_retries, 0, 100),
    integer("backoff_s", &AsyncConfig::backoff_s, 0, 3600),
    integer("max_age_s", &AsyncConfig::max_age_s, 1, 1'209'600),
    integer("max_depth", &AsyncConfig::max_depth, 1, 1'000'000),
};

constexpr std::array kFunctionFields{
    string("name", &FunctionConfig::name, 1, 64, Format::kName, /*required=*/true),
    throttle<&FunctionConfig::throttle>("throttle"),
    integer("concurrency", &FunctionConfig::concurrency, 0, 1'000'000),
    custom<FunctionConfig>("runtime", Kind::kString, &decode_runtime, 1, 16, Format::kLine),
    custom<FunctionConfig>("command", Kind::kStringList, &decode_command, 1, 64, Format::kLine),
    string("working_dir", &FunctionConfig::working_dir, 1, 4096, Format::kFsPath),
    string("handler", &FunctionConfig::handler, 1, 256, Format::kLine),
    custom<FunctionConfig>("env", Kind::kHeaders, &decode_env, 0, 64, Format::kLine),
    integer("memory_mb", &FunctionConfig::memory_mb, 16, 10'240),
    integer("timeout_s", &FunctionConfig::timeout_s, 1, 900),
    integer("reserved_concurrency", &FunctionConfig::reserved_concurrency, 1, 1000),
    integer("max_queue", &FunctionConfig::max_queue, 0, 100'000),
    integer("idle_timeout_s", &FunctionConfig::idle_timeout_s, 1, 86'400),
    integer("max_pids", &FunctionConfig::max_pids, 1, 4096),
    integer("init_timeout_s", &FunctionConfig::init_timeout_s, 1, 900),
    section<&FunctionConfig::sandbox, kSandboxFields>("sandbox"),
    section<&FunctionConfig::async, kAsyncFields>("async"),
    string("role", &FunctionConfig::role, 1, 64, Format::kName),
    custom<FunctionConfig>("invokers", Kind::kStringList, &decode_invokers, 0, 500,
                           Format::kInvoker),
    custom<FunctionConfig>("policy", Kind::kString, &decode_policy_ref<FunctionConfig>, 1, 64,
                           Format::kName),
};

constexpr std::array kPolicyFields{
    string("name", &NamedPolicy::name, 1, 64, Format::kName, /*required=*/true),
    custom<NamedPolicy>("document", Kind::kSection, &decode_named_document, 0, 0, Format::kLine,
                        /*required=*/true),
};

constexpr std::array kRoleFields{
    string("name", &Role::name, 1, 64, Format::kName, /*required=*/true),
    policy_names(&Role::policies),
};

constexpr std::array kAuthorizationFields{
    custom<AuthorizationConfig>("default", Kind::kString, &decode_authorization_default, 1, 16,
                                Format::kLine),
};

constexpr std::array kRuntimeFields{
    integer("max_lineage_depth", &RuntimeConfig::max_lineage_depth, 1, 1000),
    integer("run_as_uid", &RuntimeConfig::run_as_uid, 1, 4'294'967'294),
    integer("run_as_gid", &RuntimeConfig::run_as_gid, 1, 4'294'967'294),
};

constexpr std::array kOverrideFields{
    string("route", &PlanOverride::route, 1, 256, Format::kRouteName, /*required=*/true),
    throttle<&PlanOverride::throttle>("throttle", /*required=*/true),
};

constexpr std::array kPlanFields{
    string("name", &Plan::name, 1, 64, Format::kName, /*required=*/true),
    throttle<&Plan::throttle>("throttle"),
    quota<&Plan::quota>("quota"),
    Field<Plan>{.key = "stages",
                .kind = Kind::kStringList,
                .slot = &Plan::stages,
                .min = 0,
                .max = 100,
                .format = Format::kName},
    Field<Plan>{.key = "routes",
                .kind = Kind::kStringList,
                .slot = &Plan::routes,
                .min = 0,
                .max = 10'000,
                .format = Format::kRouteName},
    list<&Plan::overrides, kOverrideFields>("overrides", 10'000),
    policy_names(&Plan::policies),
};

constexpr std::array kIdentityFields{
    string("path_prefix", &IdentityConfig::path_prefix, 1, 1024, Format::kPrefix),
    integer("hash_threads", &IdentityConfig::hash_threads, 1, 64),
    integer("max_pending", &IdentityConfig::max_pending, 1, 100'000),
    duration("jwks_refresh", &IdentityConfig::jwks_refresh, 1s, 24h),
};

constexpr std::array kPasswordPolicyFields{
    integer("min_length", &PasswordPolicy::min_length, 6, 256),
    boolean("require_lowercase", &PasswordPolicy::require_lowercase),
    boolean("require_uppercase", &PasswordPolicy::require_uppercase),
    boolean("require_digits", &PasswordPolicy::require_digits),
    boolean("require_symbols", &PasswordPolicy::require_symbols),
};

constexpr std::array kTokenLifetimeFields{
    duration("access", &TokenLifetimes::access, 5min, 24h),
    duration("id", &TokenLifetimes::id, 5min, 24h),
    duration("refresh", &TokenLifetimes::refresh, 1h, 87'600h),
};

constexpr std::array kSignInThrottleFields{
    integer("free_attempts", &SignInThrottle::free_attempts, 0, 1000),
    duration("base_delay", &SignInThrottle::base_delay, 1ms, 1h),
    duration("max_delay", &SignInThrottle::max_delay, 1ms, 24h),
    duration("reset_after", &SignInThrottle::reset_after, 1s, 168h),
};

constexpr std::array kArgon2Fields{
    integer("ops_limit", &Argon2Config::ops_limit, 1, 20),
    size("memory", &Argon2Config::memory, 8 * kKiB, 1 * kGiB),
};

constexpr std::array kUserPoolFields{
    string("name", &UserPool::name, 1, 64, Format::kName, /*required=*/true),
    string("issuer", &UserPool::issuer, 1, 1024, Format::kLine),
    custom<UserPool>("signing_alg", Kind::kString, &decode_signing_alg, 1, 16, Format::kLine),
    custom<UserPool>("confirmation", Kind::kString, &decode_confirmation, 1, 16, Format::kLine),
    Field<UserPool>{.key = "clients",
                    .kind = Kind::kStringList,
                    .slot = &UserPool::clients,
                    .min = 1,
                    .max = 100,
                    .format = Format::kName,
                    .required = true},
    section<&UserPool::password_policy, kPasswordPolicyFields>("password_policy"),
    section<&UserPool::tokens, kTokenLifetimeFields>("tokens"),
    section<&UserPool::sign_in_throttle, kSignInThrottleFields>("sign_in_throttle"),
    section<&UserPool::argon2, kArgon2Fields>("argon2"),
};

constexpr std::array kConfigFields{
    section<&Config::server, kServerFields>("server"),
    section<&Config::limits, kLimitsFields>("limits"),
    section<&Config::admin, kAdminFields>("admin"),
    section<&Config::log, kLogFields>("log"),
    section<&Config::store, kStoreFields>("store"),
    list<&Config::stages, kStageFields>("stages", 100),
    list<&Config::upstreams, kUpstreamFields>("upstreams", 1000),
    list<&Config::routes, kRouteFields>("routes", 10'000),
    section<&Config::api_keys, kApiKeysFields>("api_keys"),
    section<&Config::credentials, kCredentialsFields>("credentials"),
    section<&Config::throttling, kThrottlingFields>("throttling"),
    list<&Config::functions, kFunctionFields>("functions", 10'000),
    list<&Config::plans, kPlanFields>("plans", 1000),
    section<&Config::runtime, kRuntimeFields>("runtime"),
    string("account_id", &Config::account_id, 12, 12, Format::kAccountId),
    string("region", &Config::region, 1, 32, Format::kRegion),
    list<&Config::policies, kPolicyFields>("policies", 1000),
    list<&Config::roles, kRoleFields>("roles", 1000),
    section<&Config::authorization, kAuthorizationFields>("authorization"),
    section<&Config::identity, kIdentityFields>("identity"),
    list<&Config::user_pools, kUserPoolFields>("user_pools", 100),
};

// Bounds must fit the member they land in, and tables must fit the 64-bit `seen` mask.
template <class S, std::size_t N>
constexpr bool well_formed(const std::array<Field<S>, N>& table) {
  if (N > 64) {
    return false;
  }
  for (const Field<S>& f : table) {
    if (f.min < 0 || f.min > f.max) {
      return false;
    }
    const bool fits = std::visit(
        [&](auto slot) {
          using T = decltype(slot);
          if constexpr (std::is_same_v<T, std::uint16_t S::*>) {
            return f.max <= std::numeric_limits<std::uint16_t>::max();
          } else if constexpr (std::is_same_v<T, std::uint32_t S::*>) {
            return f.max <= std::numeric_limits<std::uint32_t>::max();
          } else {
            return true;
          }
        },
        f.slot);
    if (!fits) {
      return false;
    }
  }
  return true;
}
static_assert(well_formed(kServerFields));
static_assert(well_formed(kLimitsFields));
static_assert(well_formed(kAdminFields));
static_assert(well_formed(kLogFields));
static_assert(well_formed(kStoreFields));
static_assert(well_formed(kRateFields));
static_assert(well_formed(kQuotaFields));
static_assert(well_formed(kStageFields));
static_assert(well_formed(kUpstreamFields));
static_assert(well_formed(kStaticFields));
static_assert(well_formed(kHttpFields));
static_assert(well_formed(kTargetFields));
static_assert(well_formed(kRouteFields));
static_assert(well_formed(kApiKeysFields));
static_assert(well_formed(kCredentialsFields));
static_assert(well_formed(kThrottlingFields));
static_assert(well_formed(kFunctionFields));
static_assert(well_formed(kSandboxFields));
static_assert(well_formed(kAsyncFields));
static_assert(well_formed(kRuntimeFields));
static_assert(well_formed(kOverrideFields));
static_assert(well_formed(kPlanFields));
static_assert(well_formed(kPolicyFields));
static_assert(well_formed(kRoleFields));
static_assert(well_formed(kAuthorizationFields));
static_assert(well_formed(kJwtFields));
static_assert(well_formed(kIdentityFields));
static_assert(well_formed(kPasswordPolicyFields));
static_assert(well_formed(kTokenLifetimeFields));
static_assert(well_formed(kSignInThrottleFields));
static_assert(well_formed(kArgon2Fields));
static_assert(well_formed(kUserPoolFields));
static_assert(well_formed(kConfigFields));

// ---------------------------------------------------------------------------------------------
// Introspection for schema_keys().

template <class S>
std::string_view kind_name(const Field<S>& f) {
  switch (f.kind) {
    case Kind::kBool:
      return "boolean";
    case Kind::kInt:
      return "integer";
    case Kind::kSize:
      return "size";
    case Kind::kDuration:
      return "duration";
    case Kind::kString:
      return "string";
    case Kind::kStringList:
      return "string list";
    case Kind::kListen:
      return "host:port";
    case Kind::kUrl:
      return "url";
    case Kind::kMethods:
      return "method list";
    case Kind::kRate:
      return "number";
    case Kind::kHeaders:
      return "header map";
    case Kind::kSection:
      return "section";
    case Kind::kList:
      return "list";
  }
  return "?";
}

template <class S>
std::string bounds_text(const Field<S>& f) {
  std::string range = std::to_string(f.min) + ".." + std::to_string(f.max);
  switch (f.kind) {
    case Kind::kInt:
    case Kind::kSize:
      return range;
    case Kind::kDuration:
      return format_duration(milliseconds(f.min)) + ".." + format_duration(milliseconds(f.max));
    case Kind::kRate:
      return thousandths(f.min) + ".." + thousandths(f.max);
    case Kind::kString:
    case Kind::kListen:
    case Kind::kUrl:
      return range + " bytes";
    case Kind::kStringList:
    case Kind::kMethods:
    case Kind::kHeaders:
    case Kind::kList:
      return "at most " + std::to_string(f.max) + " items";
    case Kind::kBool:
    case Kind::kSection:
      break;
  }
  return "";
}

// GCC 12 at -O2 reports the visits of slots that do not belong to a one-byte S (SandboxConfig)
// as out of bounds; those branches never run for such an S.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#endif
template <class S>
std::string default_text(const Field<S>& f) {
  // static: GCC 12 at -O2 wrongly reports a local value-initialized S as maybe-uninitialized.
  static const S defaults{};
  return std::visit(
      [&](auto slot) -> std::string {
        using T = decltype(slot);
        if constexpr (std::is_same_v<T, Hook<S>>) {
          return "";
        } else if constexpr (std::is_same_v<T, bool S::*>) {
          return defaults.*slot ? "true" : "false";
        } else if constexpr (std::is_same_v<T, milliseconds S::*>) {
          return format_duration(defaults.*slot);
        } else if constexpr (std::is_same_v<T, std::string S::*>) {
          return "\"" + defaults.*slot + "\"";
        } else if constexpr (std::is_same_v<T, std::vector<std::string> S::*>) {
          return "[]";
        } else {
          return std::to_string(defaults.*slot);
        }
      },
      f.slot);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

Position position_of(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null() || mark.line < 0 || mark.column < 0) {
    return {};
  }
  return {mark.line + 1, mark.column + 1};
}

void Diagnostics::add(Position pos, std::string_view path, std::string_view message) {
  if (full()) {
    dropped_ = true;
    return;
  }
  if (errors_.size() + 1 == kMaxErrors) {
    dropped_ = true;  // the walk stops here, so more errors may go unreported
  }
  ConfigError e;
  e.line = pos.line;
  e.column = pos.column;
  if (!path.empty()) {
    e.message.reserve(path.size() + 2 + message.size());
    e.message += path;
    e.message += ": ";
  }
  e.message += message;
  errors_.push_back(std::move(e));
}

std::vector<ConfigError> Diagnostics::take(const std::string& file) && {
  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
    return a.line != b.line ? a.line < b.line : a.column < b.column;
  });
  if (dropped_ && !errors_.empty()) {
    ConfigError note = errors_.back();
    note.message =
        "too many errors; stopped checking after " + std::to_string(kMaxErrors) + " of them";
    errors_.push_back(std::move(note));
  }
  for (ConfigError& e : errors_) {
    e.file = file;
  }
  return std::move(errors_);
}

Position Decoded::position(std::string_view path) const {
  const auto it = positions.find(path);
  return it == positions.end() ? Position{} : it->second;
}

void decode(const YAML::Node& root, Decoded& out) {
  Walker w(out);
  const Value v{root, position_of(root)};
  if (!root.IsMap() && !root.IsNull()) {
    w.error(v.pos, "",
            "expected a mapping at the top level, got " + std::string(describe_node(root)));
    return;
  }
  walk_map(w, v, "", rows(kConfigFields), out.config);
}

std::vector<KeyInfo> schema_keys() {
  std::vector<KeyInfo> out;
  describe_table<kConfigFields>("", out);
  return out;
}

}  // namespace gatehouse::config::detail
