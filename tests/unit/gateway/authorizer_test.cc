// The built-in Authorizer: the table compiled from a config, the condition keys it fills, its
// decisions on routes and admin actions, and that deciding allocates nothing once warm.
#include "gateway/authorizer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "alloc_counter.h"
#include "auth/auth.h"
#include "config/config.h"

using gatehouse::testing::start_counting;
using gatehouse::testing::stop_counting;

namespace gatehouse::gateway {
namespace {

constexpr std::string_view kKeyA = "arn:gatehouse:iam::123456789012:apikey/aaaaaaaaaaaaaaaa";

constexpr std::string_view kYaml = R"(
account_id: "123456789012"
region: eu-west-3
policies:
  - name: reader
    document:
      Version: "2012-10-17"
      Statement:
        - {Sid: ReadOrders, Effect: Allow, Action: "execute-api:Invoke",
           Resource: "arn:gatehouse:execute-api:eu-west-3:123456789012:orders/*/GET/*"}
        - {Sid: NoAdminPaths, Effect: Deny, Action: "execute-api:*",
           Resource: "arn:gatehouse:execute-api:*:*:*/*/*/admin/*"}
  - name: ops-only
    document:
      Statement:
        - {Effect: Allow, Action: "gatehouse:List*", Resource: "*"}
        - {Sid: NoReload, Effect: Deny, Action: "gatehouse:Reload", Resource: "*"}
  - name: by-header
    document:
      Statement:
        - {Effect: Allow, Principal: "*", Action: "execute-api:Invoke", Resource: "*",
           Condition: {StringEquals: {"gatehouse:Header/X-Tenant": "acme"}}}
plans:
  - {name: gold, policies: [reader]}
  - {name: free}
admin: {policies: [ops-only]}
functions:
  - name: f
    runtime: exec
    command: [/bin/cat]
    policy:
      Statement:
        - {Effect: Allow, Principal: "*", Action: "lambda:InvokeFunction", Resource: "*",
           Condition: {StringLike: {"gatehouse:header/x-trace": "*"}}}
routes:
  - name: open
    method: GET
    path: /open
    target: {static: {}}
  - name: keys
    method: [GET, POST]
    path: /keys/{proxy+}
    policy:
      Version: "2012-10-17"
      Statement:
        - {Sid: KeyA, Effect: Allow, Principal: {AWS: "arn:aws:iam::123456789012:apikey/aaaaaaaaaaaaaaaa"},
           Action: "execute-api:Invoke", Resource: "*"}
        - {Sid: NotKeyB, Effect: Deny, Principal: {AWS: "arn:gatehouse:iam::123456789012:apikey/bbbbbbbbbbbbbbbb"},
           Action: "*", Resource: "*"}
        - {Sid: Loopback, Effect: Allow, Principal: "*", Action: "execute-api:Invoke",
           Resource: "*", Condition: {IpAddress: {"aws:SourceIp": "127.0.0.0/8"}}}
    target: {static: {}}
  - {name: orders, method: GET, path: "/orders/{proxy+}", target: {static: {}}}
  - {name: tenants, method: GET, path: /t, policy: by-header, target: {static: {}}}
)";

config::Config load(std::string_view yaml) {
  auto c = config::load_string(yaml, "test.yaml");
  EXPECT_TRUE(c.has_value());
  return c ? std::move(*c) : config::Config{};
}

// One request's worth of gateway state, as the pipeline sets it before authorize.
struct Call {
  std::vector<http::Header> headers;
  http::Request req;
  auth::ApiKey key;
  RequestContext ctx;
  std::string arn;

