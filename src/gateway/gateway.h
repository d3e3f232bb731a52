#pragma once
// gatehouse::gateway — wires the request path of ARCHITECTURE.md from the modules:
//
//   wire limits (http::Server) → route → authenticate → authorize → throttle → guard → dispatch
//   → respond (metrics, access log)
//
// Each stage between route and dispatch is a small interface with a pass-through default, so
// the issues that follow (limits, identity and policy, guard) each fill one stage without
// touching the others. A RequestContext flows through them. Stages run on the connection's
// worker thread, before the body is read, so a refusal costs no body bytes. They must not block
// and should not allocate on the refusal path.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/core.h"
#include "http/http.h"
#include "policy/policy.h"

namespace gatehouse::auth {
struct ApiKey;
}
namespace gatehouse::limits {
class Gate;
}

namespace gatehouse::gateway {

struct Snapshot;      // the compiled, immutable form of one Config (gateway.cc)
struct RouteEntry;    // one compiled route of a Snapshot
struct LimitTable;    // the compiled limits of a Snapshot (limiter.h)
struct KeyState;      // an API key's limiter cells (limiter.h)
struct CompiledPlan;  // a usage plan compiled into a LimitTable (limiter.h)
struct SigV4Slot;     // per-connection SigV4 state (sigv4_stage.h)
struct AuthzTable;    // the compiled authorization of a Snapshot (authorizer.h)

// Who is calling. Filled by the authenticate stage; anonymous by default. The id is always the
// principal's ARN (docs/policy.md, "Principals"): policies name it in Principal.AWS and
// aws:PrincipalArn, and function invocations carry it in their caller context.
struct Principal {
  std::string_view kind = "anonymous";          // anonymous | api_key | user | role | admin
  std::string_view id = policy::kAnonymousArn;  // e.g. arn:gatehouse:iam::<account>:apikey/<id>
};

// What flows through the stages for one request. Reused per connection; views live as long as
// the request (they point into the request, the snapshot or stage-owned storage).
struct RequestContext {
  const Snapshot* snapshot = nullptr;
  const RouteEntry* route = nullptr;  // set by the route stage
  std::string_view route_name;        // the matched route's name (config), set with route
  const http::Request* request = nullptr;
  http::Match match;  // route index, stage, path params
  Principal principal;
  std::string_view remote_ip;
  std::string_view request_id;
  std::string_view function;  // the function the target names ("" if none)
  std::chrono::steady_clock::time_point started{};
  // The steady time the throttle decides at, when the caller has read the clock already (the
  // request's start; the retry of a waiting request: its retry time). Zero: the throttle reads it.
  std::chrono::steady_clock::time_point now{};
  std::uint32_t route_index = 0;
  unsigned worker = 0;                    // the worker thread handling the request
  const LimitTable* limits = nullptr;     // the snapshot's compiled limits
  const auth::ApiKey* api_key = nullptr;  // set by the API-key authenticator
  KeyState* key_state = nullptr;          // that key's limiter cells
  const CompiledPlan* plan = nullptr;     // that key's plan in `limits`
  std::array<limits::Gate*, 3> gates{};   // concurrency gates entered by the throttle
  std::uint8_t gate_count = 0;
  // Set by the SigV4 authenticator on a connection's first sigv4 request and reused after;
  // shared_ptr only so this header needs no complete type.
  std::shared_ptr<SigV4Slot> sigv4;
  const AuthzTable* authz = nullptr;  // the snapshot's compiled authorization
  // Storage for principal.id when a stage builds it (the API-key check, the JWT authenticator;
  // reused per connection: no allocation once warm).
  std::string principal_arn;
  // Set by the JWT authenticator (routes with auth: jwt), cleared per request: the user pool that
  // issued the token ("" for an external issuer) and the verified token's claims, one
  // (name, value) pair per value; the authorize stage turns them into the policy condition keys
  // docs/identity.md lists (jwt:<name>, cognito-identity.amazonaws.com:sub ...).
  std::string_view user_pool;
  std::vector<std::pair<std::string, std::string>> claims;
};

// A stage's refusal: status, stable error code and message (both with static storage or owned by
// the stage), optional Retry-After and extra header lines ("Name: value\r\n").
struct Refusal {
  int status = 0;
  std::string_view code;
  std::string_view message;
  std::string_view extra_headers;
};

enum class Verdict : std::uint8_t { kContinue, kRefuse };

// The four pluggable stages. Each is called once per request on a worker thread; implementations
// must be thread-safe across workers (shard per worker or use atomics) and never block.
class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // Sets ctx.principal, or refuses (401 / 403).
  virtual Verdict authenticate(RequestContext& ctx, Refusal& out) = 0;
};

class Authorizer {
 public:
  virtual ~Authorizer() = default;
  // Decides whether ctx.principal may call ctx.route (403 on refusal).
  virtual Verdict authorize(RequestContext& ctx, Refusal& out) = 0;
};

class Throttle {
 public:
  virtual ~Throttle() = default;
  // Admits the request against every limit layer, or refuses (429 with Retry-After).
  virtual Verdict admit(RequestContext& ctx, Refusal& out) = 0;
  // Called once for every admitted request when its response is done (releases concurrency).
  virtual void release(RequestContext& ctx) = 0;
};

class Guard {
 public:
  virtual ~Guard() = default;
  // Budget, quarantine and anomaly checks just before dispatch.
  virtual Verdict check(RequestContext& ctx, Refusal& out) = 0;
};

// Pass-through stages.
std::unique_ptr<Authenticator> allow_anonymous();
std::unique_ptr<Authorizer> allow_all();
std::unique_ptr<Throttle> no_throttle();
std::unique_ptr<Guard> no_guard();

// The stages a gateway runs. A null member means the built-in one: API keys (authenticate),
// IAM policies (authorize, docs/policy.md), the layered limiter (throttle), pass-through
// (guard) until its issue lands.
struct Stages {
  std::unique_ptr<Authenticator> authenticate;
  std::unique_ptr<Authorizer> authorize;
  std::unique_ptr<Throttle> throttle;
  std::unique_ptr<Guard> guard;
};

// The running gateway: server, store, stages and the current snapshot. Owned by main.
// Thread-safety: start/reload/stop/run_until_signal from one control thread.
class Gateway {
 public:
  // Compiles `config` (router, targets) and opens the store. Errors: kConfig (router build),
  // kIo / kInvalidArgument (store).
  [[nodiscard]] static core::Result<std::unique_ptr<Gateway>> create(config::Config config,
                                                                     Stages stages = {});
  virtual ~Gateway() = default;

  // Binds the listeners and starts the workers.
  [[nodiscard]] virtual core::Result<void> start() = 0;
  // Validates `config` completely, then swaps it in for new requests; in-flight requests finish
  // on the snapshot they started with. On error the old config stays and the error is returned.
  [[nodiscard]] virtual core::Result<void> reload(config::Config config) = 0;
  // Re-reads the file the current config came from and reloads it (what SIGHUP does).
  [[nodiscard]] virtual core::Result<void> reload_from_source() = 0;
  // Blocks: SIGHUP reloads from the source file; SIGTERM/SIGINT drain (up to
  // server.shutdown_grace) and return.
  virtual void run_until_signal() = 0;
  // Drains and stops (as SIGTERM would). Safe to call once; blocks until workers exit.
  virtual void stop() = 0;
  // The port the listeners are bound to (after start()).
  [[nodiscard]] virtual std::uint16_t port() const noexcept = 0;
  // Prometheus text exposition of every metric.
  [[nodiscard]] virtual std::string metrics_text() const = 0;
};

}  // namespace gatehouse::gateway
