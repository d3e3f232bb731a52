#include "gateway/gateway.h"

#include <netdb.h>
#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json.hpp>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "gateway/authorizer.h"
#include "gateway/function_target.h"
#include "gateway/identity_service.h"
#include "gateway/limiter.h"
#include "gateway/metrics.h"
#include "gateway/proxy.h"
#include "gateway/sigv4_stage.h"
#include "runtime/runtime.h"
#include "store/store.h"

namespace gatehouse::gateway {

namespace net = boost::asio;
using std::chrono::steady_clock;

// ------------------------------------------------------------------------------------------------
// Snapshot: the compiled form of one Config. Immutable; workers share it read-only.

struct RouteEntry {
  const config::Route* route = nullptr;  // points into Snapshot::config
  std::uint32_t metric_slot = 0;
  config::Target::Kind kind = config::Target::Kind::kStatic;
  // kStatic: the response is pre-serialized around the per-request parts (request id, Date,
  // Connection), so answering costs a few appends.
  std::string static_head;       // "HTTP/1.1 200 OK\r\nContent-Type: ..\r\n<extra headers>"
  std::string static_tail;       // "Content-Length: N\r\n\r\n<body>"
  std::string static_tail_head;  // for HEAD: "Content-Length: N\r\n\r\n"
  UpstreamTarget upstream;       // kHttp
};

struct Snapshot {
  config::Config config;
  std::unique_ptr<http::Router> router;
  std::shared_ptr<const LimitTable> limits;
  std::shared_ptr<const AuthzTable> authz;           // shares the policies of `config`
  std::shared_ptr<const CompiledIdentity> identity;  // JWT rules, user pool endpoints
  std::vector<RouteEntry> routes;
  steady_clock::time_point loaded_at = steady_clock::now();
  std::uint64_t generation = 0;
};

namespace {

// Most dead letters one GET /admin/functions/{name}/dead-letters lists.
constexpr std::size_t kMaxDeadLettersListed = 1000;

using core::iequals;

// True if a segment of `path` is "." or ".." (also percent-encoded: %2e). Such paths are refused
// rather than normalised: an upstream that normalises them could be reached outside the route's
// prefix, and a policy written for one path must not be met by another spelling of it.
bool has_dot_segment(std::string_view path) {
  std::size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    const auto end = std::min(path.find('/', i), path.size());
    std::string_view seg = path.substr(i, end - i);
    int dots = 0;
    bool only_dots = true;
    for (std::size_t k = 0; k < seg.size() && only_dots;) {
      if (seg[k] == '.') {
        ++dots;
        ++k;
      } else if (k + 2 < seg.size() && seg[k] == '%' && seg[k + 1] == '2' &&
                 (seg[k + 2] == 'e' || seg[k + 2] == 'E')) {
        ++dots;
        k += 3;
      } else {
        only_dots = false;
      }
    }
    if (only_dots && (dots == 1 || dots == 2)) {
      return true;
    }
    i = end;
  }
  return false;
}

http::ServerOptions server_options(const config::Config& c) {
  http::ServerOptions o;
  o.host = c.server.listen.host;
  o.port = c.server.listen.port;
  o.threads = c.server.threads;
  o.max_header_bytes = c.limits.max_header_bytes;
  o.max_body_bytes = c.limits.max_body_bytes;
  o.header_timeout = c.limits.header_timeout;
  o.body_timeout = c.limits.body_timeout;
  o.min_body_rate = c.limits.min_body_rate;
  o.body_grace = c.limits.body_grace;
  o.idle_timeout = c.limits.idle_timeout;
  o.max_connections = c.limits.max_connections;
  o.max_connections_per_ip = c.limits.max_connections_per_ip;
  o.max_pipelined = c.limits.max_pipelined;
  o.max_requests_per_connection = c.limits.max_requests_per_connection;
  return o;
}

core::Result<net::ip::tcp::endpoint> resolve(const std::string& host, std::uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return core::make_error(core::ErrorCode::kConfig,
                            "cannot resolve upstream host '" + host + "': " + gai_strerror(rc));
  }
  net::ip::tcp::endpoint ep;
  ep.resize(res->ai_addrlen);
  std::memcpy(ep.data(), res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  return ep;
}

core::Result<std::shared_ptr<const Snapshot>> compile(config::Config cfg, Metrics& metrics,
                                                      Limiter& limiter, IdentityService& identity,
                                                      std::uint64_t generation) {
  auto snap = std::make_shared<Snapshot>();
  snap->config = std::move(cfg);
  snap->generation = generation;
  const config::Config& c = snap->config;
  auto limits = limiter.compile(c);
  if (!limits) {
    return tl::unexpected(limits.error());
  }
  snap->limits = *limits;
  snap->authz = compile_authz(c);

  std::vector<http::RouteSpec> specs;
  specs.reserve(c.routes.size());
  for (const auto& r : c.routes) {
    specs.push_back(http::RouteSpec{r.methods, r.path, r.stages});
  }
  std::vector<std::string> stages;
  for (const auto& s : c.stages) {
    stages.push_back(s.name);
  }
  auto router = http::Router::build(specs, stages);
  if (!router) {
    return core::make_error(core::ErrorCode::kConfig, c.source + ": " + router.error().message);
  }
  snap->router = std::move(*router);

  for (const auto& r : c.routes) {
    RouteEntry e;
    e.route = &r;
    e.kind = r.target.kind;
    e.metric_slot = metrics.slot_for(r.name);
    if (r.target.kind == config::Target::Kind::kStatic) {
      const auto& st = r.target.static_target;
      e.static_head = "HTTP/1.1 " + std::to_string(st.status) + " " +
                      std::string(core::reason_phrase(st.status)) + "\r\n";
      if (!st.content_type.empty()) {
        e.static_head += "Content-Type: " + st.content_type + "\r\n";
      }
      for (const auto& [k, v] : st.headers) {
        e.static_head += k + ": " + v + "\r\n";
      }
      e.static_tail_head = "Content-Length: " + std::to_string(st.body.size()) + "\r\n\r\n";
      e.static_tail = e.static_tail_head + st.body;
    } else if (r.target.kind == config::Target::Kind::kHttp) {
      const config::Upstream* up = c.find_upstream(r.target.http.upstream);
      if (up == nullptr) {
        return core::make_error(
            core::ErrorCode::kConfig,
            "route '" + r.name + "': unknown upstream '" + r.target.http.upstream + "'");
      }
      auto ep = resolve(up->host, up->port);
      if (!ep) {
        return tl::unexpected(ep.error());
      }
      e.upstream.upstream = up;
      e.upstream.endpoint = *ep;
      e.upstream.host_header = up->host + ":" + std::to_string(up->port);
      e.upstream.pool_key = up->name + "@" + e.upstream.host_header;
      if (!c.api_keys.forward) {
        e.upstream.strip_header = c.api_keys.header;
      }
    }
    snap->routes.push_back(std::move(e));
  }
  // Last: it loads `file` key sets into their slots, which only a config that compiled should.
  auto ci = identity.compile(c);
  if (!ci) {
    return tl::unexpected(ci.error());
  }
  snap->identity = std::move(*ci);
  return std::shared_ptr<const Snapshot>(std::move(snap));
}

class PassAuthenticator final : public Authenticator {
 public:
  Verdict authenticate(RequestContext&, Refusal&) override { return Verdict::kContinue; }
};
class PassAuthorizer final : public Authorizer {
 public:
  Verdict authorize(RequestContext&, Refusal&) override { return Verdict::kContinue; }
};
class PassThrottle final : public Throttle {
 public:
  Verdict admit(RequestContext&, Refusal&) override { return Verdict::kContinue; }
  void release(RequestContext&) override {}
};
class PassGuard final : public Guard {
 public:
  Verdict check(RequestContext&, Refusal&) override { return Verdict::kContinue; }
};

}  // namespace

std::unique_ptr<Authenticator> allow_anonymous() { return std::make_unique<PassAuthenticator>(); }
std::unique_ptr<Authorizer> allow_all() { return std::make_unique<PassAuthorizer>(); }
std::unique_ptr<Throttle> no_throttle() { return std::make_unique<PassThrottle>(); }
std::unique_ptr<Guard> no_guard() { return std::make_unique<PassGuard>(); }

