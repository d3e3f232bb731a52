// The function runtime: registry, supervisor, Lambda Runtime API server and exec runner.
//
// Everything below runs on one thread (ioc_), so the supervisor's state needs no locks; forks
// and cgroup cleanup run on the spawner pool and post their results back. Each lambda worker
// process gets its own loopback listener (created inside its network namespace and handed to
// us), so a connection's listener tells which worker is calling and /next hands a worker only
// its own function's events.
#include "runtime/runtime.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json.hpp>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/sandbox.h"

namespace gatehouse::runtime {
namespace {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using std::chrono::steady_clock;
using namespace std::chrono_literals;
using core::ErrorCode;

constexpr std::size_t kMaxResponseBytes = 6 * 1024 * 1024;  // Lambda's synchronous limit
constexpr std::size_t kMaxErrorBytes = 256 * 1024;
constexpr auto kInitTimeout = 10s;  // a worker must ask for work this soon after it starts
constexpr auto kSweepInterval = 100ms;
constexpr auto kMaxBackoff = 60s;
constexpr std::string_view kApiPrefix = "/2018-06-01/runtime/";

std::string error_doc(std::string_view type, std::string_view message) {
  boost::json::object o;
  o["errorType"] = type;
  o["errorMessage"] = message;
  o["stackTrace"] = boost::json::array();
  return boost::json::serialize(o);
}

InvokeResult failure(ErrorCode code, std::string type, std::string message) {
  InvokeResult r;
  r.ok = false;
  r.code = code;
  r.payload = error_doc(type, message);
  r.error_type = std::move(type);
  r.message = std::move(message);
  return r;
}

std::string uuid() {
  std::string h = core::random_hex(16);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

std::string_view source_prefix(SourceKind k) {
  switch (k) {
    case SourceKind::kRoute:
      return "route:";
    case SourceKind::kTrigger:
      return "trigger:";
    case SourceKind::kWorkflow:
      return "workflow:";
    case SourceKind::kDirect:
      break;
  }
  return "direct:";
}

// "route", "trigger", "workflow" or "direct" (gatehouse:SourceKind).
std::string_view source_kind_name(SourceKind k) {
  const std::string_view prefix = source_prefix(k);
  return prefix.substr(0, prefix.size() - 1);
}

// The settings that shape a process: a change means old workers must not take new work.
std::string process_key(const config::FunctionConfig& f) {
  std::string k = std::to_string(static_cast<int>(f.runtime)) + '\0' + f.working_dir + '\0' +
                  f.handler + '\0' + std::to_string(f.memory_mb) + '\0' +
                  std::to_string(f.max_pids) + '\0' +
                  std::to_string(static_cast<int>(f.sandbox.network)) + '\0' +
                  std::to_string(f.sandbox.tmp_mb) + '\0' + f.role + '\0';
  for (const auto& a : f.command) {
    k += a + '\x01';
  }
  for (const auto& [n, v] : f.env) {
    k += n + '=' + v + '\x01';
  }
  return k;
}

struct Pending {
  Invocation inv;
  InvokeCallback done;
  steady_clock::time_point enqueued;
  bool cold_start = false;
};

struct Counters {
  std::atomic<std::uint64_t> ok{0}, function_error{0}, timed_out{0}, throttled{0}, refused{0},
      cold_starts{0}, oom_kills{0}, crashes{0};
  std::atomic<std::int64_t> workers{0};
};

struct Function;
class RuntimeImpl;

class ApiConn;

struct Worker {
  enum class State : std::uint8_t { kSpawning, kStarting, kIdle, kBusy, kDead };
  Worker(net::io_context& ioc, Function& f, std::uint64_t id)
      : fn(&f), id(id), pidfd(ioc), out(ioc), err(ioc), in(ioc), deadline(ioc) {}
  Function* fn;
  std::uint64_t id;
  State state = State::kSpawning;
  std::uint64_t generation = 0;  // the Function::generation it was started with
  detail::Spawned proc;
  net::posix::stream_descriptor pidfd, out, err, in;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::shared_ptr<ApiConn> parked;   // a /next waiting for work (kIdle); owned here, as no
                                     // operation is pending on it while it waits
  std::unique_ptr<Pending> current;  // kBusy
  std::string current_id;            // the Lambda request id of `current`
  net::steady_timer deadline;
  steady_clock::time_point started_at{};
  steady_clock::time_point idle_since{};
  bool reached_next = false;  // asked for work at least once (init succeeded)
  bool killed_for_timeout = false;
  bool retired = false;
  bool served_any = false;  // took an invocation: later ones are warm  // stopped on purpose (idle, config change, shutdown): not a failure
  std::string init_error;  // from /init/error
  std::string stdout_buf;  // exec: the result; lambda: log line assembly
  std::string stderr_buf;
  bool stdout_overflow = false;
  bool exited = false;
  bool stdout_closed = false;
  int wait_status = 0;
  std::array<char, 16 * 1024> out_chunk{};
  std::array<char, 16 * 1024> err_chunk{};
};

struct Function {
  std::shared_ptr<const config::FunctionConfig> cfg;
  std::string key;  // process_key(cfg)
  std::uint64_t generation = 0;
  std::map<std::uint64_t, std::shared_ptr<Worker>> workers;
  std::deque<std::unique_ptr<Pending>> queue;
  std::uint32_t init_failures = 0;
  steady_clock::time_point spawn_allowed_at{};
  std::string last_init_error;
  std::shared_ptr<Counters> counters;
  bool removed = false;

  [[nodiscard]] std::size_t starting() const {
    std::size_t n = 0;
    for (const auto& [id, w] : workers) {
      n += w->state == Worker::State::kSpawning || w->state == Worker::State::kStarting;
    }
    return n;
  }
  // Workers that will ask for work soon: starting, or between their answer and their next
  // /next. Queued work waits for them rather than starting more processes.
  [[nodiscard]] std::size_t soon_available() const {
    std::size_t n = 0;
    for (const auto& [id, w] : workers) {
      n += w->state == Worker::State::kSpawning || w->state == Worker::State::kStarting ||
           (w->state == Worker::State::kIdle && !w->parked && w->generation == generation);
    }
    return n;
  }
};

// One connection from a worker to its Runtime API listener. Requests are read one at a time;
// a /next may stay parked until work arrives.
class ApiConn : public std::enable_shared_from_this<ApiConn> {
 public:
  ApiConn(RuntimeImpl& rt, std::weak_ptr<Worker> w, tcp::socket s)
      : rt_(rt), worker_(std::move(w)), socket_(std::move(s)) {}
  void start() { read(); }
  void reply(unsigned status, std::string body,
             std::vector<std::pair<std::string, std::string>> headers = {});
  void close() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

 private:
  void read();
  void on_request(const boost::system::error_code& ec);

  RuntimeImpl& rt_;
  std::weak_ptr<Worker> worker_;
  tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::string_body> res_;
  bool keep_alive_ = true;
};

class RuntimeImpl final : public Runtime {
 public:
  RuntimeImpl(const config::Config& config, Options options)
      : options_(options), sweep_(ioc_), work_(net::make_work_guard(ioc_)) {
    host_ = detail::detect_host();
    for (const auto& w : host_.warnings) {
      spdlog::warn("{}", w);
    }
    apply(config);
    thread_ = std::thread([this] { ioc_.run(); });
    net::post(ioc_, [this] { sweep(); });
  }
  ~RuntimeImpl() override { stop(); }

  void invoke(Invocation inv, InvokeCallback done) override {
    if (stopped_.load()) {
      done(failure(ErrorCode::kUnavailable, "Runtime.Stopped", "the runtime is stopping"));
      return;
    }
    auto p = std::make_unique<Pending>();
    p->inv = std::move(inv);
    p->done = std::move(done);
    net::post(ioc_, [this, p = std::move(p)]() mutable { admit(std::move(p)); });
  }

  void update(const config::Config& config) override {
    net::post(ioc_, [this, c = config]() { apply(c); });
  }

  std::string metrics_text() const override {
    std::lock_guard lock(counters_mu_);
    std::string out;
    out += "# HELP gatehouse_function_invocations_total Function invocations by result.\n";
    out += "# TYPE gatehouse_function_invocations_total counter\n";
    auto line = [&](const std::string& fn, std::string_view result, std::uint64_t v) {
      out += "gatehouse_function_invocations_total{function=\"" + fn + "\",result=\"" +
             std::string(result) + "\"} " + std::to_string(v) + "\n";
    };
    for (const auto& [name, c] : counters_) {
      line(name, "ok", c->ok);
      line(name, "function_error", c->function_error);
      line(name, "timed_out", c->timed_out);
      line(name, "throttled", c->throttled);
      line(name, "refused", c->refused);
    }
    out += "# TYPE gatehouse_function_cold_starts_total counter\n";
    for (const auto& [name, c] : counters_) {
      out += "gatehouse_function_cold_starts_total{function=\"" + name + "\"} " +
             std::to_string(c->cold_starts) + "\n";
    }
    out += "# TYPE gatehouse_function_oom_kills_total counter\n";
    for (const auto& [name, c] : counters_) {
      out += "gatehouse_function_oom_kills_total{function=\"" + name + "\"} " +
             std::to_string(c->oom_kills) + "\n";
    }
    out += "# TYPE gatehouse_function_crashes_total counter\n";
    for (const auto& [name, c] : counters_) {
      out += "gatehouse_function_crashes_total{function=\"" + name + "\"} " +
             std::to_string(c->crashes) + "\n";
    }
    out += "# TYPE gatehouse_function_workers gauge\n";
    for (const auto& [name, c] : counters_) {
      out += "gatehouse_function_workers{function=\"" + name + "\"} " +
             std::to_string(c->workers) + "\n";
    }
    return out;
  }

  void stop() override {
    if (stopped_.exchange(true)) {
      return;
    }
    if (thread_.joinable()) {
      std::promise<void> done;
      net::post(ioc_, [this, &done] {
        shutdown();
        done.set_value();
      });
      done.get_future().wait();
      work_.reset();
      ioc_.stop();
      thread_.join();
    }
    spawner_.join();
    detail::cleanup_host(host_);
  }

  // --- called by ApiConn (runtime thread) ---------------------------------------------------
  void on_api_request(const std::shared_ptr<ApiConn>& conn, const std::shared_ptr<Worker>& w,
                      const bhttp::request<bhttp::string_body>& req, bool too_large);

 private:
  // Runtime thread from here on.
  void apply(const config::Config& config) {
    max_depth_ = config.runtime.max_lineage_depth;
    region_ = config.region;
    account_ = config.account_id;
    run_as_uid_ = config.runtime.run_as_uid;
    run_as_gid_ = config.runtime.run_as_gid;
    for (auto& [name, f] : functions_) {
      f->removed = true;
    }
    for (const auto& fc : config.functions) {
      if (fc.runtime == config::FunctionRuntime::kNone) {
        continue;
      }
      auto& slot = functions_[fc.name];
      if (!slot) {
        slot = std::make_unique<Function>();
        std::lock_guard lock(counters_mu_);
        auto& c = counters_[fc.name];
        if (!c) {
          c = std::make_shared<Counters>();
        }
        slot->counters = c;
      }
      slot->removed = false;
      slot->cfg = std::make_shared<config::FunctionConfig>(fc);
      const std::string key = process_key(fc);
      if (key != slot->key) {
        slot->key = key;
        ++slot->generation;
        slot->init_failures = 0;
        slot->spawn_allowed_at = {};
      }
    }
    for (auto& [name, f] : functions_) {
      if (f->removed) {
        ++f->generation;
        while (!f->queue.empty()) {
          finish(*f, std::move(f->queue.front()),
                 failure(ErrorCode::kNotFound, "ResourceNotFound",
                         "function '" + name + "' was removed"));
          f->queue.pop_front();
        }
      }
      retire_idle(*f);
    }
  }

  // Stops idle workers of an older generation (their process settings changed).
  void retire_idle(Function& f) {
    std::vector<std::shared_ptr<Worker>> old;
    for (auto& [id, w] : f.workers) {
      if (w->generation != f.generation && w->state == Worker::State::kIdle) {
        old.push_back(w);
      }
    }
    for (auto& w : old) {
      w->retired = true;
      kill_worker(*w);
    }
  }

  void admit(std::unique_ptr<Pending> p) {
    p->enqueued = steady_clock::now();
    const auto it = functions_.find(p->inv.function);
    if (it == functions_.end() || it->second->removed) {
      reply(std::move(p), failure(ErrorCode::kNotFound, "ResourceNotFound",
                                  "no function '" + p->inv.function + "' with a runtime"));
      return;
    }
    Function& f = *it->second;
    if (p->inv.caller.depth > max_depth_) {
      f.counters->refused.fetch_add(1, std::memory_order_relaxed);
      reply(std::move(p),
            failure(ErrorCode::kRecursiveInvocation, "RecursiveInvocationStopped",
                    "lineage depth " + std::to_string(p->inv.caller.depth) +
                        " is over runtime.max_lineage_depth " + std::to_string(max_depth_)));
      return;
    }
    if (const policy::Decision d = authorize_invocation(*f.cfg, p->inv.caller); !d.allowed()) {
      f.counters->refused.fetch_add(1, std::memory_order_relaxed);
      reply(std::move(p),
            failure(ErrorCode::kForbidden, "AccessDenied",
                    "the caller may not invoke '" + p->inv.function + "' (" + d.explain() + ")"));
      return;
    }
    const auto now = steady_clock::now();
    if (!f.last_init_error.empty() && now < f.spawn_allowed_at && idle_worker(f) == nullptr &&
        f.starting() == 0) {
      // Crash-looping at start: answer with the init error instead of forking again.
      f.counters->function_error.fetch_add(1, std::memory_order_relaxed);
      reply(std::move(p), failure(ErrorCode::kFunctionError, "Runtime.InitError",
                                  f.last_init_error + " (retrying after a back-off)"));
      return;
    }
    f.queue.push_back(std::move(p));
    dispatch(f);
    const bool lambda = f.cfg->runtime == config::FunctionRuntime::kLambda;
    const std::size_t served_soon = lambda ? f.soon_available() : 0;
    const std::size_t waiting = f.queue.size() > served_soon ? f.queue.size() - served_soon : 0;
    if (waiting > f.cfg->max_queue) {
      auto last = std::move(f.queue.back());
      f.queue.pop_back();
      f.counters->throttled.fetch_add(1, std::memory_order_relaxed);
      reply(std::move(last),
            failure(ErrorCode::kConcurrencyLimit, "ConcurrencyLimit",
                    "function '" + f.cfg->name + "' has " +
                        std::to_string(f.cfg->reserved_concurrency) +
                        " workers busy and its queue of " + std::to_string(f.cfg->max_queue) +
                        " is full"));
    }
  }

  Worker* idle_worker(Function& f) {
    for (auto& [id, w] : f.workers) {
      if (w->state == Worker::State::kIdle && w->generation == f.generation && w->parked) {
        return w.get();
      }
    }
    return nullptr;
  }

  // Hands queued invocations to idle workers, and starts workers while below reserved
  // concurrency and more work waits than workers are starting.
  void dispatch(Function& f) {
    const bool lambda = f.cfg->runtime == config::FunctionRuntime::kLambda;
    while (!f.queue.empty()) {
      if (lambda) {
        if (Worker* w = idle_worker(f)) {
          assign(*w, std::move(f.queue.front()));
          f.queue.pop_front();
          continue;
        }
        if (f.queue.size() <= f.soon_available()) {
          return;
        }
      }
      if (f.workers.size() >= f.cfg->reserved_concurrency) {
        retire_idle(f);  // an old-generation idle worker frees a slot once it is gone
        return;
      }
      if (steady_clock::now() < f.spawn_allowed_at) {
        return;  // the sweep retries after the back-off
      }
      if (lambda) {
        start_worker(f, nullptr);
      } else {
        auto p = std::move(f.queue.front());
        f.queue.pop_front();
        start_worker(f, std::move(p));
      }
    }
  }

  std::vector<std::string> environment(const config::FunctionConfig& fc) const {
    std::vector<std::string> env;
    env.emplace_back("PATH=/usr/local/bin:/usr/bin:/bin");
    env.emplace_back("LANG=C.UTF-8");
    env.emplace_back("TZ=:UTC");
    env.emplace_back("HOME=/tmp");
    env.emplace_back("AWS_REGION=" + region_);
    env.emplace_back("AWS_DEFAULT_REGION=" + region_);
    env.emplace_back("AWS_EXECUTION_ENV=gatehouse");
    env.emplace_back("AWS_LAMBDA_FUNCTION_NAME=" + fc.name);
    env.emplace_back("AWS_LAMBDA_FUNCTION_VERSION=$LATEST");
    env.emplace_back("AWS_LAMBDA_FUNCTION_MEMORY_SIZE=" + std::to_string(fc.memory_mb));
    env.emplace_back("AWS_LAMBDA_LOG_GROUP_NAME=/gatehouse/functions/" + fc.name);
    env.emplace_back("AWS_LAMBDA_LOG_STREAM_NAME=" + core::random_hex(8));
    env.emplace_back("AWS_LAMBDA_INITIALIZATION_TYPE=on-demand");
    env.emplace_back("LAMBDA_TASK_ROOT=" + (fc.working_dir.empty() ? std::string(".") : fc.working_dir));
    env.emplace_back("LAMBDA_RUNTIME_DIR=" +
                     (fc.working_dir.empty() ? std::string(".") : fc.working_dir));
    if (!fc.handler.empty()) {
      env.emplace_back("_HANDLER=" + fc.handler);
    }
    if (!fc.role.empty()) {
      env.emplace_back("GATEHOUSE_ROLE=" + fc.role);
      env.emplace_back("GATEHOUSE_ROLE_ARN=" + policy::role_arn(account_, fc.role));
    }
    for (const auto& [k, v] : fc.env) {
      env.emplace_back(k + "=" + v);
    }
    return env;
  }

  // Forks on the spawner pool; `first` (exec) is the invocation the process is for.
  void start_worker(Function& f, std::unique_ptr<Pending> first) {
    const auto& fc = *f.cfg;
    auto w = std::make_shared<Worker>(ioc_, f, ++next_worker_);
    w->generation = f.generation;
    w->started_at = steady_clock::now();
    f.workers.emplace(w->id, w);
    f.counters->workers.fetch_add(1, std::memory_order_relaxed);
    f.counters->cold_starts.fetch_add(1, std::memory_order_relaxed);
    const bool lambda = fc.runtime == config::FunctionRuntime::kLambda;
    if (first) {
      first->cold_start = true;
      w->current = std::move(first);
      w->state = Worker::State::kBusy;
    }
    detail::SpawnSpec spec;
    spec.argv = fc.command;
    spec.env = environment(fc);
    spec.working_dir = fc.working_dir;
    spec.name = fc.name + "-" + std::to_string(w->id);
    spec.runtime_api = lambda;
    spec.network = fc.sandbox.network;
    spec.tmp_bytes = std::uint64_t{fc.sandbox.tmp_mb} * 1024 * 1024;
    spec.hostname = fc.name;
    spec.stdin_pipe = !lambda;
    spec.memory_bytes = std::uint64_t{fc.memory_mb} * 1024 * 1024;
    spec.max_pids = fc.max_pids;
    spec.drop_privileges = host_.root && options_.drop_privileges_when_root;
    spec.uid = run_as_uid_;
    spec.gid = run_as_gid_;
    net::post(spawner_, [this, w, spec = std::move(spec)] {
      auto r = detail::spawn(spec, host_);
      net::post(ioc_, [this, w, r = std::move(r)]() mutable { on_spawned(w, std::move(r)); });
    });
  }

  void on_spawned(const std::shared_ptr<Worker>& w, core::Result<detail::Spawned> r) {
    Function& f = *w->fn;
    if (!r) {
      spdlog::error("function {}: {}", f.cfg->name, r.error().message);
      w->state = Worker::State::kDead;
      remove_worker(*w);
      note_init_failure(f, "Runtime.StartError: " + r.error().message);
      if (w->current) {
        finish(f, std::move(w->current),
               failure(ErrorCode::kFunctionError, "Runtime.StartError", r.error().message));
      }
      fail_queue_on_init_error(f);
      return;
    }
    w->proc = std::move(*r);
    if (stopped_.load() || w->state == Worker::State::kDead) {
      detail::kill_tree(w->proc);
    }
    w->pidfd.assign(w->proc.pidfd);
    w->proc.pidfd = -1;  // owned by the descriptor now
    w->out.assign(w->proc.stdout_fd);
    w->proc.stdout_fd = -1;
    w->err.assign(w->proc.stderr_fd);
    w->proc.stderr_fd = -1;
    w->pidfd.async_wait(net::posix::stream_descriptor::wait_read,
                        [this, w](const boost::system::error_code& ec) {
                          if (!ec) {
                            on_exit(w);
                          }
                        });
    read_output(w, true);
    read_output(w, false);
    if (f.cfg->runtime == config::FunctionRuntime::kLambda) {
      w->acceptor = std::make_unique<tcp::acceptor>(ioc_);
      boost::system::error_code ec;
      w->acceptor->assign(tcp::v4(), w->proc.api_listener, ec);
      w->proc.api_listener = -1;
      if (ec) {
        kill_worker(*w);
        return;
      }
      w->state = Worker::State::kStarting;
      accept(w);
    } else {
      w->in.assign(w->proc.stdin_fd);
      w->proc.stdin_fd = -1;
      arm_deadline(w);
      auto payload = std::make_shared<std::string>(w->current->inv.payload);
      net::async_write(w->in, net::buffer(*payload),
                       [w, payload](const boost::system::error_code&, std::size_t) {
                         boost::system::error_code ignored;
                         w->in.close(ignored);
                       });
    }
  }

  void accept(const std::shared_ptr<Worker>& w) {
    w->acceptor->async_accept([this, w](const boost::system::error_code& ec, tcp::socket s) {
      if (ec || w->state == Worker::State::kDead) {
        return;
      }
      std::make_shared<ApiConn>(*this, w, std::move(s))->start();
      accept(w);
    });
  }

  void read_output(const std::shared_ptr<Worker>& w, bool is_stdout) {
    auto& d = is_stdout ? w->out : w->err;
    auto& chunk = is_stdout ? w->out_chunk : w->err_chunk;
    d.async_read_some(net::buffer(chunk), [this, w, is_stdout](const boost::system::error_code& ec,
                                                               std::size_t n) {
      const bool exec = w->fn->cfg->runtime == config::FunctionRuntime::kExec;
      auto& chunk = is_stdout ? w->out_chunk : w->err_chunk;
      auto& buf = is_stdout ? w->stdout_buf : w->stderr_buf;
      if (n > 0) {
        if (exec && is_stdout) {
          if (buf.size() + n > kMaxResponseBytes) {
            w->stdout_overflow = true;
            detail::kill_tree(w->proc);
          } else {
            buf.append(chunk.data(), n);
          }
        } else {
          buf.append(chunk.data(), n);
          log_lines(*w, buf, false);
        }
      }
      if (ec) {
        if (!(exec && is_stdout)) {
          log_lines(*w, buf, true);
        }
        if (is_stdout) {
          w->stdout_closed = true;
          maybe_finish_exec(w);
        }
        return;
      }
      read_output(w, is_stdout);
    });
  }

  // Function output goes to our log, a line at a time, each line cut at 8 KiB.
  static void log_lines(Worker& w, std::string& buf, bool flush) {
    std::size_t start = 0;
    for (;;) {
      const auto nl = buf.find('\n', start);
      if (nl == std::string::npos) {
        break;
      }
      spdlog::info("function {} [{}]: {}", w.fn->cfg->name, w.proc.pid,
                   std::string_view(buf).substr(start, std::min<std::size_t>(nl - start, 8192)));
      start = nl + 1;
    }
    buf.erase(0, start);
    if ((flush && !buf.empty()) || buf.size() > 8192) {
      spdlog::info("function {} [{}]: {}", w.fn->cfg->name, w.proc.pid,
                   std::string_view(buf).substr(0, 8192));
      buf.clear();
    }
  }

  void arm_deadline(const std::shared_ptr<Worker>& w) {
    w->deadline.expires_after(std::chrono::seconds(w->fn->cfg->timeout_s));
    w->deadline.async_wait([this, w](const boost::system::error_code& ec) {
      if (ec || w->state != Worker::State::kBusy) {
        return;
      }
      w->killed_for_timeout = true;
      kill_worker(*w);
    });
  }

  void assign(Worker& w, std::unique_ptr<Pending> p) {
    auto conn = std::move(w.parked);
    w.state = Worker::State::kBusy;
    w.current_id = uuid();
    const auto& fc = *w.fn->cfg;
    const auto deadline_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 (std::chrono::system_clock::now() +
                                  std::chrono::seconds(fc.timeout_s))
                                     .time_since_epoch())
                                 .count();
    const CallerContext& c = p->inv.caller;
    boost::json::object custom;
    custom["gatehouse-principal"] = c.principal;
    custom["gatehouse-source"] = std::string(source_prefix(c.source)) + c.source_name;
    custom["gatehouse-source-detail"] = c.detail;
    custom["gatehouse-request-id"] = c.request_id;
    custom["gatehouse-lineage-depth"] = std::to_string(c.depth);
    boost::json::object client_context;
    client_context["custom"] = std::move(custom);
    client_context["client"] = boost::json::object();
    client_context["env"] = boost::json::object();
    std::vector<std::pair<std::string, std::string>> headers{
        {"Lambda-Runtime-Aws-Request-Id", w.current_id},
        {"Lambda-Runtime-Deadline-Ms", std::to_string(deadline_ms)},
        {"Lambda-Runtime-Invoked-Function-Arn",
         "arn:aws:lambda:" + region_ + ":" + account_ + ":function:" + fc.name},
        {"Lambda-Runtime-Trace-Id",
         "Root=1-" + core::random_hex(4) + "-" + core::random_hex(12) + ";Sampled=0"},
        {"Lambda-Runtime-Client-Context", boost::json::serialize(client_context)},
        {"Gatehouse-Lineage-Depth", std::to_string(c.depth)},
        {"Gatehouse-Principal", c.principal},
        {"Gatehouse-Source", std::string(source_prefix(c.source)) + c.source_name},
        {"Content-Type", "application/json"}};
    std::string body = p->inv.payload;
    p->cold_start = !w.served_any;
    w.served_any = true;
    w.current = std::move(p);
    auto self = w.fn->workers.at(w.id);
    arm_deadline(self);
    conn->reply(200, std::move(body), std::move(headers));
  }

  void finish(Function& f, std::unique_ptr<Pending> p, InvokeResult r) {
    if (r.ok) {
      f.counters->ok.fetch_add(1, std::memory_order_relaxed);
    } else if (r.code == ErrorCode::kFunctionTimedOut) {
      f.counters->timed_out.fetch_add(1, std::memory_order_relaxed);
    } else if (r.code == ErrorCode::kFunctionError) {
      f.counters->function_error.fetch_add(1, std::memory_order_relaxed);
    }
    r.cold_start = p->cold_start;
    reply(std::move(p), std::move(r));
  }

  static void reply(std::unique_ptr<Pending> p, InvokeResult r) {
    auto done = std::move(p->done);
    done(std::move(r));
  }

  void kill_worker(Worker& w) {
    if (w.state == Worker::State::kDead) {
      return;
    }
    if (w.proc.pid > 0) {
      detail::kill_tree(w.proc);
    } else {
      w.state = Worker::State::kDead;  // still spawning: killed once the fork reports back
    }
  }

  void remove_worker(Worker& w) {
    Function& f = *w.fn;
    w.state = Worker::State::kDead;
    boost::system::error_code ec;
    w.deadline.cancel();
    if (w.acceptor) {
      w.acceptor->close(ec);
    }
    if (auto conn = std::move(w.parked)) {
      conn->close();
    }
    w.in.close(ec);
    if (f.workers.erase(w.id) > 0) {
      f.counters->workers.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  void note_init_failure(Function& f, std::string message) {
    ++f.init_failures;
    const auto backoff =
        std::min<std::chrono::milliseconds>(kMaxBackoff, 500ms * (1 << std::min(f.init_failures, 8u)));
    f.spawn_allowed_at = steady_clock::now() + backoff;
    f.last_init_error = std::move(message);
    spdlog::warn("function {}: init failed ({}); next start in {} ms", f.cfg->name,
                 f.last_init_error, backoff.count());
  }

  void fail_queue_on_init_error(Function& f) {
    const std::size_t keep = f.starting();
    while (f.queue.size() > keep) {
      auto p = std::move(f.queue.back());
      f.queue.pop_back();
      finish(f, std::move(p),
             failure(ErrorCode::kFunctionError, "Runtime.InitError", f.last_init_error));
    }
  }

  static std::string describe_exit(int status) {
    if (WIFEXITED(status)) {
      return "exited with code " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
      return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
             strsignal(WTERMSIG(status)) + ")";
    }
    return "stopped";
  }

  void on_exit(const std::shared_ptr<Worker>& w) {
    const int status = detail::reap(w->proc);
    w->exited = true;
    w->wait_status = status;
    Function& f = *w->fn;
    const bool oom = detail::oom_killed(w->proc, host_);
    if (oom) {
      f.counters->oom_kills.fetch_add(1, std::memory_order_relaxed);
    }
    // Children left behind die with their worker; then the cgroups are removed off-thread.
    detail::kill_tree(w->proc);
    w->pidfd.close();
    if (f.cfg->runtime == config::FunctionRuntime::kExec) {
      maybe_finish_exec(w);
      return;
    }
    const std::string how = describe_exit(status);
    const auto state = w->state;
    remove_worker(*w);
    cleanup(w);
    if (!w->reached_next) {
      std::string msg = !w->init_error.empty() ? w->init_error : "the worker " + how + " during init";
      if (oom) {
        msg += " (its memory limit of " + std::to_string(f.cfg->memory_mb) + " MB was exceeded)";
      }
      if (!stopped_.load() && !w->retired) {
        note_init_failure(f, msg);
        fail_queue_on_init_error(f);
      }
    } else if (state == Worker::State::kBusy && w->current) {
      InvokeResult r;
      if (w->killed_for_timeout) {
        r = failure(ErrorCode::kFunctionTimedOut, "Task.TimedOut",
                    "Task timed out after " + std::to_string(f.cfg->timeout_s) + " seconds");
      } else if (oom) {
        r = failure(ErrorCode::kFunctionError, "Runtime.OutOfMemory",
                    "the worker exceeded its memory limit of " +
                        std::to_string(f.cfg->memory_mb) + " MB and was killed");
      } else {
        f.counters->crashes.fetch_add(1, std::memory_order_relaxed);
        r = failure(ErrorCode::kFunctionError, "Runtime.ExitError",
                    "the worker " + how + " during the invocation");
      }
      r.request_id = w->current_id;
      finish(f, std::move(w->current), std::move(r));
    }
    dispatch(f);
  }

  // An exec invocation is done when its process has exited and its stdout is drained.
  void maybe_finish_exec(const std::shared_ptr<Worker>& w) {
    if (!w->exited || !w->stdout_closed || w->state == Worker::State::kDead) {
      return;
    }
    Function& f = *w->fn;
    const int status = w->wait_status;
    InvokeResult r;
    const bool oom = detail::oom_killed(w->proc, host_);
    if (w->killed_for_timeout) {
      r = failure(ErrorCode::kFunctionTimedOut, "Task.TimedOut",
                  "Task timed out after " + std::to_string(f.cfg->timeout_s) + " seconds");
    } else if (w->stdout_overflow) {
      r = failure(ErrorCode::kFunctionError, "Function.ResponseSizeTooLarge",
                  "the result is larger than 6 MiB");
    } else if (oom) {
      r = failure(ErrorCode::kFunctionError, "Runtime.OutOfMemory",
                  "the process exceeded its memory limit of " + std::to_string(f.cfg->memory_mb) +
                      " MB and was killed");
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      f.counters->crashes.fetch_add(1, std::memory_order_relaxed);
      std::string tail = w->stderr_buf.substr(0, 512);
      r = failure(ErrorCode::kFunctionError, "Runtime.ExitError",
                  "the process " + describe_exit(status));
    } else {
      boost::system::error_code ec;
      (void)boost::json::parse(w->stdout_buf, ec);
      if (ec) {
        r = failure(ErrorCode::kFunctionError, "Runtime.InvalidResponse",
                    "the process exited 0 but its stdout is not JSON");
      } else {
        r.ok = true;
        r.payload = std::move(w->stdout_buf);
      }
    }
    f.init_failures = 0;
    remove_worker(*w);
    cleanup(w);
    finish(f, std::move(w->current), std::move(r));
    dispatch(f);
  }

  // Removes the cgroups off-thread (rmdir may need to wait for killed tasks to leave).
  void cleanup(const std::shared_ptr<Worker>& w) {
    auto proc = std::make_shared<detail::Spawned>(std::move(w->proc));
    w->proc = detail::Spawned{};
    w->proc.pid = proc->pid;
    proc->pid = -1;  // reaped: never signal a recycled pid
    net::post(spawner_, [proc] { detail::release(*proc); });
  }

  void sweep() {
    if (stopped_.load()) {
      return;
    }
    const auto now = steady_clock::now();
    for (auto& [name, f] : functions_) {
      // Queued invocations wait at most the function's timeout for a worker.
      const auto max_wait = std::chrono::seconds(f->cfg->timeout_s);
      while (!f->queue.empty() && now - f->queue.front()->enqueued > max_wait) {
        auto p = std::move(f->queue.front());
        f->queue.pop_front();
        finish(*f, std::move(p),
               failure(ErrorCode::kFunctionTimedOut, "Task.TimedOut",
                       "no worker became free within " + std::to_string(f->cfg->timeout_s) +
                           " seconds"));
      }
      std::vector<std::shared_ptr<Worker>> stale;
      for (auto& [id, w] : f->workers) {
        const bool idle_expired =
            w->state == Worker::State::kIdle &&
            now - w->idle_since > std::chrono::seconds(f->cfg->idle_timeout_s);
        const bool init_expired =
            w->state == Worker::State::kStarting && now - w->started_at > kInitTimeout;
        if (init_expired && w->init_error.empty()) {
          w->init_error = "the worker did not ask for work within 10 seconds of starting";
        }
        if (idle_expired || init_expired || (f->removed && w->state == Worker::State::kIdle)) {
          stale.push_back(w);
        }
      }
      for (auto& w : stale) {
        w->retired = w->state == Worker::State::kIdle;  // an init timeout is a failure
        kill_worker(*w);
      }
      dispatch(*f);
    }
    sweep_.expires_after(kSweepInterval);
    sweep_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) {
        sweep();
      }
    });
  }

