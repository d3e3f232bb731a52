// evaluate(): IAM's decision logic over compiled policies. Allocation-light: patterns were
// compiled at parse time, so a request without policy variables allocates nothing here; a value
// with variables is resolved into one reused scratch string.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <optional>

#include "policy/compiled.h"

namespace gatehouse::policy {

using detail::Cmp;
using detail::Condition;
using detail::ConditionValue;
using detail::OpKind;
using detail::PrincipalSet;
using detail::Segment;
using detail::SetPrefix;
using detail::Statement;
using detail::Template;

// ---- Policy, Context, Decision ----------------------------------------------------------------

Policy::Policy(std::unique_ptr<const detail::CompiledPolicy> impl) noexcept
    : impl_(std::move(impl)) {}
Policy::Policy(Policy&&) noexcept = default;
Policy& Policy::operator=(Policy&&) noexcept = default;
Policy::~Policy() = default;

const std::string& Policy::id() const noexcept { return impl_->id; }
const std::string& Policy::version() const noexcept { return impl_->version; }
std::size_t Policy::statement_count() const noexcept { return impl_->statements.size(); }
std::string_view Policy::sid(std::size_t index) const noexcept {
  return index < impl_->statements.size() ? std::string_view(impl_->statements[index].sid)
                                          : std::string_view();
}

std::vector<std::string> Policy::condition_keys() const {
  std::vector<std::string> keys;
  auto add = [&keys](const std::string& key) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      keys.push_back(key);
    }
  };
  auto add_variables = [&add](const Template& t) {
    for (const Segment& s : t.segments) {
      if (s.kind == Segment::Kind::kVariable) {
        add(s.text);
      }
    }
  };
  for (const Statement& s : impl_->statements) {
    for (const Template& t : s.resources) {
      add_variables(t);
    }
    for (const Condition& c : s.conditions) {
      add(c.key);
      for (const ConditionValue& v : c.values) {
        add_variables(v.value);
      }
    }
  }
  return keys;
}

Context::Entry* Context::entry(std::string_view key) noexcept {
  for (Entry& e : entries_) {
    if (detail::iequals(e.key, key)) {
      return &e;
    }
  }
  return nullptr;
}

void Context::set(std::string_view key, std::vector<std::string> values) {
  if (Entry* e = entry(key)) {
    e->values = std::move(values);
    e->present = true;
    return;
  }
  entries_.push_back(Entry{std::string(key), std::move(values), true});
}

void Context::set(std::string_view key, std::string value) {
  std::vector<std::string> values;
  values.push_back(std::move(value));
  set(key, std::move(values));
}

void Context::add(std::string_view key, std::string value) {
  Entry* e = entry(key);
  if (e == nullptr) {
    set(key, std::move(value));
    return;
  }
  if (!e->present) {
    e->values.clear();
    e->present = true;
  }
  e->values.push_back(std::move(value));
}

void Context::assign(std::string_view key, std::string_view value) {
  Entry* e = entry(key);
  if (e == nullptr) {
    set(key, std::string(value));
    return;
  }
  e->values.resize(1);  // shrinking keeps the first string and its capacity
  e->values[0].assign(value);
  e->present = true;
}

void Context::clear(std::string_view key) noexcept {
  if (Entry* e = entry(key)) {
    e->present = false;  // the values stay allocated for the next assign()
  }
}

void Context::clear_prefix(std::string_view prefix) noexcept {
  for (Entry& e : entries_) {
    if (e.key.size() >= prefix.size() &&
        detail::iequals(std::string_view(e.key).substr(0, prefix.size()), prefix)) {
      e.present = false;
    }
  }
}

void Context::append(std::string_view key, std::string_view value) {
  Entry* e = entry(key);
  if (e == nullptr || !e->present) {
    assign(key, value);
    return;
  }
  e->values.emplace_back(value);
}

const std::vector<std::string>* Context::find(std::string_view key) const noexcept {
  for (const Entry& e : entries_) {
    if (detail::iequals(e.key, key)) {
      return e.present ? &e.values : nullptr;
    }
  }
  return nullptr;
}

namespace {
// arn:gatehouse:iam::<account>:<parts...>
template <class... Parts>
std::string iam_arn(std::string_view account, Parts... parts) {
  std::string arn = "arn:gatehouse:iam::";
  arn += account;
  arn += ':';
  (arn.append(parts), ...);
  return arn;
}
}  // namespace

std::string role_arn(std::string_view account, std::string_view name) {
  return iam_arn(account, std::string_view("role/"), name);
}