// ------------------------------------------------------------------------------------------------
// The pipeline: http::Handler implementation.

namespace {

class GatewayImpl;

struct Conn final : http::ConnectionState {
  std::shared_ptr<const Snapshot> snapshot;  // swapped between requests when a reload lands
  RequestContext ctx;
  bool admitted = false;  // throttle admitted: release on completion
  enum class Builtin : std::uint8_t {
    kNone,
    kHealth,
    kMetrics,
    kAdmin,
    kIdentity
  } builtin = Builtin::kNone;
};

class Pipeline final : public http::Handler {
 public:
  Pipeline(GatewayImpl& gw, unsigned workers) : gw_(gw), current_(workers) {}

  // Control thread, before the server starts.
  void set_initial(const std::shared_ptr<const Snapshot>& s) {
    for (auto& c : current_) {
      c.snap = s;
    }
  }
  // Worker thread `w` (posted by the control thread).
  void install(unsigned w, std::shared_ptr<const Snapshot> s) { current_[w].snap = std::move(s); }

  std::unique_ptr<http::ConnectionState> on_connect(unsigned) override {
    return std::make_unique<Conn>();
  }

  http::Step on_headers(http::Exchange& ex) override;
  http::Step on_request(http::Exchange& ex) override;
  void on_complete(http::Exchange& ex) override;

  // Worker `w`, after its loop stopped: drops waiting requests and the retry timer (before the
  // worker's io_context goes).
  void clear(unsigned w) {
    current_[w].waiting.clear();
    current_[w].retry.reset();
  }

  // Most requests one worker holds waiting for a concurrency slot; past it, 429 at once.
  static constexpr std::size_t kMaxWaiting = 4096;
  // How often waiting requests retry their gates (a release on the same worker retries at once).
  static constexpr std::chrono::milliseconds kRetryTick{1};

 private:
  // A request refused by a concurrency gate, held for throttling.concurrency_wait.
  struct Waiter {
    http::Exchange* ex;
    std::shared_ptr<void> keep;  // keeps the session (and so *ex) alive
    steady_clock::time_point deadline;
  };

  http::Step after_admission(http::Exchange& ex, Conn& c);
  bool park(http::Exchange& ex, std::chrono::milliseconds wait);
  void arm_retry(unsigned w);
  void retry_waiting(unsigned w);
  http::Step refuse(http::Exchange& ex, Conn& c, const Refusal& r);
  http::Step builtin(http::Exchange& ex, Conn& c);
  http::Step dispatch(http::Exchange& ex, Conn& c);
  http::Step invoke_route_function(http::Exchange& ex, Conn& c);
  http::Step admin_invoke(http::Exchange& ex, Conn& c, std::string_view function);
  void answer_static(http::Exchange& ex, const RouteEntry& e);
  // The admin token (401 without it), then admin.policies for `action` on the admin resource
  // `resource` (no check when `action` is empty). Sets the admin principal on success.
  std::optional<Refusal> admin_refusal(const http::Exchange& ex, Conn& c, std::string_view action,
                                       std::string_view resource) const;

  GatewayImpl& gw_;
  struct alignas(64) PerWorker {
    std::shared_ptr<const Snapshot> snap;
    std::deque<Waiter> waiting;                // oldest first
    std::unique_ptr<net::steady_timer> retry;  // created on first use
    bool retry_armed = false;
    bool retry_posted = false;
  };
  std::vector<PerWorker> current_;
};

// The built-in authenticate stage: SigV4 for routes with auth: sigv4; API keys (the limiter)
// for every other route, then the JWT authorizer for routes with auth: jwt.
class RouteAuthenticator final : public Authenticator {
 public:
  RouteAuthenticator(Authenticator& api_keys, IdentityService& identity, SigV4Stage& sigv4)
      : api_keys_(api_keys), identity_(identity), sigv4_(sigv4) {}
  Verdict authenticate(RequestContext& ctx, Refusal& out) override {
    if (ctx.route != nullptr && ctx.route->route->auth == config::RouteAuth::kSigV4) {
      return sigv4_.authenticate(ctx, out);
    }
    if (api_keys_.authenticate(ctx, out) == Verdict::kRefuse) {
      return Verdict::kRefuse;
    }
    if (ctx.route == nullptr || ctx.route->route->auth != config::RouteAuth::kJwt) {
      return Verdict::kContinue;
    }
    return identity_.authenticate(*ctx.snapshot->identity, ctx, out);
  }

 private:
  Authenticator& api_keys_;
  IdentityService& identity_;
  SigV4Stage& sigv4_;
};

class GatewayImpl final : public Gateway {
 public:
  GatewayImpl(Stages stages, std::unique_ptr<store::Store> store, unsigned workers)
      : stages_(std::move(stages)),
        store_(std::move(store)),
        limiter_(std::make_unique<Limiter>(*store_, core::system_clock(), workers)),
        sigv4_(std::make_unique<SigV4Stage>(*store_, core::system_clock(), workers)),
        identity_(std::make_unique<IdentityService>(*store_, core::system_clock(), workers)),
        route_auth_(*limiter_, *identity_, *sigv4_),
        metrics_(workers),
        proxy_(workers),
        pipeline_(*this, workers) {
    policy_authorize_ = std::make_unique<PolicyAuthorizer>();
    pass_guard_ = no_guard();
    authenticate_ = stages_.authenticate ? stages_.authenticate.get() : &route_auth_;
    authorize_ = stages_.authorize ? stages_.authorize.get() : policy_authorize_.get();
    throttle_ = stages_.throttle ? stages_.throttle.get() : limiter_.get();
    guard_ = stages_.guard ? stages_.guard.get() : pass_guard_.get();
  }

  ~GatewayImpl() override {
    stop();
    blocking_.join();  // admin work in flight finishes while the store and workers still exist
    // Workers have exited. Pooled upstream sockets go before their io_contexts, and the server
    // (whose sessions call back into the pipeline and stages as they die) before those.
    // Function invocations in flight answer (kUnavailable) and the runtime's threads stop
    // before the worker io_contexts they post to are destroyed with the server.
    if (runtime_) {
      runtime_->stop();  // answers what the async dispatcher started, before it waits for them
    }
    async_.reset();
    runtime_.reset();
    if (server_) {
      for (unsigned w = 0; w < server_->workers(); ++w) {
        proxy_.shutdown(w);
        pipeline_.clear(w);
      }
      server_.reset();
    }
  }

  core::Result<void> init(config::Config config) {
    setup_access_log(config.log);
    auto snap = compile(std::move(config), metrics_, *limiter_, *identity_, ++generation_);
    if (!snap) {
      return tl::unexpected(snap.error());
    }
    snapshot_ = *snap;
    limiter_->activate(snapshot_->limits);
    if (auto r = identity_->activate(snapshot_->config); !r) {
      return r;
    }
    auto rt = runtime::Runtime::create(snapshot_->config);
    if (!rt) {
      return tl::unexpected(rt.error());
    }
    runtime_ = std::move(*rt);
    auto async = runtime::AsyncInvoker::create(*store_, *runtime_, snapshot_->config);
    if (!async) {
      return tl::unexpected(async.error());
    }
    async_ = std::move(*async);
    pipeline_.set_initial(snapshot_);
    server_ = http::make_server(server_options(snapshot_->config), pipeline_);
    return {};
  }

  core::Result<void> start() override {
    auto l = limiter_->start(
        snapshot_->config.api_keys.quota_flush_interval,
        [this](std::function<void(unsigned)> fn) { server_->run_on_all_workers(std::move(fn)); });
    if (!l) {
      return l;
    }
    if (auto s = sigv4_->start(snapshot_->config,
                               [this](std::function<void(unsigned)> fn) {
                                 server_->run_on_all_workers(std::move(fn));
                               });
        !s) {
      return s;
    }
    identity_->start(
        [this](std::function<void(unsigned)> fn) { server_->run_on_all_workers(std::move(fn)); });
    auto r = server_->start();
    if (r) {
      spdlog::info("gatehouse listening on {}:{} with {} workers, {} routes",
                   snapshot_->config.server.listen.host, server_->port(), server_->workers(),
                   snapshot_->routes.size());
    }
    return r;
  }

