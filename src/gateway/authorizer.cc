#include "gateway/authorizer.h"

#include <algorithm>
#include <chrono>
#include <ctime>

#include "auth/auth.h"

namespace gatehouse::gateway {

namespace {

constexpr std::string_view kHeaderKey = "gatehouse:header/";
constexpr std::string_view kDefaultStage = "$default";

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool is_token_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_' || c == '.' || c == '!' || c == '#' || c == '&' || c == '\'' ||
         c == '+' || c == '^' || c == '`' || c == '|' || c == '~';
}

// Case-insensitive search of `needle` (lower-case) in `hay` from `from`.
std::size_t ifind(std::string_view hay, std::string_view needle, std::size_t from) {
  for (std::size_t i = from; i + needle.size() <= hay.size(); ++i) {
    std::size_t k = 0;
    while (k < needle.size() && lower(hay[i + k]) == needle[k]) {
      ++k;
    }
    if (k == needle.size()) {
      return i;
    }
  }
  return std::string_view::npos;
}

// Collects the header names a document refers to (in conditions or in ${...} variables) and
// whether it names execute-api. A textual scan of the JSON over-approximates (a Sid that
// mentions a key adds it), which only costs one header lookup per request.
void scan_document(std::string_view json, AuthzTable& t) {
  for (std::size_t at = ifind(json, kHeaderKey, 0); at != std::string_view::npos;
       at = ifind(json, kHeaderKey, at + 1)) {
    std::size_t end = at + kHeaderKey.size();
    std::string name;
    while (end < json.size() && is_token_char(json[end])) {
      name += lower(json[end++]);
    }
    const bool known = std::any_of(t.headers.begin(), t.headers.end(),
                                   [&](const auto& h) { return h.second == name; });
    if (!name.empty() && !known) {
      t.headers.emplace_back("gatehouse:Header/" + name, name);
    }
  }
  if (ifind(json, "execute-api", 0) != std::string_view::npos) {
    t.execute_api_alias = true;
  }
}

// aws:CurrentTime and aws:EpochTime for this second, formatted once per second per thread.
struct TimeKeys {
  std::int64_t second = -1;
  std::string iso;
  std::string epoch;
};

const TimeKeys& time_keys() {
  thread_local TimeKeys keys;
  const auto now = std::chrono::system_clock::now();
  const std::int64_t s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  if (s != keys.second) {
    policy::Context scratch;
    policy::set_time_keys(scratch, now);
    keys.iso = scratch.find("aws:CurrentTime")->front();
    keys.epoch = scratch.find("aws:EpochTime")->front();
    keys.second = s;
  }
  return keys;
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

// The refusal for a denied decision; the message lives in a per-thread buffer (the pipeline
// writes it before the next request on this thread).
Verdict deny(const policy::Decision& d, Refusal& out) {
  thread_local std::string message;
  message.clear();
  if (d.effect == policy::Effect::kExplicitDeny && d.policy != nullptr) {
    message += "explicitly denied by ";
    describe(d, message);
  } else {
    message += "no policy allows this request";
  }
  out = Refusal{403, "AccessDenied", message, {}};
  return Verdict::kRefuse;
}

// The principal part of the per-thread request: ARN and tags of ctx.principal.
void set_principal(const RequestContext& ctx, policy::Request& r) {
  if (ctx.principal.id.empty()) {
    r.principal.arns.clear();
  } else {
    r.principal.arns.resize(1);
    r.principal.arns[0].assign(ctx.principal.id);
  }
  if (ctx.api_key != nullptr) {
    r.principal.tags.resize(1);
    r.principal.tags[0].first.assign("plan");
    r.principal.tags[0].second.assign(ctx.api_key->plan);
  } else {
    r.principal.tags.clear();
  }
}

}  // namespace

std::shared_ptr<const AuthzTable> compile_authz(const config::Config& c) {
  auto t = std::make_shared<AuthzTable>();
  t->account = c.account_id;
  t->default_deny = c.authorization.default_deny;
  t->admin_arn = policy::admin_arn(c.account_id);
  t->admin_arn_prefix = "arn:gatehouse:gatehouse:" + c.region + ":" + c.account_id + ":admin/";
  for (const config::Route& r : c.routes) {
    t->routes.push_back(AuthzTable::Route{
        r.policy.compiled.get(),
        "arn:gatehouse:execute-api:" + c.region + ":" + c.account_id + ":" + r.name + "/"});
    scan_document(r.policy.json, *t);
  }
  for (const config::Plan& p : c.plans) {
    auto& list = t->plan_policies[p.name];
    for (const auto& pol : p.compiled) {
      list.push_back(pol.get());
    }
  }
  for (const auto& pol : c.admin.compiled) {
    t->admin_policies.push_back(pol.get());
  }
  for (const config::NamedPolicy& p : c.policies) {
    scan_document(p.json, *t);
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

void fill_context(const RequestContext& ctx, policy::Context& out) {
  const TimeKeys& now = time_keys();
  out.assign("aws:CurrentTime", now.iso);
  out.assign("aws:EpochTime", now.epoch);
  set_or_clear(out, "aws:SourceIp", ctx.remote_ip);
  out.assign("aws:SecureTransport", "false");  // no TLS listener yet
  const auth::ApiKey* key = ctx.api_key;
  set_or_clear(out, "aws:username", key != nullptr ? std::string_view(key->name) : "");
  set_or_clear(out, "aws:userid", key != nullptr ? std::string_view(key->id) : "");
  std::string_view type = "Anonymous";
  if (ctx.principal.kind == "api_key") {
    type = "ApiKey";
  } else if (ctx.principal.kind == "admin") {
    type = "Admin";
  }
  out.assign("aws:PrincipalType", type);
  out.assign("gatehouse:SourceKind", "route");
  // ctx.match is only meaningful once a route matched (builtins leave the previous one there).
  const bool routed = ctx.route != nullptr;
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
  if (ctx.authz != nullptr && ctx.request != nullptr) {
    for (const auto& [key, header] : ctx.authz->headers) {
      set_or_clear(out, key, ctx.request->header(header));
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
  if (ctx.api_key != nullptr) {
    if (const auto it = t->plan_policies.find(ctx.api_key->plan); it != t->plan_policies.end()) {
      identity = it->second;
    }
  }
  if (route.policy == nullptr && identity.empty()) {
    // No policy in play: open, unless the config makes authorization deny by default.
    if (!t->default_deny) {
      return Verdict::kContinue;
    }
    return deny(policy::Decision{}, out);
  }
  thread_local policy::Request r;
  set_principal(ctx, r);
  r.action.assign("gatehouse:Invoke");
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
  policy::Decision d = policy::evaluate(r, identity, route.policy);
  if (t->execute_api_alias && d.effect != policy::Effect::kExplicitDeny) {
    // The same request under API Gateway's action name: an explicit deny under either name
    // wins, then an allow under either.
    r.action.assign("execute-api:Invoke");
    const policy::Decision alias = policy::evaluate(r, identity, route.policy);
    if (alias.effect == policy::Effect::kExplicitDeny || !d.allowed()) {
      d = alias;
    }
  }
  return d.allowed() ? Verdict::kContinue : deny(d, out);
}

Verdict authorize_admin(RequestContext& ctx, std::string_view action, std::string_view resource,
                        Refusal& out) {
  const AuthzTable* t = ctx.authz;
  if (t == nullptr || t->admin_policies.empty()) {
    return Verdict::kContinue;  // the admin is allowed everything unless admin.policies says
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
  return d.allowed() ? Verdict::kContinue : deny(d, out);
}

}  // namespace gatehouse::gateway