  Call(const AuthzTable& t, std::uint32_t route, std::string_view route_name,
       std::string_view method, std::string_view path) {
    req.method = method;
    req.path = path;
    ctx.request = &req;
    ctx.authz = &t;
    ctx.route_index = route;
    ctx.route_name = route_name;
    ctx.match.route = route;
    ctx.remote_ip = "10.1.2.3";
  }
  void with_key(std::string_view id, std::string_view plan) {
    key.id = std::string(id);
    key.name = "client-" + key.id.substr(0, 1);
    key.plan = std::string(plan);
    arn = policy::api_key_arn("123456789012", id);
    ctx.api_key = &key;
    ctx.principal = Principal{"api_key", arn};
  }
  void header(std::string_view name, std::string_view value) {
    headers.push_back(http::Header{name, value});
    req.headers = headers;
  }
  Verdict authorize(Refusal& out) {
    PolicyAuthorizer a;
    return a.authorize(ctx, out);
  }
};

TEST(AuthzTable, CompilesRoutesPlansAdminAndHeaders) {
  const config::Config c = load(kYaml);
  const auto t = compile_authz(c);
  EXPECT_EQ(t->account, "123456789012");
  EXPECT_FALSE(t->default_deny);
  EXPECT_EQ(t->admin_arn, "arn:gatehouse:iam::123456789012:admin");
  EXPECT_EQ(t->admin_arn_prefix, "arn:gatehouse:gatehouse:eu-west-3:123456789012:admin/");
  ASSERT_EQ(t->routes.size(), 4U);
  EXPECT_EQ(t->routes[0].policy, nullptr);
  EXPECT_EQ(t->routes[1].policy, c.routes[1].policy.compiled.get());
  EXPECT_EQ(t->routes[1].arn_prefix, "arn:gatehouse:execute-api:eu-west-3:123456789012:keys/");
  // Only plans with policies are in the map.
  ASSERT_EQ(t->plan_policies.size(), 1U);
  ASSERT_EQ(t->plan_policies.at("gold").size(), 1U);
  EXPECT_EQ(t->plan_policies.at("gold")[0]->id(), "reader");
  ASSERT_EQ(t->admin_policies.size(), 1U);
  // Header keys from a route's named policy and a function's inline one, lowercased, each once.
  std::vector<std::string> headers;
  for (const auto& [key, name] : t->headers) {
    headers.push_back(key + "=" + name);
  }
  EXPECT_EQ(headers, (std::vector<std::string>{"gatehouse:header/x-tenant=x-tenant",
                                               "gatehouse:header/x-trace=x-trace"}));
}

TEST(AuthzTable, DefaultDenyComesFromTheConfig) {
  const auto t = compile_authz(load("authorization: {default: deny}\n"));
  EXPECT_TRUE(t->default_deny);
  EXPECT_TRUE(t->routes.empty());
  EXPECT_TRUE(t->admin_policies.empty());
}

TEST(FillContext, KeysForAKeyThenClearedForAnAnonymousCall) {
  const config::Config c = load(kYaml);
  const auto t = compile_authz(c);
  Call call(*t, 3, "tenants", "GET", "/t");
  call.with_key("aaaaaaaaaaaaaaaa", "gold");
  call.header("X-Tenant", "acme");
  call.header("x-gatehouse-lineage-depth", "4");
  policy::Context ctx;
  fill_context(call.ctx, ctx);
  auto one = [&](std::string_view key) {
    const auto* v = ctx.find(key);
    return v == nullptr || v->empty() ? std::string("<absent>") : v->front();
  };
  EXPECT_EQ(one("aws:SourceIp"), "10.1.2.3");
  EXPECT_EQ(one("aws:username"), "client-a");
  EXPECT_EQ(one("aws:userid"), "aaaaaaaaaaaaaaaa");
  EXPECT_EQ(one("aws:PrincipalType"), "ApiKey");
  EXPECT_EQ(one("aws:SecureTransport"), "false");
  EXPECT_EQ(one("gatehouse:Route"), "tenants");
  EXPECT_EQ(one("gatehouse:Stage"), "$default");
  EXPECT_EQ(one("gatehouse:Method"), "GET");
  EXPECT_EQ(one("gatehouse:SourceKind"), "route");
  EXPECT_EQ(one("gatehouse:LineageDepth"), "5");
  EXPECT_EQ(one("gatehouse:Header/x-tenant"), "acme");
  EXPECT_EQ(one("gatehouse:header/x-trace"), "<absent>");
  EXPECT_EQ(one("aws:EpochTime").size(), 10U);
  EXPECT_EQ(one("aws:CurrentTime").back(), 'Z');

  // The same Context reused for an anonymous request with no headers: nothing leaks over.
  Call anon(*t, 0, "open", "GET", "/open");
  anon.ctx.remote_ip = {};
  fill_context(anon.ctx, ctx);
  EXPECT_EQ(one("aws:username"), "<absent>");
  EXPECT_EQ(one("aws:userid"), "<absent>");
  EXPECT_EQ(one("aws:SourceIp"), "<absent>");
  EXPECT_EQ(one("aws:PrincipalType"), "Anonymous");
  EXPECT_EQ(one("gatehouse:Header/x-tenant"), "<absent>");
  EXPECT_EQ(one("gatehouse:LineageDepth"), "1");
  // Before a route matched (admin endpoints), no route or stage.
  anon.ctx.route_name = {};
  fill_context(anon.ctx, ctx);
  EXPECT_EQ(one("gatehouse:Route"), "<absent>");
  EXPECT_EQ(one("gatehouse:Stage"), "<absent>");
}

TEST(PolicyAuthorizer, NoPolicyFollowsTheDefault) {
  const auto allow = compile_authz(load(kYaml));
  Refusal r;
  Call open(*allow, 0, "open", "GET", "/open");
  EXPECT_EQ(open.authorize(r), Verdict::kContinue);
  open.with_key("cccccccccccccccc", "free");  // a plan without policies
  EXPECT_EQ(open.authorize(r), Verdict::kContinue);

  std::string yaml(kYaml);
  yaml += "authorization: {default: deny}\n";
  const auto deny = compile_authz(load(yaml));
  Call closed(*deny, 0, "open", "GET", "/open");
  ASSERT_EQ(closed.authorize(r), Verdict::kRefuse);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.code, "AccessDenied");
  EXPECT_EQ(r.message, "no policy applies to this route and authorization.default is deny");
}