  core::Result<void> reload(config::Config config) override {
    std::lock_guard lock(reload_mu_);
    const auto& old = snapshot_->config;
    if (config.server.listen.host != old.server.listen.host ||
        config.server.listen.port != old.server.listen.port ||
        config.server.threads != old.server.threads || config.store.state != old.store.state ||
        config.log.access_log != old.log.access_log) {
      spdlog::warn(
          "reload: server.listen, server.threads, store.state and log.access_log take "
          "effect only after a restart; the running values stay");
    }
    if (config.account_id != old.account_id || config.region != old.region ||
        config.credentials.kek_file != old.credentials.kek_file) {
      spdlog::warn(
          "reload: SigV4 keeps the account_id, region and credentials.kek_file it started with "
          "until a restart");
    }
    auto snap = compile(std::move(config), metrics_, *limiter_, *identity_, generation_ + 1);
    if (!snap) {
      reloads_failed_.fetch_add(1);
      return tl::unexpected(snap.error());
    }
    // Pools and key sets first: the workers get them before the snapshot that uses them.
    if (auto r = identity_->activate((*snap)->config); !r) {
      reloads_failed_.fetch_add(1);
      return r;
    }
    ++generation_;
    snapshot_ = *snap;
    limiter_->activate(snapshot_->limits);
    runtime_->update(snapshot_->config);
    async_->update(snapshot_->config);
    server_->update_limits(server_options(snapshot_->config));
    auto s = snapshot_;
    server_->run_on_all_workers([this, s](unsigned w) {
      pipeline_.install(w, s);
      proxy_.clear(w);
    });
    reloads_ok_.fetch_add(1);
    spdlog::info("reload: configuration generation {} active ({} routes)", generation_,
                 snapshot_->routes.size());
    return {};
  }

  core::Result<void> reload_from_source() override {
    std::string source;
    {
      std::lock_guard lock(reload_mu_);
      source = snapshot_->config.source;
    }
    auto loaded = config::load_file(source);
    if (!loaded) {
      reloads_failed_.fetch_add(1);
      std::string msg = "reload refused, keeping the running configuration:";
      for (const auto& e : loaded.error()) {
        msg += "\n  " + e.to_string();
      }
      return core::make_error(core::ErrorCode::kConfig, msg);
    }
    return reload(std::move(*loaded));
  }