std::string api_key_arn(std::string_view account, std::string_view key_id) {
  return iam_arn(account, std::string_view("apikey/"), key_id);
}

std::string user_arn(std::string_view account, std::string_view pool, std::string_view name) {
  return iam_arn(account, std::string_view("user/"), pool, std::string_view("/"), name);
}

std::string admin_arn(std::string_view account) {
  return iam_arn(account, std::string_view("admin"));
}

std::string function_arn(std::string_view region, std::string_view account, std::string_view name) {
  return "arn:gatehouse:lambda:" + std::string(region) + ":" + std::string(account) +
         ":function:" + std::string(name);
}

std::shared_ptr<const Policy> allow_all_policy() {
  static const std::shared_ptr<const Policy> kPolicy = [] {
    auto p =
        parse_policy(R"({"Version":"2012-10-17","Statement":[{"Sid":"AllowAll","Effect":"Allow",)"
                     R"("Action":"*","Resource":"*"}]})",
                     "gatehouse:allow-all", PolicyKind::kIdentity);
    if (!p) {
      std::abort();  // a constant, valid document: parsing it cannot fail
    }
    return std::make_shared<const Policy>(std::move(*p));
  }();
  return kPolicy;
}

void set_time_keys(Context& context, std::chrono::system_clock::time_point now) {
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch());
  const std::time_t t = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char iso[32];
  const std::size_t n = std::strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
  context.assign("aws:CurrentTime", std::string_view(iso, n));
  char num[24];
  const int m = std::snprintf(num, sizeof num, "%lld", static_cast<long long>(secs.count()));
  context.assign("aws:EpochTime", std::string_view(num, m > 0 ? static_cast<std::size_t>(m) : 0));
}

std::string Decision::explain() const {
  if (effect == Effect::kImplicitDeny || policy == nullptr) {
    return "implicit deny: no statement allowed";
  }
  std::string out = effect == Effect::kAllow ? "allow: " : "explicit deny: ";
  out += resource_policy ? "resource policy '" : "policy '";
  out += policy->id();
  out += "' statement ";
  const std::string where = "Statement[" + std::to_string(statement) + "]";
  if (sid.empty()) {
    out += where;
  } else {
    out += "'" + std::string(sid) + "' (" + where + ")";
  }
  return out;
}

// ---- evaluation -------------------------------------------------------------------------------

namespace {

constexpr std::string_view kPrincipalTagPrefix = "aws:principaltag/";

// One evaluation: the request plus scratch state. Not shared between threads.
class Evaluator {
 public:
  explicit Evaluator(const Request& r) : r_(r) {
    const Principal& p = r.principal;
    account_ = !p.account.empty() ? std::string_view(p.account)
               : !p.arns.empty()  ? detail::arn_account(p.arns.front())
                                  : std::string_view();
    if (r.resource.starts_with("arn:aws:")) {  // rare: callers pass gatehouse ARNs
      normalized_resource_ = r.resource;
      detail::normalize_partition(normalized_resource_);
      resource_ = normalized_resource_;
    } else {
      resource_ = r.resource;
    }
  }

  // True when statement `s` applies to the request. A statement in a resource policy must name
  // the principal; one whose variables cannot be resolved never applies.
  bool applies(const Statement& s, bool in_resource_policy) {
    if (s.has_principal) {
      const PrincipalMatch m = principal_matches(s.principals);
      if ((m != PrincipalMatch::kNone) == s.not_principal) {
        return false;
      }
      // An Allow that names the caller's account (or its :root) delegates to the account's
      // identity policies, as in IAM: it grants nothing by itself. A Deny naming the account
      // denies every principal of it.
      if (in_resource_policy && !s.deny && m == PrincipalMatch::kAccountOnly) {
        return false;
      }
    } else if (in_resource_policy) {
      return false;
    }
    bool matched = std::any_of(s.actions.begin(), s.actions.end(), [&](const std::string& a) {
      return detail::glob_match(a, r_.action, /*fold=*/true);
    });
    if (matched == s.not_action) {
      return false;
    }
    matched = false;
    for (const Template& t : s.resources) {
      const std::optional<std::string_view> pattern = resolve(t);
      if (!pattern) {
        return false;
      }
      if (detail::glob_match(*pattern, resource_, false)) {
        matched = true;
        break;
      }
    }
    if (matched == s.not_resource) {
      return false;
    }
    for (const Condition& c : s.conditions) {
      const std::optional<bool> ok = condition(c);
      if (!ok || !*ok) {
        return false;
      }
    }
    return true;
  }

