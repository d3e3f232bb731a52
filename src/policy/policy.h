#pragma once
// gatehouse::policy — the IAM policy language: parse and validate policy documents into an
// immutable compiled form, and evaluate requests against identity and resource policies the way
// IAM does (explicit deny > allow > implicit deny). docs/policy.md describes the language subset,
// the evaluation order, Gatehouse's resource and principal names and the condition keys.
//
// Thread safety: a Policy is immutable once parsed and may be shared by any number of threads
// (evaluate() only reads it). Context and Request are plain values owned by the caller.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/core.h"

namespace gatehouse::policy {

// Bounds on untrusted documents. A document over any of them is refused.
inline constexpr std::size_t kMaxPolicyBytes = 20480;  // S3's bucket policy limit
inline constexpr std::size_t kMaxDepth = 8;            // JSON nesting; a valid policy needs 6
inline constexpr std::size_t kMaxStatements = 100;
inline constexpr std::size_t kMaxValues = 500;  // entries in one Action/Resource/... or value list
inline constexpr std::size_t kMaxConditions = 64;     // (operator, key) pairs in one statement
inline constexpr std::size_t kMaxStringBytes = 2048;  // one string (pattern, ARN, value)

// The account Gatehouse uses when none is configured.
inline constexpr std::string_view kDefaultAccount = "000000000000";

// What a document is for. Identity policies may not name a Principal; resource policies (bucket,
// function, workflow policies) must name one (Principal or NotPrincipal) in every statement.
enum class PolicyKind : std::uint8_t { kIdentity, kResource, kAny };

namespace detail {
struct CompiledPolicy;
}

// A parsed, validated policy. Move-only; immutable; thread-safe to share.
class Policy {
 public:
  explicit Policy(std::unique_ptr<const detail::CompiledPolicy> impl) noexcept;
  Policy(Policy&&) noexcept;
  Policy& operator=(Policy&&) noexcept;
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;
  ~Policy();

  // The id the caller gave parse_policy() (a file name, "bucket:uploads", ...).
  [[nodiscard]] const std::string& id() const noexcept;
  // "2012-10-17" or "2008-10-17" (the default when the document has no Version).
  [[nodiscard]] const std::string& version() const noexcept;
  [[nodiscard]] std::size_t statement_count() const noexcept;
  // The Sid of statement `index` ("" when it has none, or index is out of range).
  [[nodiscard]] std::string_view sid(std::size_t index) const noexcept;
  // Every condition key the document reads, lowercased, each once: the keys of its Condition
  // blocks and the ${key} variables of its Resource and Condition values. Lets a caller fill
  // only the context keys some policy can look at (the gateway's request headers).
  [[nodiscard]] std::vector<std::string> condition_keys() const;

  [[nodiscard]] const detail::CompiledPolicy& compiled() const noexcept { return *impl_; }

 private:
  std::unique_ptr<const detail::CompiledPolicy> impl_;
};

// Parses and validates `json` as a policy of the given kind. Never throws on bad input (only
// std::bad_alloc). Errors:
//   kPayloadTooLarge  the document is over kMaxPolicyBytes;
//   kBadRequest       not JSON, nested deeper than kMaxDepth, or an object repeats a key;
//   kInvalidArgument  not a valid policy (unknown key, wrong type, bad value, over a bound).
// Every message starts with the JSON path of the offending element, e.g.
// "Statement[1].Condition.StringEquals.aws:username: expected a string or an array of strings".
[[nodiscard]] core::Result<Policy> parse_policy(std::string_view json, std::string_view policy_id,
                                                PolicyKind kind = PolicyKind::kAny);

// Condition values of a request. Keys compare case-insensitively (as IAM's condition keys do);
// values are strings, several for a multivalued key. Not thread-safe for writes.
class Context {
 public:
  // Replaces the values of `key`.
  void set(std::string_view key, std::vector<std::string> values);
  void set(std::string_view key, std::string value);
  // Adds one more value to `key`.
  void add(std::string_view key, std::string value);
  // Sets `key` to the single value `value`, reusing the storage of an earlier value of the key:
  // allocation-free once the key was set before with a value at least as long. The request path
  // keeps one Context per thread and assigns into it.
  void assign(std::string_view key, std::string_view value);
  // Makes `key` absent (find() returns nullptr) while keeping its storage for the next assign().
  // No allocation.
  void clear(std::string_view key) noexcept;
  // Makes every key that starts with `prefix` (case-insensitively) absent, as clear() does.
  void clear_prefix(std::string_view prefix) noexcept;
  // Adds `value` to `key`: its only value when the key is absent, reusing storage as assign()
  // does; one more value otherwise.
  void append(std::string_view key, std::string_view value);
  // The values of `key`, or nullptr when the key is absent. Allocation-free.
  [[nodiscard]] const std::vector<std::string>* find(std::string_view key) const noexcept;