  void run_until_signal() override {
    net::io_context control;
    net::signal_set signals(control, SIGHUP, SIGTERM, SIGINT);
    std::function<void()> wait = [&] {
      signals.async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) {
          return;
        }
        if (sig == SIGHUP) {
          spdlog::info("SIGHUP: reloading {}", snapshot_->config.source);
          auto r = reload_from_source();
          if (!r) {
            spdlog::error("{}", r.error().message);
          }
          wait();
          return;
        }
        spdlog::info("signal {}: draining (up to {} ms)", sig,
                     snapshot_->config.server.shutdown_grace.count());
        control.stop();
      });
    };
    wait();
    // Reload requests from the admin API arrive here too.
    control_ = &control;
    control.run();
    control_ = nullptr;
    stop();
  }

  void stop() override {
    if (stopped_.exchange(true) || !server_) {
      return;
    }
    server_->drain_and_stop(snapshot_->config.server.shutdown_grace);
    async_->stop();     // leases nothing more; what it runs is answered by the runtime's stop
    runtime_->stop();   // after the drain: invocations in flight had the grace period to finish
    identity_->stop();  // hashing work in flight finishes; its replies go nowhere now
    limiter_->stop();   // writes the last quota counts
    sigv4_->stop();
    spdlog::info("stopped");
    if (access_) {
      access_->flush();
    }
  }

  std::uint16_t port() const noexcept override { return server_ ? server_->port() : 0; }

  std::string metrics_text() const override {
    std::string out;
    out.reserve(8192);
    metrics_.render(out);
    const http::ServerStats st = server_->stats();
    out += "# HELP gatehouse_connections_open Client connections currently open.\n";
    out += "# TYPE gatehouse_connections_open gauge\n";
    out += "gatehouse_connections_open " + std::to_string(st.connections_open) + "\n";
    out += "# TYPE gatehouse_connections_accepted_total counter\n";
    out += "gatehouse_connections_accepted_total " + std::to_string(st.connections_accepted) + "\n";
    out += "# HELP gatehouse_wire_refusals_total Connections or requests refused on the wire.\n";
    out += "# TYPE gatehouse_wire_refusals_total counter\n";
    for (std::size_t i = 0; i < st.refusals.size(); ++i) {
      out += "gatehouse_wire_refusals_total{reason=\"";
      out += http::wire_refusal_name(static_cast<http::WireRefusal>(i));
      out += "\"} " + std::to_string(st.refusals[i]) + "\n";
    }
    out += "# TYPE gatehouse_config_reloads_total counter\n";
    out += "gatehouse_config_reloads_total{result=\"ok\"} " + std::to_string(reloads_ok_.load()) +
           "\n";
    out += "gatehouse_config_reloads_total{result=\"failed\"} " +
           std::to_string(reloads_failed_.load()) + "\n";
    out += "# HELP gatehouse_bugs_total Unexpected errors caught at a session's top level.\n";
    out += "# TYPE gatehouse_bugs_total counter\n";
    out += "gatehouse_bugs_total " + std::to_string(st.bugs) + "\n";
    out += runtime_->metrics_text();
    out += async_->metrics_text();
    identity_->metrics(out);
    return out;
  }

  // Called from a worker: runs a reload on the control thread and posts the outcome back.
  void request_reload(net::io_context& worker_ioc, std::function<void(core::Result<void>)> done) {
    net::io_context* control = control_;
    if (control == nullptr) {
      done(core::make_error(core::ErrorCode::kUnavailable, "reload is not available yet"));
      return;
    }
    net::post(*control, [this, &worker_ioc, done = std::move(done)]() mutable {
      auto r = reload_from_source();
      net::post(worker_ioc,
                [r = std::move(r), done = std::move(done)]() mutable { done(std::move(r)); });
    });
  }

  struct AdminReply {
    int status = 200;
    std::string code;  // error code when status >= 400
    std::string body;  // JSON body, or the error message
  };

  // Runs `fn` on the blocking pool (store I/O never runs on an I/O thread), then `done` with its
  // reply back on the worker.
  void run_blocking(net::io_context& worker_ioc, std::function<AdminReply()> fn,
                    std::function<void(AdminReply)> done) {
    net::post(blocking_, [&worker_ioc, fn = std::move(fn), done = std::move(done)]() mutable {
      AdminReply r = fn();
      net::post(worker_ioc,
                [r = std::move(r), done = std::move(done)]() mutable { done(std::move(r)); });
    });
  }

  // The admin API for API keys: GET /keys, POST /keys {"name","plan","stages"},
  // POST /keys/{id or name}/revoke, POST /keys/{id or name}/rotate. Blocking pool only.
  AdminReply admin_keys(std::string method, std::string sub, std::string body,
                        std::shared_ptr<const Snapshot> snap) {
    auth::KeyRegistry keys(*store_, core::system_clock());
    auto fail = [](const core::Error& e) {
      return AdminReply{core::http_status(e.code), std::string(core::error_name(e.code)),
                        e.message};
    };
    auto record = [](const auth::ApiKey& k, const std::string* secret) {
      boost::json::object o;
      o["id"] = k.id;
      o["name"] = k.name;
      o["plan"] = k.plan;
      boost::json::array st;
      for (const auto& s : k.stages) {
        st.emplace_back(s);
      }
      o["stages"] = std::move(st);
      o["revoked"] = k.revoked;
      o["created_ms"] = k.created_ms;
      if (secret != nullptr) {
        o["key"] = *secret;  // shown once
      }
      return o;
    };
    if (sub == "/keys" && method == "GET") {
      auto all = keys.list();
      if (!all) {
        return fail(all.error());
      }
      boost::json::array arr;
      for (const auto& k : *all) {
        arr.emplace_back(record(k, nullptr));
      }
      return AdminReply{200, {}, boost::json::serialize(boost::json::object{{"keys", arr}})};
    }
    // The body of create and attach: {"plan": string, "stages": [string...]} (+ "name" for
    // create). The plan must exist in the config in force, the stages among its stages.
    struct PlanBody {
      std::string name;
      std::string plan;
      std::vector<std::string> stages;
    };
    auto plan_body = [&](bool with_name) -> tl::expected<PlanBody, AdminReply> {
      boost::system::error_code ec;
      auto v = boost::json::parse(body, ec);
      const auto* o = !ec && v.is_object() ? &v.get_object() : nullptr;
      const auto* name = o != nullptr ? o->if_contains("name") : nullptr;
      const auto* plan = o != nullptr ? o->if_contains("plan") : nullptr;
      if ((with_name && (name == nullptr || !name->is_string())) || plan == nullptr ||
          !plan->is_string()) {
        return tl::unexpected(AdminReply{400, "BadRequest",
                                         with_name ? "expected {\"name\": string, \"plan\": string}"
                                                   : "expected {\"plan\": string}"});
      }
      PlanBody out;
      if (with_name) {
        out.name = std::string(name->get_string());
      }
      out.plan = std::string(plan->get_string());
      const config::Plan* p = snap->config.find_plan(out.plan);
      if (p == nullptr) {
        return tl::unexpected(AdminReply{400, "InvalidArgument", "no plan '" + out.plan + "'"});
      }
      if (const auto* st = o->if_contains("stages"); st != nullptr) {
        if (!st->is_array()) {
          return tl::unexpected(AdminReply{400, "BadRequest", "stages must be an array"});
        }
        for (const auto& x : st->get_array()) {
          if (!x.is_string()) {
            return tl::unexpected(AdminReply{400, "BadRequest", "stages must be strings"});
          }
          std::string stage(x.get_string());
          const bool known = std::any_of(snap->config.stages.begin(), snap->config.stages.end(),
                                         [&](const config::Stage& s) { return s.name == stage; });
          const bool in_plan = p->stages.empty() || std::find(p->stages.begin(), p->stages.end(),
                                                              stage) != p->stages.end();
          if (!known || !in_plan) {
            return tl::unexpected(AdminReply{
                400, "InvalidArgument", "plan '" + out.plan + "' has no stage '" + stage + "'"});
          }
          out.stages.push_back(std::move(stage));
        }
      }
      return out;
    };
    if (sub == "/keys" && method == "POST") {
      auto b = plan_body(true);
      if (!b) {
        return b.error();
      }
      auto created = keys.create(std::move(b->name), b->plan, std::move(b->stages));
      if (!created) {
        return fail(created.error());
      }
      limiter_->reload_keys();
      return AdminReply{201, {}, boost::json::serialize(record(created->record, &created->key))};
    }
    constexpr std::string_view kKeys = "/keys/";
    if (method == "POST" && sub.rfind(kKeys, 0) == 0) {
      const std::string rest = sub.substr(kKeys.size());
      const auto slash = rest.rfind('/');
      if (slash != std::string::npos) {
        const std::string ref = rest.substr(0, slash);
        const std::string action = rest.substr(slash + 1);
        if (action == "attach") {
          auto b = plan_body(false);
          if (!b) {
            return b.error();
          }
          auto r = keys.attach(ref, b->plan, std::move(b->stages));
          if (!r) {
            return fail(r.error());
          }
          limiter_->reload_keys();
          return AdminReply{200, {}, boost::json::serialize(record(*r, nullptr))};
        }
        if (action == "revoke") {
          auto r = keys.revoke(ref);
          if (!r) {
            return fail(r.error());
          }
          limiter_->reload_keys();
          return AdminReply{200, {}, boost::json::serialize(record(*r, nullptr))};
        }
        if (action == "rotate") {
          auto r = keys.rotate(ref);
          if (!r) {
            return fail(r.error());
          }
          limiter_->reload_keys();
          return AdminReply{200, {}, boost::json::serialize(record(r->record, &r->key))};
        }
      }
    }
    return AdminReply{404, "NotFound", "no such admin endpoint"};
  }

  void log_access(const http::Exchange& ex, const RequestContext& ctx, std::uint64_t dur_us) {
    if (!access_) {
      return;
    }
    thread_local std::string line;
    line.clear();
    const http::Request& r = ex.request();
    line += "{\"request_id\":\"";
    core::json_escape(line, ex.request_id());
    line += "\",\"remote_ip\":\"";
    core::json_escape(line, ex.remote_ip());
    line += "\",\"method\":\"";
    core::json_escape(line, r.method);
    // The query string is left out on purpose: it may carry credentials (presigned URLs).
    line += "\",\"path\":\"";
    core::json_escape(line, r.path);
    line += "\",\"route\":\"";
    if (ctx.route != nullptr) {
      core::json_escape(line, ctx.route->route->name);
    }
    line += "\",\"stage\":\"";
    core::json_escape(line, ctx.match.stage);
    line += "\",\"principal\":\"";
    core::json_escape(line, ctx.principal.id);
    line += "\",\"status\":" + std::to_string(ex.status());
    line += ",\"duration_us\":" + std::to_string(dur_us);
    line += ",\"bytes_in\":" + std::to_string(r.body.size());
    line += ",\"worker\":" + std::to_string(ex.worker()) + "}";
    access_->info(line);
  }

  // Worker thread of `ex`: invokes, then calls `write(result)` back on that worker and resumes
  // the exchange. The worker's io_context never waits for the function.
  void invoke(http::Exchange& ex, runtime::Invocation inv,
              std::function<void(http::Exchange&, runtime::InvokeResult)> write) {
    auto* ioc = static_cast<net::io_context*>(ex.io_context());
    runtime_->invoke(std::move(inv), [ioc, &ex, token = ex.keep_alive_token(),
                                      write = std::move(write)](runtime::InvokeResult r) mutable {
      net::post(*ioc, [&ex, token = std::move(token), write = std::move(write),
                       r = std::move(r)]() mutable {
        write(ex, std::move(r));
        ex.resume();
      });
    });
  }

  // Worker thread of `ex`: queues an asynchronous invocation, then calls `write(result)` back on
  // that worker once the event is durable (or refused) and resumes the exchange.
  void submit_async(
      http::Exchange& ex, runtime::Invocation inv,
      std::function<void(http::Exchange&, core::Result<runtime::AcceptedEvent>)> write) {
    auto* ioc = static_cast<net::io_context*>(ex.io_context());
    async_->submit(std::move(inv),
                   [ioc, &ex, token = ex.keep_alive_token(),
                    write = std::move(write)](core::Result<runtime::AcceptedEvent> r) mutable {
                     net::post(*ioc, [&ex, token = std::move(token), write = std::move(write),
                                      r = std::move(r)]() mutable {
                       write(ex, std::move(r));
                       ex.resume();
                     });
                   });
  }

  // GET /functions/{name}/dead-letters and POST /functions/{name}/dead-letters/{id}/replay.
  // Blocking pool only.
  AdminReply admin_dead_letters(const std::string& method, const std::string& function,
                                const std::string& event_id) {
    auto fail = [](const core::Error& e) {
      return AdminReply{core::http_status(e.code), std::string(core::error_name(e.code)),
                        e.message};
    };
    if (event_id.empty()) {
      if (method != "GET" && method != "HEAD") {
        return AdminReply{405, "MethodNotAllowed", "use GET"};
      }
      auto list = runtime::list_dead_letters(*store_, function, kMaxDeadLettersListed);
      if (!list) {
        return fail(list.error());
      }
      std::string body = "{\"function\":\"";
      core::json_escape(body, function);
      body += "\",\"dead_letters\":[";
      for (std::size_t i = 0; i < list->size(); ++i) {
        body += (i == 0 ? "" : ",") + runtime::dead_letter_json((*list)[i]);
      }
      body += "]}";
      return AdminReply{200, {}, std::move(body)};
    }
    if (method != "POST") {
      return AdminReply{405, "MethodNotAllowed", "use POST"};
    }
    auto r = async_->replay(function, event_id);
    if (!r) {
      return fail(r.error());
    }
    std::string body = "{\"event_id\":\"";
    core::json_escape(body, r->event_id);
    body += "\",\"message_id\":" + std::to_string(r->message_id) + "}";
    return AdminReply{202, {}, std::move(body)};
  }

  Authenticator& authenticator() { return *authenticate_; }
  SigV4Stage& sigv4() { return *sigv4_; }
  // Blocking pool: the access-key admin API (SigV4Stage::admin).
  AdminReply admin_credentials(const std::string& method, const std::string& sub,
                               const std::string& body, const config::Config& config) {
    CredentialsAdminReply r = sigv4_->admin(method, sub, body, config);
    return AdminReply{r.status, std::move(r.code), std::move(r.body)};
  }
  IdentityService& identity() { return *identity_; }
  // Blocking pool: the identity admin API (user pools, keys).
  AdminReply admin_identity(const std::string& method, const std::string& sub) {
    IdentityAdminReply r = identity_->admin(method, sub);
    return AdminReply{r.status, std::move(r.code), std::move(r.body)};
  }
  Authorizer& authorizer() { return *authorize_; }
  Throttle& throttle() { return *throttle_; }
  Guard& guard() { return *guard_; }
  Metrics& metrics() { return metrics_; }
  Proxy& proxy() { return proxy_; }

 private:
  void setup_access_log(const config::LogConfig& log) {
    spdlog::level::level_enum level = spdlog::level::from_str(log.level);
    spdlog::set_level(level);
    if (log.access_log == "off") {
      return;
    }
    // Asynchronous: workers hand the line to a queue; one thread writes it.
    spdlog::init_thread_pool(65536, 1);
    if (log.access_log == "stdout") {
      access_ = spdlog::create_async_nb<spdlog::sinks::stdout_sink_mt>("access");
    } else if (log.access_log == "stderr") {
      access_ = spdlog::create_async_nb<spdlog::sinks::stderr_sink_mt>("access");
    } else {
      access_ =
          spdlog::create_async_nb<spdlog::sinks::basic_file_sink_mt>("access", log.access_log);
    }
    access_->set_pattern("%v");
    access_->set_level(spdlog::level::info);
    access_->flush_on(spdlog::level::info);
  }

  Stages stages_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Limiter> limiter_;
  std::unique_ptr<SigV4Stage> sigv4_;  // stopped in stop()
  std::unique_ptr<Authorizer> policy_authorize_;
  std::unique_ptr<IdentityService> identity_;  // stopped in stop(), before server_ goes
  RouteAuthenticator route_auth_;
  std::unique_ptr<Guard> pass_guard_;
  Authenticator* authenticate_ = nullptr;  // the stages in effect (owned above)
  Authorizer* authorize_ = nullptr;
  Throttle* throttle_ = nullptr;
  Guard* guard_ = nullptr;
  mutable Metrics metrics_;
  std::unique_ptr<runtime::Runtime> runtime_;     // reset in the destructor before server_
  std::unique_ptr<runtime::AsyncInvoker> async_;  // borrows store_ and runtime_; reset first
  std::unique_ptr<http::Server> server_;          // declared before proxy_: destroyed after it
  Proxy proxy_;
  Pipeline pipeline_;
  std::shared_ptr<spdlog::logger> access_;
  std::mutex reload_mu_;
  std::shared_ptr<const Snapshot> snapshot_;  // control thread's view (guarded by reload_mu_)
  std::uint64_t generation_ = 0;
  std::atomic<std::uint64_t> reloads_ok_{0};
  std::atomic<std::uint64_t> reloads_failed_{0};
  std::atomic<bool> stopped_{false};
  std::atomic<net::io_context*> control_{nullptr};
  net::thread_pool blocking_{1};  // admin store I/O; joined in the destructor before the store goes
};

