// parse_policy: untrusted JSON -> validated, compiled policy. Two passes over a document of at
// most kMaxPolicyBytes: a SAX scan that refuses deep nesting and repeated keys with their path
// (Boost.JSON's DOM silently keeps the last of two equal keys), then the DOM walk that validates
// every element and pre-compiles it (lowercased action globs, partition-normalized resource
// globs, pre-parsed condition operands) so evaluation does no parsing.
#include <algorithm>
#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>
#include <set>

#include "policy/compiled.h"

namespace gatehouse::policy {

namespace json = boost::json;
using core::ErrorCode;
using detail::Cmp;
using detail::CompiledPolicy;
using detail::Condition;
using detail::ConditionValue;
using detail::OpKind;
using detail::PrincipalSet;
using detail::Segment;
using detail::SetPrefix;
using detail::Statement;
using detail::Template;

namespace {

constexpr std::string_view kVersion2012 = "2012-10-17";
constexpr std::string_view kVersion2008 = "2008-10-17";
constexpr std::size_t kMaxSidBytes = 128;
constexpr std::size_t kMaxKeyBytes = 128;

std::string child(std::string_view path, std::string_view key) {
  std::string out(path);
  if (!out.empty()) {
    out.push_back('.');
  }
  out.append(key);
  return out;
}

std::string index(std::string_view path, std::size_t i) {
  return std::string(path) + "[" + std::to_string(i) + "]";
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') {
    s.remove_prefix(1);
  }
  while (!s.empty() && s.back() == ' ') {
    s.remove_suffix(1);
  }
  return s;
}

bool has_wildcard(std::string_view s) { return s.find_first_of("*?") != std::string_view::npos; }

// ---- pass 1: nesting depth and repeated keys, with paths --------------------------------------

class Scanner {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code& ec) { return open(true, ec); }
  bool on_array_end(std::size_t, json::error_code&) { return close(); }
  bool on_object_begin(json::error_code& ec) { return open(false, ec); }
  bool on_object_end(std::size_t, json::error_code&) { return close(); }
  bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_string(json::string_view, std::size_t, json::error_code&) { return scalar(); }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    key_.append(s.data(), s.size());
    Frame& f = frames_.back();
    if (!f.keys.insert(key_).second) {
      f.key = std::move(key_);
      key_.clear();
      error_ = path() + ": duplicate key";
      ec = json::error::syntax;
      return false;
    }
    f.key = std::move(key_);
    key_.clear();
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t, json::string_view, json::error_code&) { return scalar(); }
  bool on_uint64(std::uint64_t, json::string_view, json::error_code&) { return scalar(); }
  bool on_double(double, json::string_view, json::error_code&) { return scalar(); }
  bool on_bool(bool, json::error_code&) { return scalar(); }
  bool on_null(json::error_code&) { return scalar(); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

  [[nodiscard]] const std::string& error() const { return error_; }

 private:
  struct Frame {
    bool array = false;
    std::size_t index = 0;
    std::string key;
    std::set<std::string> keys;
  };

  std::string path() const {
    std::string out;
    for (const Frame& f : frames_) {
      out = f.array ? index(out, f.index) : child(out, f.key);
    }
    return out;
  }
  bool open(bool array, json::error_code& ec) {
    if (frames_.size() >= kMaxDepth) {
      error_ = path() + ": nested deeper than " + std::to_string(kMaxDepth) + " levels";
      ec = json::error::too_deep;
      return false;
    }
    frames_.push_back(Frame{array, 0, {}, {}});
    return true;
  }
  bool close() {
    frames_.pop_back();
    return scalar();
  }
  // A value ended: the enclosing array moves to its next index.
  bool scalar() {
    if (!frames_.empty() && frames_.back().array) {
      ++frames_.back().index;
    }
    return true;
  }

  std::vector<Frame> frames_;
  std::string key_;
  std::string error_;
};

// ---- pass 2: validate and compile -------------------------------------------------------------