 private:
  struct Entry {
    std::string key;
    std::vector<std::string> values;
    bool present = true;
  };
  [[nodiscard]] Entry* entry(std::string_view key) noexcept;
  std::vector<Entry> entries_;
};

// Who is asking. An empty principal (no ARN, service or provider) is anonymous and matches only
// `"Principal": "*"` (or `{"AWS": "*"}`).
struct Principal {
  // The principal's ARNs: arns[0] is its own (aws:PrincipalArn), later ones are aliases it also
  // answers to, e.g. a role ARN then its assumed-role session ARN.
  std::vector<std::string> arns;
  std::vector<std::string> services;   // service principals, e.g. "states.amazonaws.com"
  std::vector<std::string> federated;  // identity providers, e.g. "cognito-identity.amazonaws.com"
  std::string account;                 // "" = the account field of arns[0]
  std::vector<std::pair<std::string, std::string>> tags;  // aws:PrincipalTag/<key>
};

struct Request {
  Principal principal;
  std::string action;    // "s3:GetObject"; matched case-insensitively
  std::string resource;  // an ARN; matched case-sensitively
  Context context;
  // This Gatehouse's account id: the <account> of its resource ARNs, aws:ResourceAccount.
  std::string account = std::string(kDefaultAccount);
};

enum class Effect : std::uint8_t { kAllow, kExplicitDeny, kImplicitDeny };

// Gatehouse's principal and resource names (docs/policy.md, "Names"). Each returns a new string.
//
// The anonymous caller. It has no account (so a Principal naming the account, or its :root,
// never matches it), but policies can name it in Principal.AWS and aws:PrincipalArn.
inline constexpr std::string_view kAnonymousArn = "arn:gatehouse:iam:::anonymous";
// arn:gatehouse:iam::<account>:role/<name>
[[nodiscard]] std::string role_arn(std::string_view account, std::string_view name);
// arn:gatehouse:iam::<account>:apikey/<key id> (the id, not the name: names are labels that
// several keys may share, ids are unique and survive rotation)
[[nodiscard]] std::string api_key_arn(std::string_view account, std::string_view key_id);
// arn:gatehouse:iam::<account>:user/<pool>/<name>, a user of a user pool
[[nodiscard]] std::string user_arn(std::string_view account, std::string_view pool,
                                   std::string_view name);
// arn:gatehouse:iam::<account>:admin (the holder of the admin token)
[[nodiscard]] std::string admin_arn(std::string_view account);
// arn:gatehouse:lambda:<region>:<account>:function:<name>
[[nodiscard]] std::string function_arn(std::string_view region, std::string_view account,
                                       std::string_view name);
// A policy allowing every action on every resource (id "gatehouse:allow-all"): the identity
// policy of principals that are unrestricted by default (the admin). Built once; shared.
[[nodiscard]] std::shared_ptr<const Policy> allow_all_policy();
// Sets aws:CurrentTime (ISO 8601 UTC, seconds) and aws:EpochTime (seconds) from `now`.
void set_time_keys(Context& context, std::chrono::system_clock::time_point now);

// The outcome and the statement that decided it. `policy` and `sid` borrow from the Policy that
// decided; they stay valid while that Policy lives.
struct Decision {
  Effect effect = Effect::kImplicitDeny;
  const Policy* policy = nullptr;  // null for an implicit deny
  std::size_t statement = 0;       // index in policy's Statement list
  std::string_view sid;
  bool resource_policy = false;  // decided by the resource policy (else an identity policy)

  [[nodiscard]] bool allowed() const noexcept { return effect == Effect::kAllow; }
  // One line: "allow: policy 'p' statement 'ReadOwn' (Statement[0])",
  // "explicit deny: resource policy 'b' statement Statement[2]", or
  // "implicit deny: no statement allowed".
  [[nodiscard]] std::string explain() const;
};

// Evaluates `request` as IAM does: any matching Deny wins; else any matching Allow (from an
// identity policy, or from the resource policy when its Principal matches) allows; else implicit
// deny. Null entries are skipped; resource_policy may be null. Never throws; allocates only to
// resolve policy variables (and returns an implicit deny if that allocation fails).
[[nodiscard]] Decision evaluate(const Request& request,
                                std::span<const Policy* const> identity_policies,
                                const Policy* resource_policy) noexcept;

}  // namespace gatehouse::policy