http::Step Pipeline::on_headers(http::Exchange& ex) {
  auto& c = static_cast<Conn&>(ex.state());
  // Pick up a reloaded snapshot between requests only, so a request never changes config midway.
  const auto& cur = current_[ex.worker()].snap;
  if (c.snapshot.get() != cur.get()) {
    c.snapshot = cur;
  }
  const Snapshot& s = *c.snapshot;
  RequestContext& ctx = c.ctx;
  ctx.snapshot = &s;
  ctx.route = nullptr;
  ctx.route_name = {};
  ctx.worker = ex.worker();
  ctx.limits = s.limits.get();
  ctx.api_key = nullptr;
  ctx.key_state = nullptr;
  ctx.gate_count = 0;
  ctx.request = &ex.request();
  ctx.principal = Principal{};
  ctx.remote_ip = ex.remote_ip();
  ctx.request_id = ex.request_id();
  ctx.function = {};
  ctx.started = ex.started();
  ctx.now = ctx.started;
  ctx.authz = s.authz.get();
  ctx.principal_arn.clear();
  ctx.user_pool = {};
  ctx.claims.clear();
  if (ctx.sigv4) {
    ctx.sigv4->active = false;  // after_body checks only what this request's authenticate began
  }
  c.admitted = false;
  c.builtin = Conn::Builtin::kNone;

  const http::Request& req = ex.request();
  const auto& admin = s.config.admin;
  if (req.path == admin.health_path) {
    c.builtin = Conn::Builtin::kHealth;
  } else if (req.path == admin.metrics_path) {
    c.builtin = Conn::Builtin::kMetrics;
  } else if (req.path.size() >= admin.admin_prefix.size() &&
             req.path.compare(0, admin.admin_prefix.size(), admin.admin_prefix) == 0 &&
             (req.path.size() == admin.admin_prefix.size() ||
              req.path[admin.admin_prefix.size()] == '/')) {
    c.builtin = Conn::Builtin::kAdmin;
  } else if (IdentityService::owns(*s.identity, req.path)) {
    c.builtin = Conn::Builtin::kIdentity;
    return gw_.identity().on_headers(*s.identity, ex);
  }
  if (c.builtin != Conn::Builtin::kNone) {
    return c.builtin == Conn::Builtin::kAdmin ? http::Step::kReadBody : builtin(ex, c);
  }

  if (has_dot_segment(req.path)) {
    return refuse(
        ex, c, Refusal{400, "BadRequest", "dot segments ('.', '..') are not allowed in paths", {}});
  }
  // Route.
  s.router->match(req.method, req.path, ctx.match);
  if (ctx.match.status == http::MatchStatus::kNotFound) {
    return refuse(ex, c, Refusal{404, "RouteNotFound", "no route matches this path", {}});
  }
  if (ctx.match.status == http::MatchStatus::kMethodNotAllowed) {
    thread_local std::string allow;
    allow = "Allow: " + ctx.match.allow + "\r\n";
    return refuse(ex, c,
                  Refusal{405, "MethodNotAllowed", "the route does not accept this method", allow});
  }
  ctx.route_index = ctx.match.route;
  ctx.route = &s.routes[ctx.match.route];
  ctx.route_name = ctx.route->route->name;
  ctx.function = ctx.route->route->target.function;

  Refusal r;
  if (gw_.authenticator().authenticate(ctx, r) == Verdict::kRefuse ||
      gw_.authorizer().authorize(ctx, r) == Verdict::kRefuse) {
    return refuse(ex, c, r);
  }
  if (gw_.throttle().admit(ctx, r) == Verdict::kRefuse) {
    // Only a full concurrency gate is worth waiting for (gates are checked after every rate and
    // quota layer, so those passed): the request waits for a slot, up to concurrency_wait.
    if (r.code == limits::refusal_code(limits::LayerKind::kConcurrency) &&
        s.config.throttling.concurrency_wait.count() > 0 &&
        park(ex, s.config.throttling.concurrency_wait)) {
      return http::Step::kPending;
    }
    return refuse(ex, c, r);
  }
  return after_admission(ex, c);
}

http::Step Pipeline::after_admission(http::Exchange& ex, Conn& c) {
  c.admitted = true;
  Refusal r;
  if (gw_.guard().check(c.ctx, r) == Verdict::kRefuse) {
    return refuse(ex, c, r);
  }
  // A static answer needs no body: answer now unless one was sent (then read and discard it so
  // the connection stays usable).
  const http::Request& req = ex.request();
  if (c.ctx.route->kind == config::Target::Kind::kStatic && req.content_length == 0 &&
      !req.chunked) {
    answer_static(ex, *c.ctx.route);
    return http::Step::kDone;
  }
  return http::Step::kReadBody;
}