struct OperatorInfo {
  std::string_view name;
  OpKind kind;
  Cmp cmp;
  bool negated;
};

constexpr OperatorInfo kOperators[] = {
    {"StringEquals", OpKind::kString, Cmp::kEq, false},
    {"StringNotEquals", OpKind::kString, Cmp::kEq, true},
    {"StringEqualsIgnoreCase", OpKind::kStringIgnoreCase, Cmp::kEq, false},
    {"StringNotEqualsIgnoreCase", OpKind::kStringIgnoreCase, Cmp::kEq, true},
    {"StringLike", OpKind::kStringLike, Cmp::kEq, false},
    {"StringNotLike", OpKind::kStringLike, Cmp::kEq, true},
    {"NumericEquals", OpKind::kNumeric, Cmp::kEq, false},
    {"NumericNotEquals", OpKind::kNumeric, Cmp::kEq, true},
    {"NumericLessThan", OpKind::kNumeric, Cmp::kLt, false},
    {"NumericLessThanEquals", OpKind::kNumeric, Cmp::kLe, false},
    {"NumericGreaterThan", OpKind::kNumeric, Cmp::kGt, false},
    {"NumericGreaterThanEquals", OpKind::kNumeric, Cmp::kGe, false},
    {"DateEquals", OpKind::kDate, Cmp::kEq, false},
    {"DateNotEquals", OpKind::kDate, Cmp::kEq, true},
    {"DateLessThan", OpKind::kDate, Cmp::kLt, false},
    {"DateLessThanEquals", OpKind::kDate, Cmp::kLe, false},
    {"DateGreaterThan", OpKind::kDate, Cmp::kGt, false},
    {"DateGreaterThanEquals", OpKind::kDate, Cmp::kGe, false},
    {"Bool", OpKind::kBool, Cmp::kEq, false},
    {"BinaryEquals", OpKind::kBinary, Cmp::kEq, false},
    {"IpAddress", OpKind::kIp, Cmp::kEq, false},
    {"NotIpAddress", OpKind::kIp, Cmp::kEq, true},
    // IAM's ArnEquals accepts wildcards too and behaves as ArnLike.
    {"ArnEquals", OpKind::kArn, Cmp::kEq, false},
    {"ArnLike", OpKind::kArn, Cmp::kEq, false},
    {"ArnNotEquals", OpKind::kArn, Cmp::kEq, true},
    {"ArnNotLike", OpKind::kArn, Cmp::kEq, true},
    {"Null", OpKind::kNull, Cmp::kEq, false},
};

bool is_base64(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) {
    return false;
  }
  const std::size_t pad = s.find('=');  // padding: only a final "=" or "=="
  if (pad != std::string_view::npos && s.substr(pad) != "=" && s.substr(pad) != "==") {
    return false;
  }
  for (char c : s.substr(0, pad)) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '+' || c == '/';
    if (!ok) {
      return false;
    }
  }
  return true;
}

bool is_account_id(std::string_view s) {
  return s.size() == 12 && s.find_first_not_of("0123456789") == std::string_view::npos;
}

class Compiler {
 public:
  explicit Compiler(PolicyKind kind) : kind_(kind) {}

  bool compile(const json::value& doc, CompiledPolicy& out);
  [[nodiscard]] const std::string& error() const { return error_; }

 private:
  bool fail(std::string_view path, std::string_view message) {
    error_ = path.empty() ? std::string(message) : std::string(path) + ": " + std::string(message);
    return false;
  }

  // Calls f(text, path) for a string or each string of a non-empty array of them. With
  // `scalars`, numbers and booleans are accepted too, as their JSON text (condition values).
  template <class F>
  bool each_value(const json::value& v, const std::string& path, bool scalars, F&& f);
  bool one_value(const json::value& v, const std::string& path, bool scalars, std::string& out);