  void shutdown() {
    sweep_.cancel();
    for (auto& [name, f] : functions_) {
      while (!f->queue.empty()) {
        auto p = std::move(f->queue.front());
        f->queue.pop_front();
        reply(std::move(p), failure(ErrorCode::kUnavailable, "Runtime.Stopped",
                                    "the runtime is stopping"));
      }
      auto workers = f->workers;
      for (auto& [id, w] : workers) {
        if (w->current) {
          reply(std::move(w->current), failure(ErrorCode::kUnavailable, "Runtime.Stopped",
                                               "the runtime is stopping"));
        }
        kill_worker(*w);
        if (w->proc.pid > 0) {
          int status = 0;
          ::waitpid(w->proc.pid, &status, 0);
          w->proc.pid = -1;
        }
        remove_worker(*w);
        boost::system::error_code ec;
        w->pidfd.close(ec);
        w->out.close(ec);
        w->err.close(ec);
        detail::release(w->proc);
      }
    }
  }

  friend class ApiConn;

  Options options_;
  detail::HostCapabilities host_;
  net::io_context ioc_{1};
  net::steady_timer sweep_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  net::thread_pool spawner_{1};
  std::thread thread_;
  std::atomic<bool> stopped_{false};
  std::map<std::string, std::unique_ptr<Function>, std::less<>> functions_;
  std::uint64_t next_worker_ = 0;
  std::uint32_t max_depth_ = 16;
  std::string region_;   // config region and account_id: AWS_REGION and the function ARN
  std::string account_;  // the functions see (Lambda-Runtime-Invoked-Function-Arn)
  std::uint32_t run_as_uid_ = 65534;
  std::uint32_t run_as_gid_ = 65534;
  mutable std::mutex counters_mu_;
  std::map<std::string, std::shared_ptr<Counters>> counters_;  // GUARDED_BY(counters_mu_)
};

void ApiConn::read() {
  parser_.emplace();
  parser_->body_limit(kMaxResponseBytes);
  parser_->header_limit(64 * 1024);
  bhttp::async_read(socket_, buffer_, *parser_,
                    [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                      self->on_request(ec);
                    });
}

void ApiConn::on_request(const boost::system::error_code& ec) {
  auto w = worker_.lock();
  if (!w || w->state == Worker::State::kDead) {
    close();
    return;
  }
  const bool too_large = ec == bhttp::error::body_limit;
  if (ec && !too_large) {
    close();
    return;
  }
  keep_alive_ = !too_large && parser_->get().keep_alive();
  rt_.on_api_request(shared_from_this(), w, parser_->get(), too_large);
}

void ApiConn::reply(unsigned status, std::string body,
                    std::vector<std::pair<std::string, std::string>> headers) {
  res_ = {};
  res_.result(status);
  res_.version(11);
  bool typed = false;
  for (auto& [k, v] : headers) {
    typed = typed || k == "Content-Type";
    res_.set(k, v);
  }
  if (!typed) {
    res_.set(bhttp::field::content_type, "application/json");
  }
  res_.body() = std::move(body);
  res_.keep_alive(keep_alive_);
  res_.prepare_payload();
  bhttp::async_write(socket_, res_,
                     [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                       if (ec || !self->keep_alive_) {
                         self->close();
                         return;
                       }
                       self->read();
                     });
}

void RuntimeImpl::on_api_request(const std::shared_ptr<ApiConn>& conn,
                                 const std::shared_ptr<Worker>& w,
                                 const bhttp::request<bhttp::string_body>& req, bool too_large) {
  Function& f = *w->fn;
  const std::string_view target(req.target().data(), req.target().size());
  auto not_found = [&] {
    conn->reply(404, error_doc("InvalidRequest", "unknown Runtime API path"));
  };
  if (!target.starts_with(kApiPrefix)) {
    not_found();
    return;
  }
  const std::string_view rest = target.substr(kApiPrefix.size());
  if (rest == "invocation/next" && req.method() == bhttp::verb::get) {
    if (w->state == Worker::State::kBusy && w->current) {
      // Asking for more work without answering: the invocation failed.
      auto r = failure(ErrorCode::kFunctionError, "Runtime.NoResponse",
                       "the worker asked for the next event without answering this one");
      r.request_id = w->current_id;
      w->deadline.cancel();
      finish(f, std::move(w->current), std::move(r));
    }
    if (!w->reached_next) {
      w->reached_next = true;
      f.init_failures = 0;
      f.last_init_error.clear();
      f.spawn_allowed_at = {};
    }
    w->state = Worker::State::kIdle;
    w->idle_since = steady_clock::now();
    w->parked = conn;
    if (w->generation != f.generation || f.removed) {
      w->retired = true;
      kill_worker(*w);
      return;
    }
    dispatch(f);
    return;
  }
  if (rest == "init/error" && req.method() == bhttp::verb::post) {
    boost::system::error_code ec;
    auto v = boost::json::parse(req.body(), ec);
    std::string msg = "Runtime.InitError";
    if (!ec && v.is_object()) {
      const auto* type = v.get_object().if_contains("errorType");
      const auto* text = v.get_object().if_contains("errorMessage");
      msg = std::string(type && type->is_string() ? type->get_string() : "Runtime.InitError") +
            ": " + std::string(text && text->is_string() ? text->get_string() : "");
    }
    w->init_error = msg.substr(0, 1024);
    conn->reply(202, "{\"status\":\"OK\"}");
    return;
  }
  constexpr std::string_view kInvocation = "invocation/";
  if (rest.starts_with(kInvocation) && req.method() == bhttp::verb::post) {
    const std::string_view tail = rest.substr(kInvocation.size());
    const auto slash = tail.find('/');
    if (slash == std::string_view::npos) {
      not_found();
      return;
    }
    const std::string_view id = tail.substr(0, slash);
    const std::string_view action = tail.substr(slash + 1);
    if (action != "response" && action != "error") {
      not_found();
      return;
    }
    if (w->state != Worker::State::kBusy || !w->current || id != w->current_id) {
      conn->reply(400, error_doc("InvalidRequestID", "no invocation in progress with this id"));
      return;
    }
    w->deadline.cancel();
    InvokeResult r;
    if (too_large) {
      r = failure(ErrorCode::kFunctionError, "Function.ResponseSizeTooLarge",
                  "the response is larger than 6 MiB");
      conn->reply(413, error_doc("RequestEntityTooLarge", "the response is larger than 6 MiB"));
    } else if (action == "response") {
      r.ok = true;
      r.payload = req.body();
      conn->reply(202, "{\"status\":\"OK\"}");
    } else {
      boost::system::error_code ec;
      auto v = boost::json::parse(std::string_view(req.body()).substr(0, kMaxErrorBytes), ec);
      std::string type = "Unhandled";
      std::string message;
      if (!ec && v.is_object()) {
        const auto* t = v.get_object().if_contains("errorType");
        const auto* m = v.get_object().if_contains("errorMessage");
        if (t != nullptr && t->is_string() && !t->get_string().empty()) {
          type = std::string(t->get_string());
        }
        if (m != nullptr && m->is_string()) {
          message = std::string(m->get_string());
        }
      }
      const auto header = req.find("Lambda-Runtime-Function-Error-Type");
      if (type == "Unhandled" && header != req.end()) {
        type = std::string(header->value());
      }
      r = failure(ErrorCode::kFunctionError, type, message);
      if (!ec && v.is_object()) {
        r.payload = boost::json::serialize(v);  // the function's own document, stack and all
      }
      conn->reply(202, "{\"status\":\"OK\"}");
    }
    r.request_id = w->current_id;
    w->state = Worker::State::kIdle;  // until it asks for /next again
    w->idle_since = steady_clock::now();
    finish(f, std::move(w->current), std::move(r));
    if (too_large) {
      conn->close();
    }
    return;
  }
  not_found();
}

}  // namespace