bool Pipeline::park(http::Exchange& ex, std::chrono::milliseconds wait) {
  const unsigned w = ex.worker();
  PerWorker& pw = current_[w];
  if (pw.waiting.size() >= kMaxWaiting) {
    return false;
  }
  if (!pw.retry) {
    pw.retry = std::make_unique<net::steady_timer>(*static_cast<net::io_context*>(ex.io_context()));
  }
  pw.waiting.push_back(Waiter{&ex, ex.keep_alive_token(), steady_clock::now() + wait});
  arm_retry(w);
  return true;
}

void Pipeline::arm_retry(unsigned w) {
  PerWorker& pw = current_[w];
  if (pw.retry_armed || pw.waiting.empty() || !pw.retry) {
    return;
  }
  pw.retry_armed = true;
  pw.retry->expires_after(kRetryTick);
  pw.retry->async_wait([this, w](const boost::system::error_code& ec) {
    current_[w].retry_armed = false;
    if (!ec) {
      retry_waiting(w);
    }
  });
}

// Worker w: retries every waiting request in arrival order; admits those whose gates have room,
// refuses those whose wait is over, keeps the rest.
void Pipeline::retry_waiting(unsigned w) {
  PerWorker& pw = current_[w];
  const auto now = steady_clock::now();
  for (std::size_t n = pw.waiting.size(); n > 0; --n) {
    Waiter wt = std::move(pw.waiting.front());
    pw.waiting.pop_front();
    auto& c = static_cast<Conn&>(wt.ex->state());
    Refusal r;
    http::Step step;
    c.ctx.now = now;
    if (gw_.throttle().admit(c.ctx, r) == Verdict::kContinue) {
      step = after_admission(*wt.ex, c);
    } else if (now >= wt.deadline ||
               r.code != limits::refusal_code(limits::LayerKind::kConcurrency)) {
      step = refuse(*wt.ex, c, r);
    } else {
      pw.waiting.push_back(std::move(wt));
      continue;
    }
    // kDone: the answer (static or refusal) is written; kReadBody: status stays 0 and the
    // session reads the body, then calls on_request.
    (void)step;
    wt.ex->resume();
  }
  arm_retry(w);
}

http::Step Pipeline::on_request(http::Exchange& ex) {
  auto& c = static_cast<Conn&>(ex.state());
  if (c.builtin == Conn::Builtin::kIdentity) {
    return gw_.identity().on_request(*c.snapshot->identity, ex);
  }
  if (c.builtin != Conn::Builtin::kNone) {
    return builtin(ex, c);
  }
  if (Refusal r; gw_.sigv4().after_body(ex, c.ctx, r) == Verdict::kRefuse) {
    return refuse(ex, c, r);
  }
  return dispatch(ex, c);
}

http::Step Pipeline::dispatch(http::Exchange& ex, Conn& c) {
  const RouteEntry& e = *c.ctx.route;
  if (e.kind == config::Target::Kind::kStatic) {
    answer_static(ex, e);
    return http::Step::kDone;
  }
  if (e.kind == config::Target::Kind::kFunction) {
    return invoke_route_function(ex, c);
  }
  const http::Request& req = ex.request();
  const config::HttpTarget& t = e.route->target.http;
  std::string path = e.upstream.upstream->base_path + t.path_prefix;
  std::string_view rest = req.path;
  if (t.strip_stage && !c.ctx.match.stage.empty()) {
    rest.remove_prefix(std::min(rest.size(), c.ctx.match.stage.size() + 1));
    if (rest.empty()) {
      rest = "/";
    }
  }
  path.append(rest);
  if (!req.query.empty()) {
    path.push_back('?');
    path.append(req.query);
  }
  gw_.proxy().forward(ex, e.upstream, std::move(path));
  return http::Step::kPending;
}

namespace {

// The caller of a function invoked for the request in `ctx`: its principal (ARN, plan tag), the
// identity policies of its plan and the request's condition keys, for the function's policy.
runtime::CallerContext route_caller(const RequestContext& ctx, const Snapshot& s) {
  runtime::CallerContext caller;
  caller.principal = std::string(ctx.principal.id);
  if (ctx.api_key != nullptr) {
    caller.principal_tags.emplace_back("plan", ctx.api_key->plan);
    if (const config::Plan* plan = s.config.find_plan(ctx.api_key->plan)) {
      caller.policies = plan->compiled;
    }
  }
  fill_context(ctx, caller.conditions);
  return caller;
}

// A runtime refusal or function failure as the uniform JSON error. Function failures tell public
// callers only the error type: the message and stack may hold the function's secrets.
void write_invoke_error(http::Exchange& ex, const runtime::InvokeResult& r, bool detailed,
                        Metrics& metrics) {
  const int status = core::http_status(r.code);
  // The function's policy refused the caller: the same code as a route's refusal.
  const bool denied = r.code == core::ErrorCode::kForbidden;
  const std::string_view code =
      denied ? std::string_view("AccessDenied") : core::error_name(r.code);
  if (denied) {
    metrics.refusal(ex.worker(), code);
  }
  std::string message = r.message;
  if (r.code == core::ErrorCode::kFunctionError) {
    message =
        detailed ? r.error_type + ": " + r.message : "the function failed (" + r.error_type + ")";
  }
  std::string extra;
  if (r.code == core::ErrorCode::kConcurrencyLimit ||
      r.code == core::ErrorCode::kTooManyRequests) {  // async.max_depth
    extra = "Retry-After: 1\r\n";
  }
  if (!r.error_type.empty() &&
      (r.code == core::ErrorCode::kFunctionError || r.code == core::ErrorCode::kFunctionTimedOut)) {
    extra +=
        "X-Amz-Function-Error: " + (detailed ? r.error_type : std::string("Unhandled")) + "\r\n";
  }
  http::write_error(ex.out(), status, code, message, ex.request_id(), ex.keep_alive(), extra);
  ex.set_status(status);
}

}  // namespace

http::Step Pipeline::invoke_route_function(http::Exchange& ex, Conn& c) {
  const RouteEntry& e = *c.ctx.route;
  const config::Route& route = *e.route;
  const http::Request& req = ex.request();
  std::string route_key;
  for (const auto& m : route.methods) {
    route_key += route_key.empty() ? "" : ",";
    route_key += m == "ANY" ? "$default" : m;
  }
  route_key = route.methods.size() == 1 && route.methods[0] == "ANY" ? "ANY " + route.path
                                                                     : route_key + " " + route.path;
  runtime::Invocation inv;
  inv.function = route.target.function;
  inv.caller = route_caller(c.ctx, *c.snapshot);
  inv.caller.source = runtime::SourceKind::kRoute;
  inv.caller.source_name = route.name;
  inv.caller.request_id = std::string(ex.request_id());
  inv.caller.depth = incoming_depth(req) + 1;
  EventContext ev;
  ev.route_key = route_key;
  ev.resource = route.path;
  ev.stage = c.ctx.match.stage;
  ev.request_id = ex.request_id();
  ev.source_ip = ex.remote_ip();
  ev.principal = inv.caller.principal;
  ev.lineage_depth = inv.caller.depth;
  ev.time_epoch_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  ev.match = &c.ctx.match;
  if (route.auth == config::RouteAuth::kJwt) {
    ev.jwt_claims = &c.ctx.claims;
  }
  const config::PayloadFormat format = route.target.payload_format;
  inv.payload = build_event(format, req, ev);
  gw_.invoke(ex, std::move(inv), [this, format](http::Exchange& x, runtime::InvokeResult r) {
    if (!r.ok) {
      write_invoke_error(x, r, false, gw_.metrics());
      return;
    }
    const FunctionHttpResponse resp = map_result(format, r.payload);
    if (!resp.ok) {
      http::write_error(x.out(), 502, "FunctionError",
                        "the function returned an invalid response: " + resp.problem,
                        x.request_id(), x.keep_alive());
      x.set_status(502);
      return;
    }
    http::ResponseWriter w(x.out());
    w.start(resp.status, x.request_id(), x.keep_alive());
    for (const auto& [k, v] : resp.headers) {
      w.header(k, v);
    }
    w.body(resp.content_type, x.request().method == "HEAD" ? std::string_view() : resp.body);
    x.set_status(resp.status);
  });
  return http::Step::kPending;
}