  bool statement(const json::value& v, const std::string& path, Statement& out);
  bool action(std::string_view a, const std::string& path, Statement& out);
  bool resource(std::string_view r, const std::string& path, Statement& out);
  bool principal(const json::value& v, const std::string& path, PrincipalSet& out);
  bool conditions(const json::value& v, const std::string& path, Statement& out);
  bool condition_value(std::string_view text, const std::string& path, Condition& c);
  bool make_template(std::string_view raw, bool glob, const std::string& path, Template& out);

  PolicyKind kind_;
  bool variables_ = false;
  std::string error_;
};

bool Compiler::one_value(const json::value& v, const std::string& path, bool scalars,
                         std::string& out) {
  if (v.is_string()) {
    out.assign(v.get_string().data(), v.get_string().size());
  } else if (scalars && v.is_bool()) {
    out = v.get_bool() ? "true" : "false";
  } else if (scalars && v.is_int64()) {
    out = std::to_string(v.get_int64());
  } else if (scalars && v.is_uint64()) {
    out = std::to_string(v.get_uint64());
  } else if (scalars && v.is_double()) {
    out = json::serialize(v);
  } else {
    return fail(path, scalars ? "expected a string, number or boolean" : "expected a string");
  }
  if (out.size() > kMaxStringBytes) {
    return fail(path, "longer than " + std::to_string(kMaxStringBytes) + " bytes");
  }
  return true;
}

template <class F>
bool Compiler::each_value(const json::value& v, const std::string& path, bool scalars, F&& f) {
  std::string text;
  if (!v.is_array()) {
    if (!v.is_string() && !(scalars && (v.is_number() || v.is_bool()))) {
      return fail(path, scalars ? "expected a value or an array of values"
                                : "expected a string or an array of strings");
    }
    return one_value(v, path, scalars, text) && f(std::string_view(text), path);
  }
  const json::array& arr = v.get_array();
  if (arr.empty()) {
    return fail(path, "must not be an empty array");
  }
  if (arr.size() > kMaxValues) {
    return fail(path, "more than " + std::to_string(kMaxValues) + " values");
  }
  for (std::size_t i = 0; i < arr.size(); ++i) {
    const std::string p = index(path, i);
    if (!one_value(arr[i], p, scalars, text) || !f(std::string_view(text), p)) {
      return false;
    }
  }
  return true;
}

bool Compiler::compile(const json::value& doc, CompiledPolicy& out) {
  if (!doc.is_object()) {
    return fail("", "a policy must be a JSON object");
  }
  const json::object& o = doc.get_object();
  out.version = std::string(kVersion2008);  // IAM's default when Version is absent
  for (const auto& [key, value] : o) {
    if (key != "Version" && key != "Id" && key != "Statement") {
      return fail(child("", key), "unknown key (expected Version, Id or Statement)");
    }
  }
  if (const json::value* v = o.if_contains("Version")) {
    if (!v->is_string() || (v->get_string() != kVersion2012 && v->get_string() != kVersion2008)) {
      return fail("Version", "must be \"2012-10-17\" or \"2008-10-17\"");
    }
    out.version = std::string(v->get_string());
  }
  variables_ = out.version == kVersion2012;
  if (const json::value* v = o.if_contains("Id")) {
    if (!v->is_string() || v->get_string().size() > kMaxStringBytes) {
      return fail("Id",
                  "expected a string of at most " + std::to_string(kMaxStringBytes) + " bytes");
    }
  }
  const json::value* st = o.if_contains("Statement");
  if (st == nullptr) {
    return fail("Statement", "missing");
  }
  std::set<std::string_view> sids;
  auto add = [&](const json::value& v, const std::string& path) {
    Statement s;
    if (!statement(v, path, s)) {
      return false;
    }
    out.statements.push_back(std::move(s));
    const std::string_view sid = out.statements.back().sid;
    // IAM requires unique Sids; it also keeps explanations unambiguous.
    if (!sid.empty() && !sids.insert(sid).second) {
      return fail(child(path, "Sid"), "duplicate Sid \"" + std::string(sid) + "\"");
    }
    return true;
  };
  if (st->is_object()) {
    return add(*st, "Statement");
  }
  if (!st->is_array()) {
    return fail("Statement", "expected an object or an array of objects");
  }
  const json::array& arr = st->get_array();
  if (arr.empty()) {
    return fail("Statement", "must hold at least one statement");
  }
  if (arr.size() > kMaxStatements) {
    return fail("Statement", "more than " + std::to_string(kMaxStatements) + " statements");
  }
  out.statements.reserve(arr.size());  // keeps the Sid views above valid
  for (std::size_t i = 0; i < arr.size(); ++i) {
    if (!add(arr[i], index("Statement", i))) {
      return false;
    }
  }
  return true;
}