 private:
  struct Values {
    const std::string* data = nullptr;
    std::size_t size = 0;
    [[nodiscard]] bool empty() const { return size == 0; }
    [[nodiscard]] const std::string* begin() const { return data; }
    [[nodiscard]] const std::string* end() const { return data + size; }
  };

  // The request's values for a lowercased condition key: the context first, then the keys the
  // engine derives from the request (aws:PrincipalArn, aws:PrincipalAccount,
  // aws:PrincipalTag/<k>, aws:ResourceAccount).
  Values lookup(std::string_view key) {
    if (const std::vector<std::string>* v = r_.context.find(key)) {
      return {v->data(), v->size()};
    }
    const Principal& p = r_.principal;
    if (key == "aws:principalarn" && !p.arns.empty()) {
      return {&p.arns.front(), 1};
    }
    if (key == "aws:resourceaccount" && !r_.account.empty()) {
      return {&r_.account, 1};
    }
    if (key == "aws:principalaccount" && !account_.empty()) {
      account_storage_.assign(account_);
      return {&account_storage_, 1};
    }
    if (key.starts_with(kPrincipalTagPrefix)) {
      const std::string_view tag = key.substr(kPrincipalTagPrefix.size());
      for (const auto& [k, v] : p.tags) {
        if (detail::iequals(k, tag)) {
          return {&v, 1};
        }
      }
    }
    return {};
  }

  // A template's value for this request, or nullopt when a variable has no value and no
  // default. The view lives until the next resolve().
  std::optional<std::string_view> resolve(const Template& t) {
    if (!t.has_variables()) {
      return std::string_view(t.fixed);
    }
    scratch_.clear();
    for (const Segment& s : t.segments) {
      if (s.kind != Segment::Kind::kVariable) {
        detail::append_segment(scratch_, s, s.text, t.glob);
        continue;
      }
      const Values v = lookup(s.text);
      // A variable stands for one value; a missing or multivalued key takes the default.
      if (v.size == 1) {
        detail::append_segment(scratch_, s, *v.data, t.glob);
      } else if (s.has_default) {
        detail::append_segment(scratch_, s, s.fallback, t.glob);
      } else {
        return std::nullopt;
      }
    }
    return std::string_view(scratch_);
  }

  // How a Principal/NotPrincipal block names the caller: not at all, only through its account,
  // or as itself ("*", one of its ARNs, services or providers).
  enum class PrincipalMatch : std::uint8_t { kNone, kAccountOnly, kItself };

  PrincipalMatch principal_matches(const PrincipalSet& set) const {
    if (set.any) {
      return PrincipalMatch::kItself;
    }
    const Principal& p = r_.principal;
    for (const std::string& listed : set.arns) {
      for (const std::string& arn : p.arns) {
        if (detail::same_arn(listed, arn)) {
          return PrincipalMatch::kItself;
        }
      }
    }
    auto any_in = [](const std::vector<std::string>& listed, const std::vector<std::string>& have) {
      return std::any_of(listed.begin(), listed.end(), [&](const std::string& l) {
        return std::find(have.begin(), have.end(), l) != have.end();
      });
    };
    if (any_in(set.services, p.services) || any_in(set.federated, p.federated)) {
      return PrincipalMatch::kItself;
    }
    if (!account_.empty() &&
        std::find(set.accounts.begin(), set.accounts.end(), account_) != set.accounts.end()) {
      return PrincipalMatch::kAccountOnly;
    }
    return PrincipalMatch::kNone;
  }

  template <class T>
  static bool compare(Cmp cmp, T have, T want) {
    switch (cmp) {
      case Cmp::kEq:
        return have == want;
      case Cmp::kLt:
        return have < want;
      case Cmp::kLe:
        return have <= want;
      case Cmp::kGt:
        return have > want;
      case Cmp::kGe:
        return have >= want;
    }
    return false;
  }

