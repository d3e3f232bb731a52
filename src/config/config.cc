#include "config/config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "config/schema.h"
#include "config/value.h"
#include "core/core.h"
#include "policy/policy.h"

namespace gatehouse::config {
namespace {

using detail::Decoded;
using detail::Position;
using detail::printable;

// A config is a few KiB; the cap keeps a hostile reload from parking a huge document in memory.
constexpr std::size_t kMaxDocumentBytes = std::size_t{16} * 1024 * 1024;

LoadResult one_error(const std::string& file, int line, int column, std::string message) {
  return tl::unexpected(
      std::vector<ConfigError>{ConfigError{file, line, column, std::move(message)}});
}

std::string at_line(Position pos) {
  return pos.line > 0 ? " (first at line " + std::to_string(pos.line) + ")" : std::string();
}

std::string suggestion(std::string_view word, const std::vector<std::string_view>& candidates) {
  const std::string_view guess = detail::closest(word, candidates);
  return guess.empty() ? std::string() : " (did you mean '" + std::string(guess) + "'?)";
}

// Names must be unique within a list; returns name -> index of its first definition. Empty names
// (missing or invalid, already reported) are skipped.
template <class T>
std::unordered_map<std::string_view, std::size_t> index_names(Decoded& d,
                                                              const std::vector<T>& items,
                                                              std::string_view list,
                                                              std::string_view what) {
  std::unordered_map<std::string_view, std::size_t> index;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string& name = items[i].name;
    if (name.empty()) {
      continue;
    }
    const auto [it, inserted] = index.emplace(name, i);
    if (!inserted) {
      const std::string path = std::string(list) + "[" + std::to_string(i) + "].name";
      const std::string first = std::string(list) + "[" + std::to_string(it->second) + "].name";
      d.diagnostics.add(
          d.position(path), path,
          "duplicate " + std::string(what) + " '" + name + "'" + at_line(d.position(first)));
    }
  }
  return index;
}

template <class T>
std::vector<std::string_view> names_of(const std::vector<T>& items) {
  std::vector<std::string_view> names;
  names.reserve(items.size());
  for (const T& item : items) {
    names.push_back(item.name);
  }
  return names;
}

// The path of item `j` of the string list at `list` ("routes[0].stages[1]"), or of the list
// itself when it was written as a single string ("stages: prod").
std::string item_path(const Decoded& d, const std::string& list, std::size_t j) {
  std::string path = list + "[" + std::to_string(j) + "]";
  return d.positions.contains(path) ? path : list;
}

// Every name in a list of stages (routes[i].stages, plans[i].stages) must be defined.
void check_stage_list(Decoded& d, const std::string& list, const std::vector<std::string>& names,
                      const std::unordered_map<std::string_view, std::size_t>& stages,
                      const std::vector<std::string_view>& stage_names) {
  for (std::size_t j = 0; j < names.size(); ++j) {
    const std::string& stage = names[j];
    if (stage.empty() || stages.contains(stage)) {
      continue;  // empty: a placeholder for an invalid item, already reported
    }
    const std::string path = item_path(d, list, j);
    d.diagnostics.add(d.position(path), path,
                      "unknown stage '" + printable(stage) + "'" +
                          (stage_names.empty() ? std::string(" (no stages are defined)")
                                               : suggestion(stage, stage_names)));
  }
}

// Usage plans name stages and routes; an override must name a route the plan may call, once.
void check_plans(Decoded& d, const std::unordered_map<std::string_view, std::size_t>& stages,
                 const std::vector<std::string_view>& stage_names) {
  const Config& c = d.config;
  // Route names are final here (defaults filled in by check_references).
  std::unordered_map<std::string_view, std::size_t> routes;
  std::vector<std::string_view> route_names;
  for (std::size_t i = 0; i < c.routes.size(); ++i) {
    if (!c.routes[i].name.empty() && routes.emplace(c.routes[i].name, i).second) {
      route_names.push_back(c.routes[i].name);
    }
  }
  const auto unknown_route = [&](const std::string& path, const std::string& name) {
    d.diagnostics.add(d.position(path), path,
                      "unknown route '" + printable(name, 256) + "'" +
                          (route_names.empty() ? std::string(" (no routes are defined)")
                                               : suggestion(name, route_names)));
  };
  for (std::size_t i = 0; i < c.plans.size() && !d.diagnostics.full(); ++i) {
    const Plan& p = c.plans[i];
    const std::string base = "plans[" + std::to_string(i) + "]";
    check_stage_list(d, base + ".stages", p.stages, stages, stage_names);
    for (std::size_t j = 0; j < p.routes.size(); ++j) {
      if (!p.routes[j].empty() && !routes.contains(p.routes[j])) {
        unknown_route(item_path(d, base + ".routes", j), p.routes[j]);
      }
    }
    const std::unordered_set<std::string_view> allowed(p.routes.begin(), p.routes.end());
    std::unordered_map<std::string_view, std::size_t> overridden;
    for (std::size_t k = 0; k < p.overrides.size(); ++k) {
      const PlanOverride& o = p.overrides[k];
      if (o.route.empty()) {
        continue;  // missing or invalid, already reported
      }
      const std::string path = base + ".overrides[" + std::to_string(k) + "].route";
      const auto [first, inserted] = overridden.emplace(o.route, k);
      if (!inserted) {
        const int line = p.overrides[first->second].line;
        d.diagnostics.add(d.position(path), path,
                          "duplicate override for route '" + printable(o.route, 256) + "'" +
                              at_line(Position{line, 0}));
      } else if (!routes.contains(o.route)) {
        unknown_route(path, o.route);
      } else if (!allowed.empty() && !allowed.contains(o.route)) {
        // The override would never apply: keys on this plan cannot call the route.
        d.diagnostics.add(d.position(path), path,
                          "route '" + printable(o.route, 256) + "' is not among the plan's routes");
      }
    }
  }
}

// True if `pattern` (an invokers entry; a trailing '*' matches any suffix) matches `source`.
bool invoker_matches(std::string_view pattern, std::string_view source) {
  if (!pattern.empty() && pattern.back() == '*') {
    pattern.remove_suffix(1);
    return source.starts_with(pattern);
  }
  return pattern == source;
}

// A route that targets a function: the function must run something, and its invokers (when
// given) must let the route in; otherwise the route could only ever answer 403.
void check_function_target(Decoded& d, const std::string& base, const Route& r,
                           const FunctionConfig& f) {
  const std::string path = base + ".target.function";
  if (f.runtime == FunctionRuntime::kNone) {
    d.diagnostics.add(d.position(path), path,
                      "function '" + printable(f.name) +
                          "' has no runtime (it only carries limits); set its runtime to "
                          "lambda or exec" +
                          (f.line > 0 ? " (line " + std::to_string(f.line) + ")" : std::string()));
    return;
  }
  if (!f.invokers_set || r.name.empty()) {
    return;
  }
  const std::string source = "route:" + r.name;
  const bool allowed = std::any_of(f.invokers.begin(), f.invokers.end(), [&](const std::string& p) {
    return invoker_matches(p, source);
  });
  if (!allowed) {
    d.diagnostics.add(d.position(path), path,
                      "function '" + printable(f.name) + "' does not list '" +
                          printable(source, 256) + "' among its invokers");
  }
}

// A function's runtime keys only make sense together.
void check_function(Decoded& d, const std::string& base, const FunctionConfig& f) {
  static constexpr std::array<std::string_view, 16> kRuntimeKeys{"command",
                                                                 "working_dir",
                                                                 "handler",
                                                                 "env",
                                                                 "memory_mb",
                                                                 "timeout_s",
                                                                 "max_queue",
                                                                 "idle_timeout_s",
                                                                 "max_pids",
                                                                 "sandbox",
                                                                 "role",
                                                                 "invokers",
                                                                 "reserved_concurrency",
                                                                 "policy",
                                                                 "init_timeout_s",
                                                                 "async"};
  if (f.runtime == FunctionRuntime::kNone) {
    if (d.position(base + ".runtime").line > 0) {
      return;  // an invalid runtime, already reported
    }
    for (std::string_view key : kRuntimeKeys) {
      const std::string path = base + "." + std::string(key);
      const Position pos = d.position(path);
      if (pos.line > 0) {
        d.diagnostics.add(pos, path, "needs 'runtime' (lambda or exec) on the function");
      }
    }
    return;
  }
  if (f.command.empty()) {
    d.diagnostics.add(d.position(base), base, "missing required key 'command' (with a runtime)");
  }
  if (f.runtime == FunctionRuntime::kExec) {
    const std::string path = base + ".handler";
    if (d.position(path).line > 0) {
      d.diagnostics.add(d.position(path), path, "only applies to runtime lambda");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Policies: every document was validated during the walk (with its YAML positions); here names
// are resolved, each document is compiled once with its final id, and each use is checked
// against its kind (identity policies name no Principal, resource policies always do).

PolicyPtr compile_policy(const std::string& json, const std::string& id, policy::PolicyKind kind,
                         std::string* error) {
  auto p = policy::parse_policy(json, id, kind);
  if (!p) {
    if (error != nullptr) {
      *error = p.error().message;
    }
    return nullptr;
  }
  return std::make_shared<const policy::Policy>(std::move(*p));
}

// Escapes `text` for a policy string pattern under 2012-10-17: '*', '?' and '$' stand for
// themselves.
std::string literal_pattern(std::string_view text) {
  std::string out;
  for (char ch : text) {
    if (ch == '*' || ch == '?' || ch == '$') {
      out += "${";
      out += ch;
      out += '}';
    } else {
      out += ch;
    }
  }
  return out;
}

// The resource policy equivalent to a function's `invokers` (docs/policy.md, "Function
// policies"): one Allow for the listed sources (condition key gatehouse:Source) and one for the
// listed principals (aws:PrincipalArn), each entry literal but for a trailing '*'. No entry at
// all allows nobody (the admin's identity policy still may).
std::string invokers_policy(const FunctionConfig& f) {
  constexpr std::string_view kPrincipal = "principal:";
  auto statement = [&f, kPrincipal](std::string_view sid, std::string_view key, bool principals) {
    std::string values;
    for (std::string_view entry : f.invokers) {
      if (entry.starts_with(kPrincipal) != principals) {
        continue;
      }
      const bool wildcard = entry.ends_with('*');
      entry.remove_suffix(wildcard ? 1 : 0);
      entry.remove_prefix(principals ? kPrincipal.size() : 0);
      values += values.empty() ? "\"" : ",\"";
      core::json_escape(values, literal_pattern(entry) + (wildcard ? "*" : ""));
      values += '"';
    }
    if (values.empty()) {
      return std::string();
    }
    return std::string(R"({"Sid":")") + std::string(sid) +
           R"(","Effect":"Allow","Principal":"*","Action":"lambda:InvokeFunction",)"
           R"("Resource":"*","Condition":{"StringLike":{")" +
           std::string(key) + "\":[" + values + "]}}}";
  };
  std::string sources = statement("InvokersSources", "gatehouse:Source", false);
  std::string principals = statement("InvokersPrincipals", "aws:PrincipalArn", true);
  if (sources.empty() && principals.empty()) {
    sources = R"({"Sid":"NoInvokers","Effect":"Allow","Principal":"*","NotAction":"*",)"
              R"("Resource":"*"})";
  }
  return R"({"Version":"2012-10-17","Statement":[)" + sources +
         (sources.empty() || principals.empty() ? "" : ",") + principals + "]}";
}

// The policies[] entry `name` refers to at `path`, if it exists and is valid as `kind`; else
// reports why and returns nullptr.
const NamedPolicy* find_named(Decoded& d, const std::string& path, const std::string& name,
                              const std::unordered_map<std::string_view, std::size_t>& index,
                              policy::PolicyKind kind) {
  const Config& c = d.config;
  const auto it = index.find(name);
  if (it == index.end()) {
    d.diagnostics.add(d.position(path), path,
                      "unknown policy '" + printable(name) + "'" +
                          (c.policies.empty() ? std::string(" (no policies are defined)")
                                              : suggestion(name, names_of(c.policies))));
    return nullptr;
  }
  const NamedPolicy& np = c.policies[it->second];
  if (np.json.empty()) {
    return nullptr;  // its document is invalid, already reported
  }
  std::string error;
  if (!compile_policy(np.json, np.name, kind, &error)) {
    d.diagnostics.add(d.position(path), path,
                      "policy '" + np.name + "' is not " +
                          (kind == policy::PolicyKind::kIdentity ? "an identity" : "a resource") +
                          " policy: " + error);
    return nullptr;
  }
  return &np;
}

// Resolves a list of identity policy names into `out`.
void resolve_identity(Decoded& d, const std::string& base, const std::vector<std::string>& names,
                      const std::unordered_map<std::string_view, std::size_t>& index,
                      std::vector<PolicyPtr>& out) {
  for (std::size_t j = 0; j < names.size(); ++j) {
    if (names[j].empty()) {
      continue;  // invalid, already reported
    }
    if (const NamedPolicy* np =
            find_named(d, item_path(d, base, j), names[j], index, policy::PolicyKind::kIdentity)) {
      out.push_back(np->compiled);
    }
  }
}

// Resolves a route's or function's `policy` into its compiled resource policy.
void resolve_resource(Decoded& d, const std::string& path, const std::string& inline_id,
                      const std::unordered_map<std::string_view, std::size_t>& index,
                      PolicyRef& ref) {
  if (!ref.json.empty()) {
    // Inline documents were validated during the walk; translated `invokers` were not.
    std::string error;
    ref.compiled = compile_policy(ref.json, inline_id, policy::PolicyKind::kResource, &error);
    if (!ref.compiled) {
      d.diagnostics.add(d.position(path), path,
                        "cannot be used as a resource policy: " + error +
                            " (write the function's `policy` instead)");
    }
    return;
  }
  if (ref.name.empty()) {
    return;
  }
  if (const NamedPolicy* np = find_named(d, path, ref.name, index, policy::PolicyKind::kResource)) {
    ref.compiled = np->compiled;
  }
}

void check_policies(Decoded& d) {
  Config& c = d.config;
  const auto index = index_names(d, c.policies, "policies", "policy");
  for (NamedPolicy& p : c.policies) {
    if (!p.json.empty() && !p.name.empty()) {
      p.compiled = compile_policy(p.json, p.name, policy::PolicyKind::kAny, nullptr);
    }
  }
  const auto roles = index_names(d, c.roles, "roles", "role");
  for (std::size_t i = 0; i < c.roles.size(); ++i) {
    const std::string base = "roles[" + std::to_string(i) + "].policies";
    resolve_identity(d, base, c.roles[i].policies, index, c.roles[i].compiled);
  }
  for (std::size_t i = 0; i < c.plans.size(); ++i) {
    const std::string base = "plans[" + std::to_string(i) + "].policies";
    resolve_identity(d, base, c.plans[i].policies, index, c.plans[i].compiled);
  }
  resolve_identity(d, "admin.policies", c.admin.policies, index, c.admin.compiled);
  for (std::size_t i = 0; i < c.routes.size(); ++i) {
    Route& r = c.routes[i];
    resolve_resource(d, "routes[" + std::to_string(i) + "].policy", "route:" + r.name, index,
                     r.policy);
  }
  for (std::size_t i = 0; i < c.functions.size(); ++i) {
    FunctionConfig& f = c.functions[i];
    const std::string base = "functions[" + std::to_string(i) + "]";
    if (f.invokers_set && f.policy.set()) {
      const std::string path = base + ".invokers";
      d.diagnostics.add(d.position(path), path,
                        "give either 'invokers' or 'policy', not both (invokers is a shorthand "
                        "for a resource policy)");
      continue;
    }
    f.arn = policy::function_arn(c.region, c.account_id, f.name);
    if (f.invokers_set) {
      f.policy.json = invokers_policy(f);
    }
    resolve_resource(d, base + (f.invokers_set ? ".invokers" : ".policy"), "function:" + f.name,
                     index, f.policy);
    if (!f.role.empty() && !roles.contains(f.role)) {
      const std::string path = base + ".role";
      d.diagnostics.add(d.position(path), path,
                        "unknown role '" + printable(f.role) + "'" +
                            (c.roles.empty() ? std::string(" (no roles are defined)")
                                             : suggestion(f.role, names_of(c.roles))));
    }
  }
}

// User pools: clients, throttle bounds, and the issuer default (from server.listen, so every
// reader of the config — the gateway, the CLI — computes the same one).
void check_user_pools(Decoded& d) {
  Config& c = d.config;
  for (std::size_t i = 0; i < c.user_pools.size() && !d.diagnostics.full(); ++i) {
    UserPool& p = c.user_pools[i];
    const std::string base = "user_pools[" + std::to_string(i) + "]";
    if (d.position(base + ".clients").line > 0 && p.clients.empty()) {
      d.diagnostics.add(d.position(base + ".clients"), base + ".clients",
                        "must list at least one client id");
    }
    const SignInThrottle& t = p.sign_in_throttle;
    if (t.max_delay < t.base_delay) {
      const std::string path = base + ".sign_in_throttle.max_delay";
      Position pos = d.position(path);
      if (pos.line == 0) {
        pos = d.position(base + ".sign_in_throttle.base_delay");
      }
      d.diagnostics.add(pos, path, "must be at least sign_in_throttle.base_delay");
    }
    if (p.issuer.empty() && !p.name.empty()) {
      std::string host = c.server.listen.host;
      if (host == "0.0.0.0" || host == "::" || host.empty()) {
        host = "localhost";
      } else if (host.find(':') != std::string::npos) {
        host = "[" + host + "]";
      }
      p.issuer = "http://";
      p.issuer += host;
      p.issuer += ':';
      p.issuer += std::to_string(c.server.listen.port);
      p.issuer += c.identity.path_prefix;
      p.issuer += '/';
      p.issuer += p.name;
    }
  }
  if (!c.user_pools.empty()) {
    const std::string& prefix = c.identity.path_prefix;
    // Either path is the other or lies under it.
    const auto overlaps = [&](const std::string& path) {
      return path == prefix || path.starts_with(prefix + "/") || prefix.starts_with(path + "/");
    };
    const AdminConfig& a = c.admin;
    if (overlaps(a.admin_prefix) || overlaps(a.health_path) || overlaps(a.metrics_path)) {
      Position pos = d.position("identity.path_prefix");
      for (const char* other :
           {"admin.admin_prefix", "admin.health_path", "admin.metrics_path", "user_pools"}) {
        if (pos.line == 0) {
          pos = d.position(other);
        }
      }
      d.diagnostics.add(
          pos, "identity.path_prefix",
          "'" + printable(prefix) + "' overlaps the admin prefix, health or metrics path");
    }
  }
}

// A route's `auth` and `jwt` keys agree, and its jwt block names a pool that exists (whose
// issuer and clients are then its defaults) or gives an issuer and an audience of its own.
void check_route_auth(Decoded& d, const std::string& base, Route& r,
                      const std::unordered_map<std::string_view, std::size_t>& pools) {
  const Config& c = d.config;
  const bool has_block = d.position(base + ".jwt").line > 0;
  if (r.auth != RouteAuth::kApiKey && r.api_key != ApiKeyMode::kNone) {
    d.diagnostics.add(d.position(base + ".auth"), base + ".auth",
                      std::string("auth: ") + (r.auth == RouteAuth::kJwt ? "jwt" : "sigv4") +
                          " cannot be combined with api_key: optional or required");
  }
  if (r.auth != RouteAuth::kJwt) {
    if (has_block) {
      d.diagnostics.add(d.position(base + ".jwt"), base + ".jwt", "only applies with auth: jwt");
    }
    return;
  }
  if (!has_block) {
    d.diagnostics.add(d.position(base + ".auth"), base + ".auth",
                      "auth: jwt needs a 'jwt' block (jwks, issuer, audience)");
    return;
  }
  JwtAuthorizerConfig& j = r.jwt;
  const std::string jbase = base + ".jwt";
  if (j.token_use.empty()) {
    j.token_use = j.source == JwksSource::kPool ? "access" : "any";
  }
  if (j.source == JwksSource::kPool) {
    const auto it = pools.find(j.location);
    if (it == pools.end()) {
      std::vector<std::string_view> names = names_of(c.user_pools);
      d.diagnostics.add(d.position(jbase + ".jwks"), jbase + ".jwks",
                        "unknown user pool '" + printable(j.location) + "'" +
                            (names.empty() ? std::string(" (no user_pools are defined)")
                                           : suggestion(j.location, names)));
      return;
    }
    const UserPool& p = c.user_pools[it->second];
    if (j.issuer.empty()) {
      j.issuer = p.issuer;
    } else if (j.issuer != p.issuer) {
      d.diagnostics.add(d.position(jbase + ".issuer"), jbase + ".issuer",
                        "differs from the issuer of pool '" + p.name + "' (" + printable(p.issuer) +
                            "); leave it out");
    }
    if (j.audience.empty()) {
      j.audience = p.clients;
    }
    for (std::size_t k = 0; k < j.audience.size(); ++k) {
      const std::string& a = j.audience[k];
      if (!a.empty() && std::find(p.clients.begin(), p.clients.end(), a) == p.clients.end()) {
        const std::string path = item_path(d, jbase + ".audience", k);
        d.diagnostics.add(d.position(path), path,
                          "'" + printable(a) + "' is not a client of pool '" + p.name + "'");
      }
    }
    return;
  }
  if (j.source == JwksSource::kNone) {
    return;  // a bad jwks value, already reported
  }
  if (j.issuer.empty()) {
    d.diagnostics.add(d.position(jbase), jbase,
                      "missing required key 'issuer' (required with a file or url key set)");
  }
  if (j.audience.empty()) {
    d.diagnostics.add(d.position(jbase), jbase,
                      "missing required key 'audience' (required with a file or url key set)");
  }
}

// The checks that need more than one value: references between sections, unique names, and the
// route name default (which must exist before names can be compared).
void check_references(Decoded& d) {
  Config& c = d.config;
  const auto stages = index_names(d, c.stages, "stages", "stage");
  const auto upstreams = index_names(d, c.upstreams, "upstreams", "upstream");
  const auto functions = index_names(d, c.functions, "functions", "function");
  index_names(d, c.plans, "plans", "plan");
  const auto pools = index_names(d, c.user_pools, "user_pools", "user pool");
  check_user_pools(d);
  const std::vector<std::string_view> stage_names = names_of(c.stages);
  const std::vector<std::string_view> upstream_names = names_of(c.upstreams);
  const std::vector<std::string_view> function_names = names_of(c.functions);

  std::unordered_map<std::string, std::size_t> route_names;
  for (std::size_t i = 0; i < c.routes.size() && !d.diagnostics.full(); ++i) {
    Route& r = c.routes[i];
    const std::string base = "routes[" + std::to_string(i) + "]";
    const bool named = !r.name.empty();
    if (!named && !r.methods.empty() && !r.path.empty()) {
      for (const std::string& m : r.methods) {
        r.name += r.name.empty() ? "" : ",";
        r.name += m;
      }
      r.name += " " + r.path;
    }
    if (!r.name.empty()) {
      const auto [it, inserted] = route_names.emplace(r.name, i);
      if (!inserted) {
        const std::string path = named ? base + ".name" : base;
        const Route& first = c.routes[it->second];
        std::string message =
            "duplicate route name '" + printable(r.name, 256) + "'" +
            (first.line > 0 ? " (first at line " + std::to_string(first.line) + ")"
                            : std::string());
        if (!named) {
          message += "; give one of them a distinct name";
        }
        d.diagnostics.add(d.position(path), path, message);
      }
    }
    check_stage_list(d, base + ".stages", r.stages, stages, stage_names);
    check_route_auth(d, base, r, pools);
    const std::string& function = r.target.function;
    if (!function.empty() && !functions.contains(function)) {
      const std::string path =
          d.position(base + ".function").line > 0 || r.target.kind != Target::Kind::kFunction
              ? base + ".function"
              : base + ".target.function";
      d.diagnostics.add(d.position(path), path,
                        "unknown function '" + printable(function) + "'" +
                            (function_names.empty() ? std::string(" (no functions are defined)")
                                                    : suggestion(function, function_names)));
    }
    if (r.target.kind == Target::Kind::kFunction && functions.contains(function)) {
      check_function_target(d, base, r, c.functions[functions.at(function)]);
    }
    if (r.target.kind == Target::Kind::kHttp && !r.target.http.upstream.empty() &&
        !upstreams.contains(r.target.http.upstream)) {
      const std::string path = base + ".target.http.upstream";
      d.diagnostics.add(d.position(path), path,
                        "unknown upstream '" + printable(r.target.http.upstream) + "'" +
                            suggestion(r.target.http.upstream, upstream_names));
    }
  }

  if (!d.diagnostics.full()) {
    check_plans(d, stages, stage_names);
  }
  for (std::size_t i = 0; i < c.functions.size() && !d.diagnostics.full(); ++i) {
    check_function(d, "functions[" + std::to_string(i) + "]", c.functions[i]);
  }

  if (!d.diagnostics.full()) {
    check_policies(d);
  }
  // One account id and region for every ARN, the user pools' included.
  c.identity.account_id = c.account_id;
  c.identity.region = c.region;

  const AdminConfig& a = c.admin;
  if (a.health_path == a.metrics_path) {
    Position pos = d.position("admin.metrics_path");
    if (pos.line == 0) {
      pos = d.position("admin.health_path");
    }
    d.diagnostics.add(pos, "admin.metrics_path", "must differ from admin.health_path");
  }
}

// Sees the document boundaries of a stream: where each document starts and whether it holds
// anything but a lone null.
class DocumentScan final : public YAML::EventHandler {
 public:
  YAML::Mark start = YAML::Mark::null_mark();
  bool content = false;

  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& /*mark*/, YAML::anchor_t /*anchor*/) override {}
  void OnAlias(const YAML::Mark& /*mark*/, YAML::anchor_t /*anchor*/) override { content = true; }
  void OnScalar(const YAML::Mark& /*mark*/, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                const std::string& /*value*/) override {
    content = true;
  }
  void OnSequenceStart(const YAML::Mark& /*mark*/, const std::string& /*tag*/,
                       YAML::anchor_t /*anchor*/, YAML::EmitterStyle::value /*style*/) override {
    content = true;
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& /*mark*/, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                  YAML::EmitterStyle::value /*style*/) override {
    content = true;
  }
  void OnMapEnd() override {}
};

struct Problem {
  Position pos;
  std::string message;
};

// Walks the document boundaries before the tree is built. Only the first document is loaded, so
// a second one with content is refused rather than silently ignored (a stray "---" at the end is
// fine). This is also a guard: yaml-cpp 0.7 does not consume a ',' outside a flow collection,
// so YAML::LoadAll on "," loops forever, building empty documents until memory runs out (found
// by tests/fuzz/config_fuzz.cc). Here a document that starts where the previous one started
// made no progress, and is reported instead. Throws what the yaml-cpp parser throws.
std::optional<Problem> check_documents(std::string_view yaml) {
  std::istringstream in{std::string(yaml)};
  YAML::Parser parser(in);
  int previous = -1;
  for (int count = 0;; ++count) {
    DocumentScan scan;
    if (!parser.HandleNextDocument(scan)) {
      return std::nullopt;
    }
    const Position pos{scan.start.line + 1, scan.start.column + 1};
    if (scan.start.pos == previous) {
      const auto at = static_cast<std::size_t>(scan.start.pos);
      const std::string what = at < yaml.size() ? "'" + printable(yaml.substr(at, 1)) + "'"
                                                : std::string("end of input");
      return Problem{pos, "invalid YAML: unexpected " + what};
    }
    if (count > 0 && scan.content) {
      return Problem{pos, "only one YAML document is allowed; a second one starts here"};
    }
    previous = scan.start.pos;
  }
}

LoadResult load(std::string_view yaml, const std::string& name) {
  if (yaml.size() > kMaxDocumentBytes) {
    return one_error(
        name, 0, 0, "the file is " + std::to_string(yaml.size()) + " bytes; the maximum is 16 MiB");
  }
  YAML::Node root;
  try {
    if (auto problem = check_documents(yaml)) {
      return one_error(name, problem->pos.line, problem->pos.column, std::move(problem->message));
    }
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::DeepRecursion& e) {
    return one_error(
        name, e.mark.line + 1, e.mark.column + 1,
        "invalid YAML: nested more than " + std::to_string(e.depth()) + " levels deep");
  } catch (const YAML::Exception& e) {
    const bool known = !e.mark.is_null();
    return one_error(name, known ? e.mark.line + 1 : 0, known ? e.mark.column + 1 : 0,
                     "invalid YAML: " + printable(e.msg, 200));
  }

  Decoded d;
  d.config.source = name;
  detail::decode(root, d);
  if (!d.diagnostics.full()) {
    check_references(d);
  }
  if (!d.diagnostics.empty()) {
    return tl::unexpected(std::move(d.diagnostics).take(name));
  }
  return std::move(d.config);
}

LoadResult internal_error(const std::string& name, const char* what) {
  return one_error(name, 0, 0, std::string("internal error while loading: ") + what);
}

struct FileCloser {
  // NOLINTNEXTLINE(cppcoreguidelines-owning-memory): the unique_ptr below owns the FILE.
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};

}  // namespace