bool Compiler::statement(const json::value& v, const std::string& path, Statement& out) {
  if (!v.is_object()) {
    return fail(path, "a statement must be an object");
  }
  const json::object& o = v.get_object();
  static constexpr std::string_view kKeys[] = {"Sid",          "Effect",      "Principal",
                                               "NotPrincipal", "Action",      "NotAction",
                                               "Resource",     "NotResource", "Condition"};
  for (const auto& [key, value] : o) {
    if (std::find(std::begin(kKeys), std::end(kKeys), std::string_view(key)) == std::end(kKeys)) {
      return fail(child(path, key),
                  "unknown key (expected Sid, Effect, Principal, NotPrincipal, Action, NotAction, "
                  "Resource, NotResource or Condition)");
    }
  }
  // Exactly one of a pair (or at most one, when optional).
  auto pick = [&](std::string_view a, std::string_view b, bool required, const json::value*& found,
                  bool& is_b) {
    const json::value* va = o.if_contains(a);
    const json::value* vb = o.if_contains(b);
    if (va != nullptr && vb != nullptr) {
      return fail(child(path, b), std::string(a) + " and " + std::string(b) + " are exclusive");
    }
    if (required && va == nullptr && vb == nullptr) {
      return fail(child(path, a),
                  "missing (a statement needs " + std::string(a) + " or " + std::string(b) + ")");
    }
    found = va != nullptr ? va : vb;
    is_b = vb != nullptr;
    return true;
  };

  if (const json::value* sid = o.if_contains("Sid")) {
    if (!sid->is_string() || sid->get_string().size() > kMaxSidBytes) {
      return fail(child(path, "Sid"),
                  "expected a string of at most " + std::to_string(kMaxSidBytes) + " bytes");
    }
    out.sid = std::string(sid->get_string());
  }
  const json::value* effect = o.if_contains("Effect");
  if (effect == nullptr) {
    return fail(child(path, "Effect"), "missing");
  }
  if (!effect->is_string() || (effect->get_string() != "Allow" && effect->get_string() != "Deny")) {
    return fail(child(path, "Effect"), "must be \"Allow\" or \"Deny\"");
  }
  out.deny = effect->get_string() == "Deny";

  const json::value* found = nullptr;
  bool is_not = false;
  if (!pick("Principal", "NotPrincipal", kind_ == PolicyKind::kResource, found, is_not)) {
    return false;
  }
  if (found != nullptr) {
    const std::string p = child(path, is_not ? "NotPrincipal" : "Principal");
    if (kind_ == PolicyKind::kIdentity) {
      return fail(p, "an identity policy may not name a principal");
    }
    out.has_principal = true;
    out.not_principal = is_not;
    if (!principal(*found, p, out.principals)) {
      return false;
    }
  }

  if (!pick("Action", "NotAction", true, found, is_not)) {
    return false;
  }
  out.not_action = is_not;
  if (!each_value(*found, child(path, is_not ? "NotAction" : "Action"), false,
                  [&](std::string_view a, const std::string& p) { return action(a, p, out); })) {
    return false;
  }

  if (!pick("Resource", "NotResource", true, found, is_not)) {
    return false;
  }
  out.not_resource = is_not;
  if (!each_value(*found, child(path, is_not ? "NotResource" : "Resource"), false,
                  [&](std::string_view r, const std::string& p) { return resource(r, p, out); })) {
    return false;
  }

  if (const json::value* c = o.if_contains("Condition")) {
    return conditions(*c, child(path, "Condition"), out);
  }
  return true;
}