// "allow", or the refusal message, for a GET of `path` on route `route` by the key `key_id` on
// `plan` ("" = anonymous) from `ip`.
std::string decide(const AuthzTable& t, std::uint32_t route, std::string_view name,
                   std::string_view path, std::string_view key_id, std::string_view plan,
                   std::string_view ip = "10.1.2.3", std::string_view stage = "") {
  Call call(t, route, name, "GET", path);
  if (!key_id.empty()) {
    call.with_key(key_id, plan);
  }
  call.ctx.remote_ip = ip;
  call.ctx.match.stage = stage;
  Refusal r;
  if (call.authorize(r) == Verdict::kContinue) {
    return "allow";
  }
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.code, "AccessDenied");
  return std::string(r.message);
}

constexpr std::string_view kNoAllow = "no policy statement allows this request";

TEST(PolicyAuthorizer, ResourcePolicyAllowsOneKeyDeniesAnotherAndNamesTheStatement) {
  const auto t = compile_authz(load(kYaml));
  EXPECT_EQ(decide(*t, 1, "keys", "/keys/x", "aaaaaaaaaaaaaaaa", "free"), "allow");
  // From loopback the Loopback statement allows too: the Deny still wins.
  EXPECT_EQ(decide(*t, 1, "keys", "/keys/x", "bbbbbbbbbbbbbbbb", "free", "127.0.0.1"),
            "explicitly denied by resource policy 'route:keys' statement 'NotKeyB'");
  EXPECT_EQ(decide(*t, 1, "keys", "/keys/x", "cccccccccccccccc", "free"), kNoAllow);
  // The same caller from loopback: the aws:SourceIp condition allows.
  EXPECT_EQ(decide(*t, 1, "keys", "/keys/x", "cccccccccccccccc", "free", "127.0.0.9"), "allow");
  // Anonymous callers match only "*" statements.
  EXPECT_EQ(decide(*t, 1, "keys", "/keys/x", "", ""), kNoAllow);
  EXPECT_EQ(decide(*t, 1, "keys", "/keys/x", "", "", "127.0.0.1"), "allow");
}

TEST(PolicyAuthorizer, PlanIdentityPoliciesAndTheExecuteApiArn) {
  const auto t = compile_authz(load(kYaml));
  constexpr std::string_view kA = "aaaaaaaaaaaaaaaa";
  // gold's identity policy allows GET on orders (resource <route>/<stage>/<METHOD>/<path>) ...
  EXPECT_EQ(decide(*t, 2, "orders", "/orders/42", kA, "gold"), "allow");
  // ... but not another route: a plan with policies limits its keys to what they allow.
  EXPECT_EQ(decide(*t, 0, "open", "/open", kA, "gold"), kNoAllow);
  EXPECT_EQ(decide(*t, 2, "orders", "/orders/admin/x", kA, "gold"),
            "explicitly denied by policy 'reader' statement 'NoAdminPaths'");
  // With stages, the stage is the ARN's second component, not part of the path.
  EXPECT_EQ(decide(*t, 2, "orders", "/prod/orders/1", kA, "gold", "10.1.2.3", "prod"), "allow");
}

