#pragma once
// Private to the gateway: the built-in Authorizer, which decides with IAM policies (src/policy)
// whether a request's principal may call its route, and the admin API's policy check.
// docs/policy.md ("Wiring") is the contract: principals, actions, resource ARNs, condition keys.
//
// An AuthzTable is compiled once per config snapshot (the policies themselves were compiled at
// config load and are shared with the snapshot's Config); workers read it without locks. Deciding
// reuses one policy::Request per worker thread, so it allocates nothing once warm, and a route
// with no policy in play is decided before any of that is touched.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "gateway/gateway.h"
#include "policy/policy.h"

namespace gatehouse::gateway {

// The action a route request is evaluated under (API Gateway's, so its policies port).
inline constexpr std::string_view kRouteAction = "execute-api:Invoke";
// Condition keys "gatehouse:Header/<name>" carry the request header <name>.
inline constexpr std::string_view kHeaderKeyPrefix = "gatehouse:header/";

struct AuthzTable {
  std::string account;           // config account_id
  bool default_deny = false;     // authorization.default == deny
  std::string admin_arn;         // arn:gatehouse:iam::<account>:admin
  std::string admin_arn_prefix;  // arn:gatehouse:gatehouse:<region>:<account>:admin/
  struct Route {
    const policy::Policy* policy = nullptr;  // resource policy (in `owned`); null = none
    std::string arn_prefix;  // arn:gatehouse:execute-api:<region>:<account>:<route name>/
  };
  std::vector<Route> routes;  // by route index
  // Identity policies of the keys on each plan, by plan name (in `owned`).
  std::map<std::string, std::vector<const policy::Policy*>, std::less<>> plan_policies;
  // Identity policies of each role of `roles` that has some, by role ARN: those of a caller
  // whose principal is that role (SigV4 access keys issued to it).
  std::map<std::string, std::vector<const policy::Policy*>, std::less<>> role_policies;
  // The admin's identity policies: admin.policies, or empty = unrestricted (no evaluation).
  std::vector<const policy::Policy*> admin_policies;
  // Request headers some policy reads as gatehouse:Header/<name>: {condition key, header name
  // (lowercase)}. Only these headers are copied into the condition keys.
  std::vector<std::pair<std::string, std::string>> headers;
  // Shares ownership of the policies the raw pointers above point to.
  std::vector<config::PolicyPtr> owned;
};

// Compiles the authorization table of `config` (whose policies are already compiled). The
// table shares the compiled policies, so it may outlive `config`.
[[nodiscard]] std::shared_ptr<const AuthzTable> compile_authz(const config::Config& config);

// The lineage depth a request arrives with (x-gatehouse-lineage-depth, set by functions that
// call back into the gateway); 0 when absent or malformed. A client can only raise it.
[[nodiscard]] std::uint32_t incoming_depth(const http::Request& req) noexcept;

// Fills the condition keys the gateway knows about the request in `ctx` (docs/policy.md,
// "Condition keys"); keys it does not know for this request are cleared, so one Context can be
// reused. Allocation-free once `out` is warm.
void fill_context(const RequestContext& ctx, policy::Context& out);

// The route's decision, when the route has a resource policy or the caller identity policies
// (else authorization.default decides). Explicit and implicit denies refuse with 403
// AccessDenied, whose message names the deciding policy id and statement (never its content).
class PolicyAuthorizer final : public Authorizer {
 public:
  Verdict authorize(RequestContext& ctx, Refusal& out) override;
};

// The admin API's decision for `action` (gatehouse:ListKeys, ...) on the admin resource
// <admin_arn_prefix><resource> by ctx.principal. Always allowed when admin.policies is empty.
[[nodiscard]] Verdict authorize_admin(RequestContext& ctx, std::string_view action,
                                      std::string_view resource, Refusal& out);

}  // namespace gatehouse::gateway