bool Compiler::action(std::string_view a, const std::string& path, Statement& out) {
  if (a != "*") {
    const std::size_t colon = a.find(':');
    const std::string_view service = a.substr(0, colon);
    if (colon == std::string_view::npos || service.empty() || colon + 1 == a.size() ||
        service.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") !=
            std::string_view::npos) {
      return fail(path,
                  "expected \"*\" or \"service:action\" (e.g. \"s3:GetObject\", \"s3:Get*\")");
    }
  }
  std::string pattern;
  detail::append_glob_text(pattern, a);
  detail::lower_ascii(pattern);
  out.actions.push_back(std::move(pattern));
  return true;
}

bool Compiler::resource(std::string_view r, const std::string& path, Statement& out) {
  // "arn:partition:service..." at least; shorter forms such as "arn:aws:states:*" are fine.
  if (r != "*" && (!r.starts_with("arn:") || std::count(r.begin(), r.end(), ':') < 2)) {
    return fail(path, "expected \"*\" or an ARN (arn:partition:service:region:account:resource)");
  }
  std::string raw(r);
  detail::normalize_partition(raw);
  Template t;
  if (!make_template(raw, true, path, t)) {
    return false;
  }
  out.resources.push_back(std::move(t));
  return true;
}

bool Compiler::principal(const json::value& v, const std::string& path, PrincipalSet& out) {
  if (v.is_string()) {
    if (v.get_string() != "*") {
      return fail(path, "expected \"*\" or an object such as {\"AWS\": \"arn:...\"}");
    }
    out.any = true;
    return true;
  }
  if (!v.is_object() || v.get_object().empty()) {
    return fail(path, "expected \"*\" or an object with AWS, Service or Federated");
  }
  for (const auto& [key, value] : v.get_object()) {
    const std::string p = child(path, key);
    std::vector<std::string>* list = nullptr;
    if (key == "Service") {
      list = &out.services;
    } else if (key == "Federated") {
      list = &out.federated;
    } else if (key != "AWS") {
      return fail(p, "unknown principal type (expected AWS, Service or Federated)");
    }
    const bool ok = each_value(value, p, false, [&](std::string_view s, const std::string& ep) {
      if (list != nullptr) {
        if (s.empty() || has_wildcard(s)) {
          return fail(ep, "expected a name without wildcards");
        }
        list->emplace_back(s);
        return true;
      }
      if (s == "*") {
        out.any = true;
        return true;
      }
      if (is_account_id(s)) {
        out.accounts.emplace_back(s);
        return true;
      }
      if (!s.starts_with("arn:") || std::count(s.begin(), s.end(), ':') < 5) {
        return fail(ep, "expected \"*\", a 12-digit account id or an ARN");
      }
      if (has_wildcard(s)) {
        return fail(ep,
                    "wildcards are not allowed in a principal ARN (use \"*\" and a Condition "
                    "on aws:PrincipalArn)");
      }
      std::string arn(s);
      detail::normalize_partition(arn);
      const std::string_view account = detail::arn_account(arn);
      if (arn == "arn:gatehouse:iam::" + std::string(account) + ":root") {
        out.accounts.emplace_back(account);
      } else {
        out.arns.push_back(std::move(arn));
      }
      return true;
    });
    if (!ok) {
      return false;
    }
  }
  return true;
}

