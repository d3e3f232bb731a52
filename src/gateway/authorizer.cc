#include "gateway/authorizer.h"

#include <algorithm>
#include <chrono>

#include "auth/auth.h"

namespace gatehouse::gateway {

namespace {

constexpr std::string_view kDefaultStage = "$default";

// Records the request headers `p` reads as gatehouse:Header/<name>.
void collect_headers(const policy::Policy* p, AuthzTable& t) {
  if (p == nullptr) {
    return;
  }
  for (const std::string& key : p->condition_keys()) {  // lowercased by the policy parser
    if (!key.starts_with(kHeaderKeyPrefix) || key.size() == kHeaderKeyPrefix.size()) {
      continue;
    }
    const bool known = std::any_of(t.headers.begin(), t.headers.end(),
                                   [&](const auto& h) { return h.first == key; });
    if (!known) {
      t.headers.emplace_back(key, key.substr(kHeaderKeyPrefix.size()));
    }
  }
}

// aws:CurrentTime and aws:EpochTime for this second, formatted once per second per thread.
struct TimeKeys {
  std::int64_t second = -1;
  policy::Context keys;
};

const policy::Context& time_keys() {
  thread_local TimeKeys t;
  const auto now = std::chrono::system_clock::now();
  const std::int64_t s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  if (s != t.second) {
    policy::set_time_keys(t.keys, now);
    t.second = s;
  }
  return t.keys;
}

void set_or_clear(policy::Context& c, std::string_view key, std::string_view value) {
  if (value.empty()) {
    c.clear(key);
  } else {
    c.assign(key, value);
  }
}

// Appends "policy 'ID' statement 'SID'" (or "Statement[N]" without a Sid) for a decision.
void describe(const policy::Decision& d, std::string& out) {
  out += d.resource_policy ? "resource policy '" : "policy '";
  out += d.policy->id();
  out += "' statement ";
  if (d.sid.empty()) {
    char num[20];
    out += "Statement[";
    out.append(num, core::format_uint(num, d.statement));
    out += "]";
  } else {
    out += "'";
    out += d.sid;
    out += "'";
  }
}

// The refusal for a denied decision. The message lives in a per-thread buffer: the pipeline
// writes the refusal before this thread decides another request.
Verdict deny(const policy::Decision& d, bool evaluated, Refusal& out) {
  thread_local std::string message;
  message.clear();
  if (d.effect == policy::Effect::kExplicitDeny && d.policy != nullptr) {
    message += "explicitly denied by ";
    describe(d, message);
  } else if (evaluated) {
    message += "no policy statement allows this request";
  } else {
    message += "no policy applies to this route and authorization.default is deny";
  }
  out = Refusal{403, "AccessDenied", message, {}};
  return Verdict::kRefuse;
}

// The principal of the per-thread request: the ARN of ctx.principal and its tags.
void set_principal(const RequestContext& ctx, policy::Request& r) {
  r.principal.arns.resize(1);
  r.principal.arns[0].assign(ctx.principal.id);
  if (ctx.api_key != nullptr) {
    r.principal.tags.resize(1);
    r.principal.tags[0].first.assign("plan");
    r.principal.tags[0].second.assign(ctx.api_key->plan);
  } else {
    r.principal.tags.clear();
  }
}

std::string_view principal_type(std::string_view kind) {
  if (kind == "api_key") {
    return "ApiKey";
  }
  if (kind == "admin") {
    return "Admin";
  }
  if (kind == "role") {
    return "Role";
  }
  if (kind == "user") {
    return "User";
  }
  return "Anonymous";
}

}  // namespace

std::shared_ptr<const AuthzTable> compile_authz(const config::Config& c) {
  auto t = std::make_shared<AuthzTable>();
  t->account = c.account_id;
  t->default_deny = c.authorization.default_deny;
  t->admin_arn = policy::admin_arn(c.account_id);
  t->admin_arn_prefix = "arn:gatehouse:gatehouse:" + c.region + ":" + c.account_id + ":admin/";
  for (const config::Route& r : c.routes) {
    t->owned.push_back(r.policy.compiled);
    t->routes.push_back(AuthzTable::Route{
        r.policy.compiled.get(),
        "arn:gatehouse:execute-api:" + c.region + ":" + c.account_id + ":" + r.name + "/"});
    collect_headers(r.policy.compiled.get(), *t);
  }
  for (const config::Plan& p : c.plans) {
    if (p.compiled.empty()) {
      continue;
    }
    auto& list = t->plan_policies[p.name];
    for (const auto& pol : p.compiled) {
      list.push_back(pol.get());
      t->owned.push_back(pol);
    }
  }
  for (const config::Role& role : c.roles) {
    if (role.compiled.empty()) {
      continue;
    }
    auto& list = t->role_policies[policy::role_arn(c.account_id, role.name)];
    for (const auto& pol : role.compiled) {
      list.push_back(pol.get());
      t->owned.push_back(pol);
    }
  }
  for (const auto& pol : c.admin.compiled) {
    t->admin_policies.push_back(pol.get());
    t->owned.push_back(pol);
  }
  // Function policies see the same keys (the route's caller context carries them), and named
  // policies cover plans, roles and the admin.
  for (const config::FunctionConfig& f : c.functions) {
    collect_headers(f.policy.compiled.get(), *t);
  }
  for (const config::NamedPolicy& p : c.policies) {
    collect_headers(p.compiled.get(), *t);
  }
  return t;
}

std::uint32_t incoming_depth(const http::Request& req) noexcept {
  const std::string_view v = req.header("x-gatehouse-lineage-depth");
  if (v.empty() || v.size() > 6) {
    return 0;
  }
  std::uint32_t n = 0;
  for (char ch : v) {
    if (ch < '0' || ch > '9') {
      return 0;
    }
    n = n * 10 + static_cast<std::uint32_t>(ch - '0');
  }
  return n;
}

namespace {
// A JWT route's verified claims (docs/identity.md, "Principal and claims"): jwt:<claim> for
// every claim, and for user pool tokens cognito-identity.amazonaws.com:sub and :aud, aws:userid
// and aws:username (<pool>/<username>). Keys of an earlier request's claims are made absent.
void fill_claims(const RequestContext& ctx, policy::Context& out) {
  constexpr std::string_view kJwt = "jwt:";
  constexpr std::string_view kCognito = "cognito-identity.amazonaws.com:";
  out.clear_prefix(kJwt);
  out.clear_prefix(kCognito);
  if (ctx.principal.kind != "user") {
    return;
  }
  thread_local std::string key;
  std::string_view sub;
  std::string_view aud;
  std::string_view username;
  for (const auto& [name, value] : ctx.claims) {
    key.assign(kJwt);
    key.append(name);
    out.append(key, value);
    if (name == "sub") {
      sub = value;
    } else if (name == "client_id" || (name == "aud" && aud.empty())) {
      aud = value;  // an access token's client_id, an ID token's aud
    } else if (name == "username" || (name == "cognito:username" && username.empty())) {
      username = value;
    }
  }
  set_or_clear(out, "aws:userid", sub);
  if (ctx.user_pool.empty()) {
    out.clear("aws:username");
    return;
  }
  key.assign(kCognito);
  key.append("sub");
  set_or_clear(out, key, sub);
  key.assign(kCognito);
  key.append("aud");
  set_or_clear(out, key, aud);
  if (username.empty()) {
    out.clear("aws:username");
  } else {
    key.assign(ctx.user_pool);
    key.push_back('/');
    key.append(username);
    out.assign("aws:username", key);
  }
}
}  // namespace

void fill_context(const RequestContext& ctx, policy::Context& out) {
  const policy::Context& now = time_keys();
  for (std::string_view key : {"aws:CurrentTime", "aws:EpochTime"}) {
    out.assign(key, now.find(key)->front());  // set_time_keys sets both
  }
  set_or_clear(out, "aws:SourceIp", ctx.remote_ip);
  out.assign("aws:SecureTransport", "false");  // no TLS listener yet
  const auth::ApiKey* key = ctx.api_key;
  set_or_clear(out, "aws:username", key != nullptr ? std::string_view(key->name) : "");
  set_or_clear(out, "aws:userid", key != nullptr ? std::string_view(key->id) : "");
  fill_claims(ctx, out);
  out.assign("aws:PrincipalType", principal_type(ctx.principal.kind));
  out.assign("gatehouse:SourceKind", "route");
  // ctx.match is only meaningful once a route matched (builtins leave the previous one there);
  // the route's name is set with the route, and cleared for every request.
  const bool routed = !ctx.route_name.empty();
  set_or_clear(out, "gatehouse:Route", routed ? ctx.route_name : std::string_view());
  if (routed) {
    out.assign("gatehouse:Stage", ctx.match.stage.empty() ? kDefaultStage : ctx.match.stage);
  } else {
    out.clear("gatehouse:Stage");
  }
  if (ctx.request != nullptr) {
    out.assign("gatehouse:Method", ctx.request->method);
    char num[20];
    const std::uint64_t depth = std::uint64_t{incoming_depth(*ctx.request)} + 1;
    out.assign("gatehouse:LineageDepth", std::string_view(num, core::format_uint(num, depth)));
  }
  if (ctx.authz != nullptr) {
    for (const auto& [k, header] : ctx.authz->headers) {
      set_or_clear(out, k, ctx.request != nullptr ? ctx.request->header(header) : "");
    }
  }
}

Verdict PolicyAuthorizer::authorize(RequestContext& ctx, Refusal& out) {
  const AuthzTable* t = ctx.authz;
  if (t == nullptr || ctx.route_index >= t->routes.size()) {
    return Verdict::kContinue;
  }
  const AuthzTable::Route& route = t->routes[ctx.route_index];
  std::span<const policy::Policy* const> identity;
  if (ctx.api_key != nullptr && !t->plan_policies.empty()) {
    if (const auto it = t->plan_policies.find(ctx.api_key->plan); it != t->plan_policies.end()) {
      identity = it->second;
    }
  } else if (ctx.principal.kind == "role" && !t->role_policies.empty()) {
    if (const auto it = t->role_policies.find(ctx.principal.id); it != t->role_policies.end()) {
      identity = it->second;
    }
  }
  if (route.policy == nullptr && identity.empty()) {
    // No policy in play: authorization.default decides, at the cost of one branch.
    return t->default_deny ? deny(policy::Decision{}, false, out) : Verdict::kContinue;
  }
  thread_local policy::Request r;
  set_principal(ctx, r);
  r.action.assign(kRouteAction);
  // <route name>/<stage>/<METHOD>/<path without the stage and its leading '/'>, as API Gateway's
  // execute-api ARNs read.
  std::string_view path = ctx.request->path;
  if (!ctx.match.stage.empty()) {
    path.remove_prefix(std::min(path.size(), ctx.match.stage.size() + 1));
  }
  if (!path.empty() && path.front() == '/') {
    path.remove_prefix(1);
  }
  r.resource.assign(route.arn_prefix);
  r.resource.append(ctx.match.stage.empty() ? kDefaultStage : ctx.match.stage);
  r.resource.push_back('/');
  r.resource.append(ctx.request->method);
  r.resource.push_back('/');
  r.resource.append(path);
  r.account.assign(t->account);
  fill_context(ctx, r.context);
  const policy::Decision d = policy::evaluate(r, identity, route.policy);
  return d.allowed() ? Verdict::kContinue : deny(d, true, out);
}

Verdict authorize_admin(RequestContext& ctx, std::string_view action, std::string_view resource,
                        Refusal& out) {
  const AuthzTable* t = ctx.authz;
  if (t == nullptr || t->admin_policies.empty()) {
    return Verdict::kContinue;  // the admin token allows everything unless admin.policies says
  }
  thread_local policy::Request r;
  set_principal(ctx, r);
  r.action.assign(action);
  r.resource.assign(t->admin_arn_prefix);
  r.resource.append(resource);
  r.account.assign(t->account);
  fill_context(ctx, r.context);
  r.context.assign("gatehouse:SourceKind", "direct");
  const policy::Decision d = policy::evaluate(r, t->admin_policies, nullptr);
  return d.allowed() ? Verdict::kContinue : deny(d, true, out);
}

}  // namespace gatehouse::gateway