  // Does the request value `have` match the policy value `want` (text `text`) under c's
  // operator, ignoring negation?
  static bool match_one(const Condition& c, const ConditionValue& want, std::string_view text,
                        std::string_view have) {
    const bool fixed = !want.value.has_variables();
    switch (c.kind) {
      case OpKind::kString:
      case OpKind::kBinary:
        return have == text;
      case OpKind::kStringIgnoreCase:
        return detail::iequals(have, text);
      case OpKind::kStringLike:
        return detail::glob_match(text, have, false);
      case OpKind::kArn:
        return detail::arn_match(text, have);
      case OpKind::kNumeric: {
        const auto h = detail::parse_number(have);
        const auto w = fixed ? std::optional<double>(want.number) : detail::parse_number(text);
        return h && w && compare(c.cmp, *h, *w);
      }
      case OpKind::kDate: {
        const auto h = detail::parse_date(have);
        const auto w = fixed ? std::optional<std::int64_t>(want.date_ms) : detail::parse_date(text);
        return h && w && compare(c.cmp, *h, *w);
      }
      case OpKind::kBool: {
        const auto h = detail::parse_bool(have);
        const auto w = fixed ? std::optional<bool>(want.boolean) : detail::parse_bool(text);
        return h && w && *h == *w;
      }
      case OpKind::kIp: {
        const auto h = detail::parse_cidr(have);
        const auto w = fixed ? std::optional<detail::Cidr>(want.cidr) : detail::parse_cidr(text);
        return h && w && detail::cidr_contains(*w, *h);
      }
      case OpKind::kNull:
        return false;  // handled in condition()
    }
    return false;
  }

  // Whether `have` matches any of the condition's values (values are ORed); nullopt when a
  // value's variable cannot be resolved.
  std::optional<bool> match_any(const Condition& c, std::string_view have) {
    for (const ConditionValue& v : c.values) {
      const std::optional<std::string_view> text = resolve(v.value);
      if (!text) {
        return std::nullopt;
      }
      if (match_one(c, v, *text, have)) {
        return true;
      }
    }
    return false;
  }

  // One (operator, key) condition; nullopt when a variable cannot be resolved.
  std::optional<bool> condition(const Condition& c) {
    const Values have = lookup(c.key);
    if (c.kind == OpKind::kNull) {
      // {"Null": {"k": "true"}}: k is absent; "false": k is present.
      return std::any_of(c.values.begin(), c.values.end(),
                         [&](const ConditionValue& v) { return v.boolean == have.empty(); });
    }
    if (have.empty()) {
      // IAM: a missing key fails a positive operator and satisfies a negated one; IfExists
      // makes it pass; ForAllValues is vacuously true and ForAnyValue false.
      if (c.if_exists || c.set == SetPrefix::kForAllValues) {
        return true;
      }
      return c.set == SetPrefix::kNone && c.negated;
    }
    // Each request value "satisfies" the operator when it matches some policy value (positive)
    // or none of them (negated).
    bool any = false;
    bool all = true;
    for (const std::string& h : have) {
      const std::optional<bool> m = match_any(c, h);
      if (!m) {
        return std::nullopt;
      }
      const bool satisfied = *m != c.negated;
      any = any || satisfied;
      all = all && satisfied;
    }
    switch (c.set) {
      case SetPrefix::kForAllValues:
        return all;
      case SetPrefix::kForAnyValue:
        return any;
      case SetPrefix::kNone:
        // A plain operator on a multivalued key: a positive one needs some value to match, a
        // negated one needs no value to match.
        return c.negated ? all : any;
    }
    return false;
  }

  const Request& r_;
  std::string_view account_;
  std::string account_storage_;
  std::string_view resource_;
  std::string normalized_resource_;
  std::string scratch_;
};

}  // namespace

Decision evaluate(const Request& request, std::span<const Policy* const> identity_policies,
                  const Policy* resource_policy) noexcept {
  try {
    Evaluator ev(request);
    Decision allow;
    bool allowed = false;
    auto scan = [&](const Policy& p, bool resource) -> std::optional<Decision> {
      const auto& statements = p.compiled().statements;
      for (std::size_t i = 0; i < statements.size(); ++i) {
        const Statement& s = statements[i];
        if (!ev.applies(s, resource)) {
          continue;
        }
        Decision d{s.deny ? Effect::kExplicitDeny : Effect::kAllow, &p, i, s.sid, resource};
        if (s.deny) {
          return d;  // an explicit deny anywhere wins; no need to look further
        }
        if (!allowed) {
          allow = d;
          allowed = true;
        }
      }
      return std::nullopt;
    };
    for (const Policy* p : identity_policies) {
      if (p != nullptr) {
        if (auto deny = scan(*p, false)) {
          return *deny;
        }
      }
    }
    if (resource_policy != nullptr) {
      if (auto deny = scan(*resource_policy, true)) {
        return *deny;
      }
    }
    return allowed ? allow : Decision{};
  } catch (...) {
    // Only std::bad_alloc can get here (resolving a variable); refuse rather than crash.
    return Decision{};
  }
}

}  // namespace gatehouse::policy