bool Compiler::conditions(const json::value& v, const std::string& path, Statement& out) {
  if (!v.is_object()) {
    return fail(path, "expected an object of condition operators");
  }
  for (const auto& [op_name, body] : v.get_object()) {
    const std::string op_path = child(path, op_name);
    std::string_view name = op_name;
    SetPrefix set = SetPrefix::kNone;
    if (name.starts_with("ForAllValues:")) {
      set = SetPrefix::kForAllValues;
      name.remove_prefix(13);
    } else if (name.starts_with("ForAnyValue:")) {
      set = SetPrefix::kForAnyValue;
      name.remove_prefix(12);
    }
    const bool if_exists = name.ends_with("IfExists");
    if (if_exists) {
      name.remove_suffix(8);
    }
    const OperatorInfo* info = nullptr;
    for (const OperatorInfo& op : kOperators) {
      if (op.name == name) {
        info = &op;
      }
    }
    if (info == nullptr) {
      return fail(op_path, "unknown condition operator");
    }
    if (info->kind == OpKind::kNull && (if_exists || set != SetPrefix::kNone)) {
      return fail(op_path, "Null takes no IfExists suffix and no set prefix");
    }
    if (!body.is_object() || body.get_object().empty()) {
      return fail(op_path, "expected an object of condition keys and values");
    }
    for (const auto& [key, values] : body.get_object()) {
      const std::string key_path = child(op_path, key);
      if (key.empty() || key.size() > kMaxKeyBytes) {
        return fail(key_path,
                    "a condition key must be 1 to " + std::to_string(kMaxKeyBytes) + " bytes");
      }
      if (out.conditions.size() >= kMaxConditions) {
        return fail(key_path,
                    "more than " + std::to_string(kMaxConditions) + " conditions in one statement");
      }
      Condition c;
      c.kind = info->kind;
      c.cmp = info->cmp;
      c.negated = info->negated;
      c.if_exists = if_exists;
      c.set = set;
      c.key = std::string(key);
      detail::lower_ascii(c.key);
      const bool ok = each_value(
          values, key_path, true,
          [&](std::string_view s, const std::string& p) { return condition_value(s, p, c); });
      if (!ok) {
        return false;
      }
      out.conditions.push_back(std::move(c));
    }
  }
  return true;
}

bool Compiler::condition_value(std::string_view text, const std::string& path, Condition& c) {
  ConditionValue cv;
  const bool glob = c.kind == OpKind::kStringLike || c.kind == OpKind::kArn;
  if (c.kind == OpKind::kNull) {
    cv.value.fixed = std::string(text);  // Null's operand is never a variable
  } else if (!make_template(text, glob, path, cv.value)) {
    return false;
  }
  if (!cv.value.has_variables()) {
    const std::string& v = cv.value.fixed;
    switch (c.kind) {
      case OpKind::kNumeric:
        if (auto n = detail::parse_number(v)) {
          cv.number = *n;
        } else {
          return fail(path, "expected a number");
        }
        break;
      case OpKind::kDate:
        if (auto d = detail::parse_date(v)) {
          cv.date_ms = *d;
        } else {
          return fail(path, "expected an ISO 8601 date or epoch seconds");
        }
        break;
      case OpKind::kBool:
      case OpKind::kNull:
        if (auto b = detail::parse_bool(v)) {
          cv.boolean = *b;
        } else {
          return fail(path, "expected true or false");
        }
        break;
      case OpKind::kIp:
        if (auto a = detail::parse_cidr(v)) {
          cv.cidr = *a;
        } else {
          return fail(path, "expected an IPv4 or IPv6 address or CIDR block");
        }
        break;
      case OpKind::kBinary:
        if (!is_base64(v)) {
          return fail(path, "expected base64");
        }
        break;
      default:
        break;
    }
  }
  c.values.push_back(std::move(cv));
  return true;
}