// A role caller (a SigV4 access key issued to the role): its roles[].policies are its identity
// policies, and route policies see its role ARN.
TEST(PolicyAuthorizer, RoleIdentityPoliciesApplyToRoleCallers) {
  const std::string yaml =
      std::string(kYaml) + "roles:\n  - {name: clerk, policies: [reader]}\n  - {name: plain}\n";
  const auto t = compile_authz(load(yaml));
  const std::string clerk = policy::role_arn("123456789012", "clerk");
  const std::string plain = policy::role_arn("123456789012", "plain");
  ASSERT_EQ(t->role_policies.size(), 1u);  // only roles with policies
  EXPECT_TRUE(t->role_policies.contains(clerk));
  auto as_role = [&](std::uint32_t route, std::string_view name, std::string_view path,
                     const std::string& arn) {
    Call call(*t, route, name, "GET", path);
    call.ctx.principal = Principal{"role", arn};
    Refusal out;
    return call.authorize(out) == Verdict::kContinue ? std::string("allow")
                                                     : std::string(out.message);
  };
  EXPECT_EQ(as_role(2, "orders", "/orders/42", clerk), "allow");
  EXPECT_EQ(as_role(0, "open", "/open", clerk), kNoAllow);
  EXPECT_EQ(as_role(2, "orders", "/orders/admin/1", clerk),
            "explicitly denied by policy 'reader' statement 'NoAdminPaths'");
  // A role without policies is decided like any caller with none.
  EXPECT_EQ(as_role(0, "open", "/open", plain), "allow");
  EXPECT_EQ(as_role(1, "keys", "/keys/x", plain), kNoAllow);
}

TEST(PolicyAuthorizer, HeaderConditions) {
  const auto t = compile_authz(load(kYaml));
  Refusal r;
  Call acme(*t, 3, "tenants", "GET", "/t");
  acme.header("x-tenant", "acme");
  EXPECT_EQ(acme.authorize(r), Verdict::kContinue);
  Call other(*t, 3, "tenants", "GET", "/t");
  other.header("X-Tenant", "other");
  EXPECT_EQ(other.authorize(r), Verdict::kRefuse);
  Call none(*t, 3, "tenants", "GET", "/t");
  EXPECT_EQ(none.authorize(r), Verdict::kRefuse);
}

TEST(AuthorizeAdmin, UnrestrictedWithoutPoliciesElseDecidedByThem) {
  const auto open = compile_authz(load("admin: {token_sha256: \"\"}\n"));
  Call call(*open, 0, "", "POST", "/admin/reload");
  call.ctx.principal = Principal{"admin", open->admin_arn};
  Refusal r;
  EXPECT_EQ(authorize_admin(call.ctx, "gatehouse:Reload", "reload", r), Verdict::kContinue);

  const auto t = compile_authz(load(kYaml));
  call.ctx.authz = t.get();
  call.ctx.principal = Principal{"admin", t->admin_arn};
  EXPECT_EQ(authorize_admin(call.ctx, "gatehouse:ListKeys", "keys", r), Verdict::kContinue);
  ASSERT_EQ(authorize_admin(call.ctx, "gatehouse:Reload", "reload", r), Verdict::kRefuse);
  EXPECT_EQ(r.message, "explicitly denied by policy 'ops-only' statement 'NoReload'");
  ASSERT_EQ(authorize_admin(call.ctx, "gatehouse:CreateKey", "keys", r), Verdict::kRefuse);
  EXPECT_EQ(r.message, "no policy statement allows this request");
}

TEST(PolicyAuthorizer, DecidingAllocatesNothingOnceWarm) {
  const auto t = compile_authz(load(kYaml));
  Call allowed(*t, 1, "keys", "GET", "/keys/some/long/path/that/is/not/short");
  allowed.with_key("aaaaaaaaaaaaaaaa", "gold");
  Call denied(*t, 1, "keys", "GET", "/keys/x");
  denied.with_key("bbbbbbbbbbbbbbbb", "gold");
  Call header(*t, 3, "tenants", "GET", "/t");
  header.header("x-tenant", "acme");
  Call no_policy(*t, 0, "open", "GET", "/open");
  Refusal r;
  int refused = 0;
  auto round = [&] {
    refused += allowed.authorize(r) == Verdict::kRefuse ? 1 : 0;
    refused += denied.authorize(r) == Verdict::kRefuse ? 1 : 0;
    refused += header.authorize(r) == Verdict::kRefuse ? 1 : 0;
    refused += no_policy.authorize(r) == Verdict::kRefuse ? 1 : 0;
  };
  round();  // warm: the per-thread request, context and message reach their sizes
  refused = 0;
  start_counting();
  for (int i = 0; i < 1000; ++i) {
    round();
  }
  const std::uint64_t allocs = stop_counting();
  EXPECT_EQ(refused, 1000);
  EXPECT_EQ(allocs, 0U) << "heap allocations while deciding";
}

}  // namespace
}  // namespace gatehouse::gateway