http::Step Pipeline::admin_invoke(http::Exchange& ex, Conn& c, std::string_view function) {
  const http::Request& req = ex.request();
  std::string payload = req.body.empty() ? std::string("{}") : std::string(req.body);
  boost::system::error_code ec;
  (void)boost::json::parse(payload, ec);
  if (ec) {
    return refuse(ex, c, Refusal{400, "BadRequest", "the payload must be JSON", {}});
  }
  runtime::Invocation inv;
  inv.function = std::string(function);
  inv.payload = std::move(payload);
  inv.caller = runtime::admin_caller(c.snapshot->config);
  fill_context(c.ctx, inv.caller.conditions);
  inv.caller.request_id = std::string(ex.request_id());
  inv.caller.depth = incoming_depth(req) + 1;
  // Lambda's Invoke API: X-Amz-Invocation-Type Event queues the event durably and answers 202.
  const std::string_view type = req.header("x-amz-invocation-type");
  if (iequals(type, "Event")) {
    gw_.submit_async(
        ex, std::move(inv), [this](http::Exchange& x, core::Result<runtime::AcceptedEvent> r) {
          if (!r) {  // refused as a synchronous call would be, or not written
            runtime::InvokeResult refused;
            refused.code = r.error().code;
            refused.message = std::move(r.error().message);
            write_invoke_error(x, refused, true, gw_.metrics());
            return;
          }
          std::string body = "{\"event_id\":\"" + r->event_id +
                             "\",\"message_id\":" + std::to_string(r->message_id) + "}";
          http::ResponseWriter w(x.out());
          w.start(202, x.request_id(), x.keep_alive());
          w.header("Cache-Control", "no-store");
          w.header("X-Amz-Request-Id", r->event_id);
          w.body("application/json", body);
          x.set_status(202);
        });
    return http::Step::kPending;
  }
  if (!type.empty() && !iequals(type, "RequestResponse")) {
    return refuse(ex, c,
                  Refusal{400,
                          "InvalidParameterValue",
                          "X-Amz-Invocation-Type must be RequestResponse or Event",
                          {}});
  }
  gw_.invoke(ex, std::move(inv), [this](http::Exchange& x, runtime::InvokeResult r) {
    if (!r.ok) {
      write_invoke_error(x, r, true, gw_.metrics());
      return;
    }
    http::ResponseWriter w(x.out());
    w.start(200, x.request_id(), x.keep_alive());
    w.header("Cache-Control", "no-store");
    if (!r.request_id.empty()) {
      w.header("X-Amz-Request-Id", r.request_id);
    }
    w.header("X-Gatehouse-Cold-Start", r.cold_start ? "true" : "false");
    w.body("application/json", r.payload);
    x.set_status(200);
  });
  return http::Step::kPending;
}

void Pipeline::answer_static(http::Exchange& ex, const RouteEntry& e) {
  std::string& out = ex.out();
  out.append(e.static_head);
  out.append(http::date_header());
  out.append("x-request-id: ");
  out.append(ex.request_id());
  out.append(ex.keep_alive() ? "\r\n" : "\r\nConnection: close\r\n");
  const bool head = ex.request().method == "HEAD";
  out.append(head ? e.static_tail_head : e.static_tail);
  ex.set_status(e.route->target.static_target.status);
}

http::Step Pipeline::refuse(http::Exchange& ex, Conn& c, const Refusal& r) {
  http::write_error(ex.out(), r.status, r.code, r.message, ex.request_id(), ex.keep_alive(),
                    r.extra_headers);
  ex.set_status(r.status);
  gw_.metrics().refusal(ex.worker(), r.code);
  (void)c;
  return http::Step::kDone;
}

namespace {

// The IAM action and admin resource (the part after "admin/") of an admin endpoint
// (docs/policy.md, "The admin API"). Function invocation and paths that are no endpoint get no
// action: the runtime decides invocations (lambda:InvokeFunction), the rest is a 404.
struct AdminAction {
  std::string_view action;
  std::string_view resource;  // points into the path
};

AdminAction admin_action(std::string_view method, std::string_view sub) {
  const bool get = method == "GET" || method == "HEAD";
  const std::string_view whole = sub.substr(std::min<std::size_t>(1, sub.size()));
  if (sub == "/config" && get) {
    return {"gatehouse:GetConfig", whole};
  }
  if (sub == "/reload" && method == "POST") {
    return {"gatehouse:Reload", whole};
  }
  if (sub == "/keys" && (get || method == "POST")) {
    return {get ? "gatehouse:ListKeys" : "gatehouse:CreateKey", whole};
  }
  if (sub == "/credentials" && (get || method == "POST")) {
    return {get ? "gatehouse:ListCredentials" : "gatehouse:CreateCredential", whole};
  }
  constexpr std::string_view kCredentials = "/credentials/";
  if (sub.starts_with(kCredentials) && sub.ends_with("/revoke") && method == "POST") {
    return {"gatehouse:RevokeCredential", sub.substr(1, sub.rfind('/') - 1)};  // credentials/<id>
  }
  // Dead letters of a function's asynchronous events: resource functions/{name}.
  constexpr std::string_view kFunctions = "/functions/";
  constexpr std::string_view kDeadLetters = "/dead-letters";
  if (sub.starts_with(kFunctions)) {
    const std::size_t end = sub.find('/', kFunctions.size());
    const std::string_view fn = sub.substr(1, end == std::string_view::npos ? end : end - 1);
    const std::string_view tail = end == std::string_view::npos ? "" : sub.substr(end);
    if (tail == kDeadLetters && get) {
      return {"gatehouse:ListDeadLetters", fn};
    }
    if (tail.starts_with(kDeadLetters) && tail.ends_with("/replay") && method == "POST") {
      return {"gatehouse:ReplayDeadLetter", fn};
    }
    return {};
  }
  constexpr std::string_view kKeys = "/keys/";
  const std::size_t slash = sub.rfind('/');
  if (!sub.starts_with(kKeys) || method != "POST" || slash < kKeys.size()) {
    return {};
  }
  const std::string_view verb = sub.substr(slash + 1);
  const std::string_view key = sub.substr(1, slash - 1);  // keys/<id or name>
  if (verb == "revoke") {
    return {"gatehouse:RevokeKey", key};
  }
  if (verb == "rotate") {
    return {"gatehouse:RotateKey", key};
  }
  if (verb == "attach") {
    return {"gatehouse:AttachKey", key};
  }
  return {};
}

}  // namespace

std::optional<Refusal> Pipeline::admin_refusal(const http::Exchange& ex, Conn& c,
                                               std::string_view action,
                                               std::string_view resource) const {
  const Snapshot& s = *c.snapshot;
  const std::string& want = s.config.admin.token_sha256;
  std::string_view auth = ex.request().header("authorization");
  constexpr std::string_view kBearer = "Bearer ";
  const Refusal unauthenticated{401, "Unauthenticated", "the admin token is required",
                                "WWW-Authenticate: Bearer\r\n"};
  if (want.empty() || auth.size() <= kBearer.size() ||
      !iequals(auth.substr(0, kBearer.size()), kBearer)) {
    return unauthenticated;
  }
  auth.remove_prefix(kBearer.size());
  // Compare hashes, in constant time: the token itself is never stored.
  if (!core::constant_time_equal(core::sha256_hex(auth), want)) {
    return unauthenticated;
  }
  c.ctx.principal = Principal{"admin", s.authz->admin_arn};
  Refusal denied;
  if (!action.empty() && authorize_admin(c.ctx, action, resource, denied) == Verdict::kRefuse) {
    return denied;
  }
  return std::nullopt;
}