bool Compiler::make_template(std::string_view raw, bool glob, const std::string& path,
                             Template& out) {
  out.glob = glob;
  if (!variables_ || raw.find("${") == std::string_view::npos) {
    Segment text{Segment::Kind::kText, {}, false, {}};
    detail::append_segment(out.fixed, text, raw, glob);
    return true;
  }
  std::size_t pos = 0;
  bool any_variable = false;
  while (pos < raw.size()) {
    const std::size_t open = raw.find("${", pos);
    if (open != pos) {
      const std::size_t end = open == std::string_view::npos ? raw.size() : open;
      out.segments.push_back(
          {Segment::Kind::kText, std::string(raw.substr(pos, end - pos)), false, {}});
      if (open == std::string_view::npos) {
        break;
      }
    }
    // ${key}, ${key, 'default'} or one of the escapes ${*} ${?} ${$}.
    std::size_t i = open + 2;
    const std::size_t stop = raw.find_first_of(",}", i);
    if (stop == std::string_view::npos) {
      return fail(path, "unterminated policy variable (\"${\" without \"}\")");
    }
    const std::string_view key = trim(raw.substr(i, stop - i));
    Segment s;
    i = stop;
    if (raw[i] == ',') {
      i = raw.find_first_not_of(' ', i + 1);
      const std::size_t quote_end = i == std::string_view::npos || raw[i] != '\''
                                        ? std::string_view::npos
                                        : raw.find('\'', i + 1);
      const std::size_t close = quote_end == std::string_view::npos
                                    ? std::string_view::npos
                                    : raw.find_first_not_of(' ', quote_end + 1);
      if (close == std::string_view::npos || raw[close] != '}') {
        return fail(path, "malformed policy variable default (expected ${key, 'default'})");
      }
      s.has_default = true;
      s.fallback = std::string(raw.substr(i + 1, quote_end - i - 1));
      i = close;
    }
    if (!s.has_default && (key == "*" || key == "?" || key == "$")) {
      s.kind = Segment::Kind::kLiteral;
      s.text = std::string(key);
    } else if (key.empty() || key.size() > kMaxKeyBytes ||
               key.find_first_of(" ${}'\"*?") != std::string_view::npos) {
      return fail(path, "malformed policy variable \"${" + std::string(key) + "}\"");
    } else {
      s.kind = Segment::Kind::kVariable;
      s.text = std::string(key);
      detail::lower_ascii(s.text);
      any_variable = true;
    }
    out.segments.push_back(std::move(s));
    pos = i + 1;
  }
  if (!any_variable) {  // only escapes: resolve them once, here
    for (const Segment& s : out.segments) {
      detail::append_segment(out.fixed, s, s.text, glob);
    }
    out.segments.clear();
  }
  return true;
}

}  // namespace

core::Result<Policy> parse_policy(std::string_view text, std::string_view policy_id,
                                  PolicyKind kind) {
  if (text.size() > kMaxPolicyBytes) {
    return core::make_error(ErrorCode::kPayloadTooLarge,
                            "policy is " + std::to_string(text.size()) + " bytes; the limit is " +
                                std::to_string(kMaxPolicyBytes));
  }
  json::parse_options opts;
  opts.max_depth = kMaxDepth + 1;  // the scanner refuses first, with a path
  {
    json::basic_parser<Scanner> scan(opts);
    json::error_code ec;
    const std::size_t used = scan.write_some(false, text.data(), text.size(), ec);
    if (ec || used != text.size()) {
      const std::string& why = scan.handler().error();
      return core::make_error(ErrorCode::kBadRequest,
                              !why.empty() ? why
                                           : "not valid JSON at byte " + std::to_string(used) +
                                                 ": " + (ec ? ec.message() : "trailing data"));
    }
  }
  json::error_code ec;
  const json::value doc = json::parse(json::string_view(text.data(), text.size()), ec, {}, opts);
  if (ec) {
    return core::make_error(ErrorCode::kBadRequest, "not valid JSON: " + ec.message());
  }
  auto compiled = std::make_unique<CompiledPolicy>();
  compiled->id = std::string(policy_id);
  Compiler compiler(kind);
  if (!compiler.compile(doc, *compiled)) {
    return core::make_error(ErrorCode::kInvalidArgument, compiler.error());
  }
  return Policy(std::move(compiled));
}

}  // namespace gatehouse::policy