core::Result<std::unique_ptr<Runtime>> Runtime::create(const config::Config& config,
                                                       Options options) {
  // The event goes to an exec function's stdin through a pipe; a function that exits without
  // reading it must cost us EPIPE, not the process (sockets use MSG_NOSIGNAL, pipes cannot).
  ::signal(SIGPIPE, SIG_IGN);
  try {
    return std::unique_ptr<Runtime>(std::make_unique<RuntimeImpl>(config, options));
  } catch (const std::exception& e) {
    return core::make_error(ErrorCode::kInternal, std::string("runtime: ") + e.what());
  }
}

CallerContext admin_caller(const config::Config& config) {
  CallerContext c;
  c.principal = policy::admin_arn(config.account_id);
  if (config.admin.compiled.empty()) {
    c.policies.push_back(policy::allow_all_policy());
  } else {
    c.policies = config.admin.compiled;
  }
  c.source = SourceKind::kDirect;
  return c;
}

CallerContext role_caller(const config::Config& config, std::string_view role) {
  CallerContext c;
  c.principal = policy::role_arn(config.account_id, role);
  if (const config::Role* r = config.find_role(role)) {
    c.policies = r->compiled;
  }
  return c;
}

policy::Decision authorize_invocation(const config::FunctionConfig& f,
                                      const CallerContext& caller) {
  if (!f.policy.compiled && caller.source == SourceKind::kRoute) {
    // No resource policy: every route that targets the function may call it; the route's own
    // authorization already decided who reaches the route.
    policy::Decision allow;
    allow.effect = policy::Effect::kAllow;
    return allow;
  }
  policy::Request r;
  r.principal.arns.push_back(caller.principal);
  r.principal.tags = caller.principal_tags;
  r.action = "lambda:InvokeFunction";
  r.resource = f.arn;
  // arn:gatehouse:lambda:<region>:<account>:function:<name>: the deployment's account.
  std::string_view account = f.arn;
  for (int i = 0; i < 4 && !account.empty(); ++i) {
    const std::size_t colon = account.find(':');
    account.remove_prefix(colon == std::string_view::npos ? account.size() : colon + 1);
  }
  r.account = std::string(account.substr(0, account.find(':')));
  r.context = caller.conditions;
  r.context.assign("gatehouse:SourceKind", source_kind_name(caller.source));
  r.context.assign("gatehouse:Source",
                   std::string(source_prefix(caller.source)) + caller.source_name);
  r.context.assign("gatehouse:LineageDepth", std::to_string(caller.depth));
  if (r.context.find("aws:EpochTime") == nullptr) {
    policy::set_time_keys(r.context, std::chrono::system_clock::now());
  }
  std::vector<const policy::Policy*> identity;
  identity.reserve(caller.policies.size());
  for (const auto& p : caller.policies) {
    identity.push_back(p.get());
  }
  return policy::evaluate(r, identity, f.policy.compiled.get());
}

}  // namespace gatehouse::runtime