const Upstream* Config::find_upstream(std::string_view name) const {
  for (const Upstream& u : upstreams) {
    if (u.name == name) {
      return &u;
    }
  }
  return nullptr;
}

const Plan* Config::find_plan(std::string_view name) const {
  for (const Plan& p : plans) {
    if (p.name == name) {
      return &p;
    }
  }
  return nullptr;
}

const Role* Config::find_role(std::string_view name) const {
  for (const Role& r : roles) {
    if (r.name == name) {
      return &r;
    }
  }
  return nullptr;
}

const UserPool* Config::find_user_pool(std::string_view name) const {
  for (const auto& p : user_pools) {
    if (p.name == name) {
      return &p;
    }
  }
  return nullptr;
}

const FunctionConfig* Config::find_function(std::string_view name) const {
  for (const FunctionConfig& f : functions) {
    if (f.name == name) {
      return &f;
    }
  }
  return nullptr;
}

std::string ConfigError::to_string() const {
  if (line <= 0) {
    return file + ": " + message;
  }
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

LoadResult load_string(std::string_view yaml, const std::string& name) {
  // yaml-cpp reports errors by throwing, and anything can throw bad_alloc; none of it may
  // escape (the reload path must keep serving the old config).
  try {
    return load(yaml, name);
  } catch (const std::exception& e) {
    return internal_error(name, e.what());
  } catch (...) {
    return internal_error(name, "unknown exception");
  }
}

LoadResult load_file(const std::string& path) {
  try {
    errno = 0;
    const std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
    if (!file) {
      return one_error(path, 0, 0,
                       "cannot read the file: " + std::generic_category().message(errno));
    }
    // Read through the cap plus one byte, so FIFOs and /dev/stdin work and a huge file is
    // refused without reading all of it.
    std::string text;
    char buf[64 * 1024];
    while (text.size() <= kMaxDocumentBytes) {
      const std::size_t n = std::fread(buf, 1, sizeof buf, file.get());
      text.append(buf, n);
      if (n < sizeof buf) {
        break;
      }
    }
    if (std::ferror(file.get()) != 0) {
      return one_error(path, 0, 0,
                       "cannot read the file: " + std::generic_category().message(errno));
    }
    if (text.size() > kMaxDocumentBytes) {
      return one_error(path, 0, 0, "the file is larger than the maximum of 16 MiB");
    }
    return load_string(text, path);
  } catch (const std::exception& e) {
    return internal_error(path, e.what());
  } catch (...) {
    return internal_error(path, "unknown exception");
  }
}

}  // namespace gatehouse::config