http::Step Pipeline::builtin(http::Exchange& ex, Conn& c) {
  const Snapshot& s = *c.snapshot;
  const http::Request& req = ex.request();
  const bool get = req.method == "GET" || req.method == "HEAD";
  http::ResponseWriter w(ex.out());
  switch (c.builtin) {
    case Conn::Builtin::kHealth:
      if (!get) {
        return refuse(ex, c, Refusal{405, "MethodNotAllowed", "use GET", "Allow: GET, HEAD\r\n"});
      }
      w.start(200, ex.request_id(), ex.keep_alive());
      w.header("Cache-Control", "no-store");
      w.body("application/json", "{\"status\":\"ok\"}");
      ex.set_status(200);
      return http::Step::kDone;
    case Conn::Builtin::kMetrics: {
      if (!get) {
        return refuse(ex, c, Refusal{405, "MethodNotAllowed", "use GET", "Allow: GET, HEAD\r\n"});
      }
      if (!s.config.admin.metrics_public) {
        if (auto refused = admin_refusal(ex, c, "gatehouse:GetMetrics", "metrics")) {
          return refuse(ex, c, *refused);
        }
      }
      w.start(200, ex.request_id(), ex.keep_alive());
      w.body("text/plain; version=0.0.4", gw_.metrics_text());
      ex.set_status(200);
      return http::Step::kDone;
    }
    case Conn::Builtin::kAdmin: {
      if (s.config.admin.token_sha256.empty()) {
        return refuse(
            ex, c,
            Refusal{403, "AdminDisabled", "the admin API is disabled: set admin.token_sha256", {}});
      }
      const std::string_view sub = req.path.substr(s.config.admin.admin_prefix.size());
      const AdminAction a = admin_action(req.method, sub);
      if (auto refused = admin_refusal(ex, c, a.action, a.resource)) {
        return refuse(ex, c, *refused);
      }
      if (sub == "/config" && get) {
        std::string body = "{\"source\":\"";
        core::json_escape(body, s.config.source);
        body += "\",\"generation\":" + std::to_string(s.generation) + ",\"routes\":[";
        for (std::size_t i = 0; i < s.routes.size(); ++i) {
          body += i ? ",{\"name\":\"" : "{\"name\":\"";
          core::json_escape(body, s.routes[i].route->name);
          body += "\",\"path\":\"";
          core::json_escape(body, s.routes[i].route->path);
          body += "\"}";
        }
        body += "]}";
        w.start(200, ex.request_id(), ex.keep_alive());
        w.body("application/json", body);
        ex.set_status(200);
        return http::Step::kDone;
      }
      if (sub == "/reload" && req.method == "POST") {
        auto* ioc = static_cast<net::io_context*>(ex.io_context());
        auto token = ex.keep_alive_token();
        gw_.request_reload(*ioc, [&ex, token](core::Result<void> r) {
          if (r) {
            http::ResponseWriter rw(ex.out());
            rw.start(200, ex.request_id(), ex.keep_alive());
            rw.body("application/json", "{\"reloaded\":true}");
            ex.set_status(200);
          } else {
            http::write_error(ex.out(), 400, "InvalidConfig", r.error().message, ex.request_id(),
                              ex.keep_alive());
            ex.set_status(400);
          }
          ex.resume();
        });
        return http::Step::kPending;
      }
      constexpr std::string_view kFunctions = "/functions/";
      constexpr std::string_view kInvoke = "/invoke";
      constexpr std::string_view kDeadLetters = "/dead-letters";
      constexpr std::string_view kReplay = "/replay";
      // /functions/{name}/dead-letters[/{id}/replay]
      std::function<GatewayImpl::AdminReply()> blocking;
      if (sub == "/credentials" || sub.starts_with("/credentials/")) {
        blocking = [this, method = std::string(req.method), sub = std::string(sub),
                    body = std::string(req.body), snap = c.snapshot] {
          return gw_.admin_credentials(method, sub, body, snap->config);
        };
      } else if (sub.starts_with("/user-pools/")) {
        blocking = [this, method = std::string(req.method), sub = std::string(sub)] {
          return gw_.admin_identity(method, sub);
        };
      } else if (sub == "/keys" || sub.rfind("/keys/", 0) == 0) {
        blocking = [this, method = std::string(req.method), sub = std::string(sub),
                    body = std::string(req.body),
                    snap = c.snapshot] { return gw_.admin_keys(method, sub, body, snap); };
      } else if (sub.starts_with(kFunctions)) {
        const std::string_view rest = sub.substr(kFunctions.size());
        const auto slash = rest.find('/');
        const std::string_view name = rest.substr(0, slash);
        const std::string_view tail = slash == std::string_view::npos ? "" : rest.substr(slash);
        std::string_view event_id;
        bool match = tail == kDeadLetters;
        if (!match && tail.starts_with(kDeadLetters) && tail.ends_with(kReplay) &&
            tail.size() > kDeadLetters.size() + kReplay.size() + 1 &&
            tail[kDeadLetters.size()] == '/') {
          event_id = tail.substr(kDeadLetters.size() + 1,
                                 tail.size() - kDeadLetters.size() - 1 - kReplay.size());
          match = event_id.find('/') == std::string_view::npos;
        }
        if (match && !name.empty()) {
          blocking = [this, method = std::string(req.method), name = std::string(name),
                      event_id = std::string(event_id)] {
            return gw_.admin_dead_letters(method, name, event_id);
          };
        }
      }
      if (blocking) {
        auto* ioc = static_cast<net::io_context*>(ex.io_context());
        auto token = ex.keep_alive_token();
        gw_.run_blocking(*ioc, std::move(blocking), [&ex, token](GatewayImpl::AdminReply r) {
          if (r.status < 400) {
            http::ResponseWriter rw(ex.out());
            rw.start(r.status, ex.request_id(), ex.keep_alive());
            rw.header("Cache-Control", "no-store");
            rw.body("application/json", r.body);
          } else {
            http::write_error(ex.out(), r.status, r.code, r.body, ex.request_id(), ex.keep_alive());
          }
          ex.set_status(r.status);
          ex.resume();
        });
        return http::Step::kPending;
      }
      if (req.method == "POST" && sub.starts_with(kFunctions) && sub.ends_with(kInvoke) &&
          sub.size() > kFunctions.size() + kInvoke.size()) {
        return admin_invoke(
            ex, c, sub.substr(kFunctions.size(), sub.size() - kFunctions.size() - kInvoke.size()));
      }
      return refuse(ex, c, Refusal{404, "NotFound", "no such admin endpoint", {}});
    }
    case Conn::Builtin::kNone:
    case Conn::Builtin::kIdentity:
      break;
  }
  return refuse(ex, c, Refusal{500, "InternalError", "unreachable", {}});
}

void Pipeline::on_complete(http::Exchange& ex) {
  auto& c = static_cast<Conn&>(ex.state());
  if (c.admitted) {
    c.admitted = false;
    gw_.throttle().release(c.ctx);
    // A slot came free: requests waiting on this worker retry on the next turn of its loop
    // (not from here, inside another session's completion). Other workers' waiters see it at
    // their next tick.
    PerWorker& pw = current_[ex.worker()];
    if (!pw.waiting.empty() && !pw.retry_posted) {
      pw.retry_posted = true;
      const unsigned w = ex.worker();
      net::post(*static_cast<net::io_context*>(ex.io_context()), [this, w] {
        current_[w].retry_posted = false;
        retry_waiting(w);
      });
    }
  }
  const auto now = steady_clock::now();
  const auto dur = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(now - ex.started()).count());
  const std::uint32_t slot = c.ctx.route != nullptr ? c.ctx.route->metric_slot : Metrics::kNoRoute;
  gw_.metrics().record(ex.worker(), slot, ex.status(), dur);
  gw_.log_access(ex, c.ctx, dur / 1000);
  c.ctx.route = nullptr;
}

}  // namespace

core::Result<std::unique_ptr<Gateway>> Gateway::create(config::Config config, Stages stages) {
  auto st = store::open(config.store.state, core::system_clock());
  if (!st) {
    return tl::unexpected(st.error());
  }
  unsigned workers = config.server.threads;
  if (workers == 0) {
    workers = std::max(1u, std::thread::hardware_concurrency());
  }
  auto gw = std::make_unique<GatewayImpl>(std::move(stages), std::move(*st), workers);
  auto r = gw->init(std::move(config));
  if (!r) {
    return tl::unexpected(r.error());
  }
  return std::unique_ptr<Gateway>(std::move(gw));
}

}  // namespace gatehouse::gateway
