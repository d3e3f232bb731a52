// The HTTP/1.1 server: one worker per core, each an io_context{1} with its own SO_REUSEPORT
// acceptor. A session reads into a reused buffer, parses with RequestParser, calls the Handler,
// appends responses to one output buffer and writes once per batch of pipelined requests.
// Deadlines (header, body, idle, write) are enforced by one sweep timer per worker rather than a
// timer per read (see PERFORMANCE.md: a per-read timer costs more than a whole refusal).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "http/http.h"
#include "http/request_parser.h"
#include "http/socket_read.h"

namespace gatehouse::http {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// Connections per client IP across all workers. Accepts are rare next to requests, so a sharded
// mutex-protected map is cheap enough; the request path never touches it.
class IpTable {
 public:
  using Key = std::array<std::uint8_t, 16>;

  bool try_add(const Key& ip, std::uint32_t cap) {
    Shard& s = shard(ip);
    std::lock_guard lock(s.mu);
    auto& n = s.counts[ip];
    if (n >= cap) {
      if (n == 0) {
        s.counts.erase(ip);
      }
      return false;
    }
    ++n;
    return true;
  }

  void remove(const Key& ip) {
    Shard& s = shard(ip);
    std::lock_guard lock(s.mu);
    auto it = s.counts.find(ip);
    if (it != s.counts.end() && --it->second == 0) {
      s.counts.erase(it);
    }
  }

 private:
  struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept {
      std::uint64_t a = 0;
      std::uint64_t b = 0;
      std::memcpy(&a, k.data(), 8);
      std::memcpy(&b, k.data() + 8, 8);
      return static_cast<std::size_t>((a * 0x9e3779b97f4a7c15ULL) ^ (b + (a >> 29)));
    }
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<Key, std::uint32_t, KeyHash> counts;  // guarded by mu
  };
  Shard& shard(const Key& ip) { return shards_[KeyHash{}(ip) % shards_.size()]; }
  std::array<Shard, 16> shards_;
};

IpTable::Key ip_key(const tcp::endpoint& ep) {
  IpTable::Key key{};
  const auto addr = ep.address();
  if (addr.is_v4()) {
    const auto b = addr.to_v4().to_bytes();
    // v4-mapped form so v4 and v6 share one key space.
    key[10] = 0xff;
    key[11] = 0xff;
    std::memcpy(key.data() + 12, b.data(), 4);
  } else {
    const auto b = addr.to_v6().to_bytes();
    std::memcpy(key.data(), b.data(), 16);
  }
  return key;
}

constexpr std::size_t kReadChunk = 16 * 1024;

}  // namespace

class ServerImpl;
class Worker;

// Per-worker counters, written only by the worker's thread (relaxed atomics so the metrics
// reader on another thread sees consistent words).
struct WorkerStats {
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> open{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> bugs{0};
  std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(WireRefusal::kCount)> refusals{};

  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
};

class Session final : public Exchange, public std::enable_shared_from_this<Session> {
 public:
  enum class Phase : std::uint8_t { kIdle, kHeader, kBody, kHandling, kWriting, kClosing };

  Session(Worker& worker, tcp::socket socket, IpTable::Key ip_key);
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start();
  // Called by the sweep: closes the connection if its current deadline passed.
  void sweep(Clock::time_point now);
  // Drain: close if idle, else make the current response the last.
  void drain();
  void force_close();

  // Exchange.
  const Request& request() const noexcept override { return req_; }
  void replace_body(std::string_view body) noexcept override { req_.body = body; }
  std::string_view request_id() const noexcept override { return core::view(id_); }
  std::string_view remote_ip() const noexcept override { return {ip_str_, ip_len_}; }
  unsigned worker() const noexcept override;
  Clock::time_point started() const noexcept override { return started_; }
  ConnectionState& state() noexcept override { return *state_; }
  std::string& out() noexcept override { return out_; }
  bool keep_alive() const noexcept override;
  void set_status(int status) noexcept override { status_ = status; }
  int status() const noexcept override { return status_; }
  void resume() override;
  std::shared_ptr<void> keep_alive_token() override { return shared_from_this(); }
  void* io_context() noexcept override;

  // Intrusive list of the worker's sessions, for the sweep and drain.
  Session* prev_ = nullptr;
  Session* next_ = nullptr;

 private:
  enum class Pending : std::uint8_t { kNone, kHeaders, kRequest };

  void do_read();
  void on_read(const boost::system::error_code& ec, std::size_t n);
  static void read_done(void* self, const boost::system::error_code& ec, std::size_t n) {
    static_cast<Session*>(self)->on_read(ec, n);
  }
  void process();
  bool process_one();  // false: stop the loop (need I/O or closing)
  void begin_request();
  void after_headers(Step step);
  void after_request(Step step);
  void finish_request();
  void refuse(WireRefusal why, int status, std::string_view code, std::string_view message);
  void flush();
  void on_write(const boost::system::error_code& ec);
  void lingering_close();
  void linger_read();
  void close_now();
  void call_guarded(void (Session::*fn)());
  const ServerOptions& opts() const noexcept;
  WorkerStats& stats() noexcept;
  // The worker's clock is refreshed only by its sweep, so it may lag by one sweep interval:
  // adding the interval means a deadline never fires early (at most two intervals late), and
  // the hot path reads no clock for it.
  Clock::time_point deadline_after(Clock::duration d) const noexcept;

  Worker& worker_;
  tcp::socket socket_;
  // The request reads: after a read that drained the socket, the next one waits for epoll
  // rather than trying first (no recvfrom that fails with EAGAIN per request).
  SocketRead read_op_{&Session::read_done};
  IpTable::Key ip_key_;
  char ip_str_[INET6_ADDRSTRLEN] = {};
  std::size_t ip_len_ = 0;
  std::unique_ptr<ConnectionState> state_;

  boost::beast::flat_buffer in_;
  std::string out_;
  std::string store_;
  std::string body_;
  std::array<Header, kMaxHeaders> fields_{};
  Request req_;
  std::optional<detail::RequestParser> parser_;

  Phase phase_ = Phase::kIdle;
  Pending pending_ = Pending::kNone;
  Clock::time_point deadline_{};
  Clock::time_point body_started_{};
  std::uint64_t body_bytes_ = 0;
  Clock::time_point started_{};
  core::RequestId id_{};
  int status_ = 0;
  bool headers_done_ = false;
  bool in_exchange_ = false;        // on_headers called, on_complete not yet
  std::size_t response_start_ = 0;  // where this request's response begins in out_
  bool reading_ = false;
  bool writing_ = false;
  bool close_after_write_ = false;
  bool closed_ = false;
  bool draining_ = false;
  std::uint32_t batched_ = 0;
  std::uint32_t served_ = 0;
};

class Worker {
 public:
  Worker(ServerImpl& server, unsigned index, ServerOptions options);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  core::Result<void> bind(const tcp::endpoint& ep);
  std::uint16_t local_port() const {
    boost::system::error_code ec;
    return acceptor_->local_endpoint(ec).port();
  }
  void run();
  void stop_accepting();
  void begin_drain();
  void force_close_all();

  net::io_context& ioc() noexcept { return *ioc_; }
  unsigned index() const noexcept { return index_; }
  const ServerOptions& opts() const noexcept { return opts_; }
  WorkerStats& stats() noexcept { return stats_; }
  const WorkerStats& stats() const noexcept { return stats_; }
  ServerImpl& server() noexcept { return server_; }
  Handler& handler() noexcept;
  Clock::time_point now() const noexcept { return now_; }
  bool draining() const noexcept { return draining_; }
  std::size_t session_count() const noexcept { return session_count_.load(); }
  void set_options(const ServerOptions& o) { opts_ = o; }

  void link(Session* s);
  void unlink(Session* s);

 private:
  void do_accept();
  void on_accept(const boost::system::error_code& ec, tcp::socket socket);
  void arm_sweep();

  ServerImpl& server_;
  unsigned index_;
  // Held by pointer so ~Worker can destroy it (and with it every pending handler and the
  // sessions they keep alive) while the rest of the worker is still intact.
  std::unique_ptr<net::io_context> ioc_ = std::make_unique<net::io_context>(1);
  std::optional<tcp::acceptor> acceptor_{std::in_place, *ioc_};
  std::optional<net::steady_timer> sweep_{std::in_place, *ioc_};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  ServerOptions opts_;
  Clock::time_point now_ = Clock::now();
  Session* head_ = nullptr;
  std::atomic<std::size_t> session_count_{0};
  bool draining_ = false;
  bool accepting_ = false;
  WorkerStats stats_;
};

class ServerImpl final : public Server {
 public:
  ServerImpl(ServerOptions options, Handler& handler)
      : options_(std::move(options)), handler_(handler) {
    unsigned n = options_.threads;
    if (n == 0) {
      n = std::max(1u, std::thread::hardware_concurrency());
    }
    for (unsigned i = 0; i < n; ++i) {
      workers_.push_back(std::make_unique<Worker>(*this, i, options_));
    }
  }

  ~ServerImpl() override {
    if (!threads_.empty()) {
      drain_and_stop(std::chrono::milliseconds(0));
    }
  }

  core::Result<void> start() override {
    boost::system::error_code ec;
    const auto addr =
        net::ip::make_address(options_.host == "localhost" ? "127.0.0.1" : options_.host, ec);
    if (ec) {
      return core::make_error(core::ErrorCode::kInvalidArgument,
                              "listen address '" + options_.host + "' is not an IP address");
    }
    tcp::endpoint ep(addr, options_.port);
    for (auto& w : workers_) {
      auto r = w->bind(ep);
      if (!r) {
        return r;
      }
      // Port 0: the first worker gets a port from the kernel, the others share it.
      ep.port(w->local_port());
    }
    port_ = ep.port();
    for (auto& w : workers_) {
      threads_.emplace_back([w = w.get()] { w->run(); });
    }
    return {};
  }

  void update_limits(const ServerOptions& options) override {
    for (auto& w : workers_) {
      net::post(w->ioc(), [w = w.get(), options] { w->set_options(options); });
    }
  }

  void drain_and_stop(std::chrono::milliseconds grace) override {
    if (threads_.empty()) {
      return;
    }
    for (auto& w : workers_) {
      net::post(w->ioc(), [w = w.get()] {
        w->stop_accepting();
        w->begin_drain();
      });
    }
    const auto deadline = Clock::now() + grace;
    while (Clock::now() < deadline) {
      std::size_t open = 0;
      for (auto& w : workers_) {
        open += w->session_count();
      }
      if (open == 0) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (auto& w : workers_) {
      net::post(w->ioc(), [w = w.get()] { w->force_close_all(); });
    }
    for (auto& t : threads_) {
      t.join();
    }
    threads_.clear();
  }

  ServerStats stats() const override {
    ServerStats s;
    for (const auto& w : workers_) {
      const WorkerStats& ws = w->stats();
      s.connections_accepted += ws.accepted.load(std::memory_order_relaxed);
      s.connections_open += ws.open.load(std::memory_order_relaxed);
      s.requests += ws.requests.load(std::memory_order_relaxed);
      s.bugs += ws.bugs.load(std::memory_order_relaxed);
      for (std::size_t i = 0; i < s.refusals.size(); ++i) {
        s.refusals[i] += ws.refusals[i].load(std::memory_order_relaxed);
      }
    }
    for (std::size_t i = 0; i < s.refusals.size(); ++i) {
      s.refusals[i] += early_refusals_[i].load(std::memory_order_relaxed);
    }
    return s;
  }

  unsigned workers() const noexcept override { return static_cast<unsigned>(workers_.size()); }
  std::uint16_t port() const noexcept override { return port_; }

  void run_on_all_workers(std::function<void(unsigned)> fn) override {
    for (auto& w : workers_) {
      net::post(w->ioc(), [fn, i = w->index()] { fn(i); });
    }
  }

  void* worker_io_context(unsigned worker) noexcept override {
    return worker < workers_.size() ? &workers_[worker]->ioc() : nullptr;
  }

  Handler& handler() noexcept { return handler_; }
  IpTable& ip_table() noexcept { return ips_; }
  std::atomic<std::uint32_t>& total_connections() noexcept { return total_; }
  void count_early(WireRefusal r) {
    early_refusals_[static_cast<std::size_t>(r)].fetch_add(1, std::memory_order_relaxed);
  }

 private:
  ServerOptions options_;
  Handler& handler_;
  std::uint16_t port_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  IpTable ips_;
  std::atomic<std::uint32_t> total_{0};
  std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(WireRefusal::kCount)>
      early_refusals_{};
};

// ------------------------------------------------------------------------------------------------
// Worker

Worker::Worker(ServerImpl& server, unsigned index, ServerOptions options)
    : server_(server), index_(index), opts_(std::move(options)) {}

Worker::~Worker() {
  // Sessions still referenced by pending handlers die with the io_context; they unlink
  // themselves from this worker, so it must still be whole.
  acceptor_.reset();
  sweep_.reset();
  work_.reset();
  ioc_.reset();
}

Handler& Worker::handler() noexcept { return server_.handler(); }

core::Result<void> Worker::bind(const tcp::endpoint& ep) {
  boost::system::error_code ec;
  acceptor_->open(ep.protocol(), ec);
  if (!ec) {
    acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    const int one = 1;
    if (::setsockopt(acceptor_->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      ec.assign(errno, boost::system::system_category());
    }
  }
  if (!ec) {
    acceptor_->bind(ep, ec);
  }
  if (!ec) {
    acceptor_->listen(net::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return core::make_error(core::ErrorCode::kIo, "cannot listen on " + ep.address().to_string() +
                                                      ":" + std::to_string(ep.port()) + ": " +
                                                      ec.message());
  }
  return {};
}

void Worker::run() {
  work_.emplace(ioc_->get_executor());
  accepting_ = true;
  // The first request id seeds a per-thread prefix from OpenSSL's RNG, whose first use reads
  // its config file: pay that here, not on a client's request.
  core::RequestId warm;
  core::next_request_id(warm);
  refresh_date_header();
  arm_sweep();
  do_accept();
  ioc_->run();
}

void Worker::do_accept() {
  acceptor_->async_accept(*ioc_, [this](const boost::system::error_code& ec, tcp::socket socket) {
    on_accept(ec, std::move(socket));
  });
}

void Worker::on_accept(const boost::system::error_code& ec, tcp::socket socket) {
  if (!accepting_) {
    return;
  }
  if (ec) {
    // EMFILE and friends: back off briefly instead of spinning.
    if (ec != net::error::operation_aborted) {
      auto t = std::make_shared<net::steady_timer>(*ioc_, std::chrono::milliseconds(50));
      t->async_wait([this, t](const boost::system::error_code&) {
        if (accepting_) {
          do_accept();
        }
      });
    }
    return;
  }
  do_accept();

  boost::system::error_code ep_ec;
  const auto remote = socket.remote_endpoint(ep_ec);
  if (ep_ec) {
    return;  // already gone
  }
  auto& total = server_.total_connections();
  if (total.fetch_add(1, std::memory_order_relaxed) >= opts_.max_connections) {
    total.fetch_sub(1, std::memory_order_relaxed);
    WorkerStats::bump(stats_.refusals[static_cast<std::size_t>(WireRefusal::kMaxConnections)]);
    // Closed without reading: a RST is the cheapest answer to a flood.
    const ::linger lg{1, 0};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return;
  }
  const auto key = ip_key(remote);
  if (!server_.ip_table().try_add(key, opts_.max_connections_per_ip)) {
    total.fetch_sub(1, std::memory_order_relaxed);
    WorkerStats::bump(stats_.refusals[static_cast<std::size_t>(WireRefusal::kMaxPerIp)]);
    const ::linger lg{1, 0};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return;
  }
  const int one = 1;
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  WorkerStats::bump(stats_.accepted);
  auto session = std::make_shared<Session>(*this, std::move(socket), key);
  session->start();
}

void Worker::link(Session* s) {
  s->next_ = head_;
  if (head_ != nullptr) {
    head_->prev_ = s;
  }
  head_ = s;
  session_count_.fetch_add(1, std::memory_order_relaxed);
  WorkerStats::bump(stats_.open);
}

void Worker::unlink(Session* s) {
  if (s->prev_ != nullptr) {
    s->prev_->next_ = s->next_;
  } else {
    head_ = s->next_;
  }
  if (s->next_ != nullptr) {
    s->next_->prev_ = s->prev_;
  }
  s->prev_ = s->next_ = nullptr;
  session_count_.fetch_sub(1, std::memory_order_relaxed);
  stats_.open.store(stats_.open.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
}

void Worker::arm_sweep() {
  sweep_->expires_after(opts_.sweep_interval);
  sweep_->async_wait([this](const boost::system::error_code& ec) {
    if (ec) {
      return;
    }
    now_ = Clock::now();
    refresh_date_header();
    // A session may close (and unlink itself) during sweep(); take next first. Closing only
    // cancels its I/O, destruction happens later from the completion handlers.
    for (Session* s = head_; s != nullptr;) {
      Session* next = s->next_;
      s->sweep(now_);
      s = next;
    }
    arm_sweep();
  });
}

void Worker::stop_accepting() {
  accepting_ = false;
  boost::system::error_code ec;
  acceptor_->close(ec);
}

void Worker::begin_drain() {
  draining_ = true;
  for (Session* s = head_; s != nullptr;) {
    Session* next = s->next_;
    s->drain();
    s = next;
  }
  work_.reset();
}

void Worker::force_close_all() {
  for (Session* s = head_; s != nullptr;) {
    Session* next = s->next_;
    s->force_close();
    s = next;
  }
  sweep_->cancel();
  work_.reset();
  ioc_->stop();
}

// ------------------------------------------------------------------------------------------------
// Session

Session::Session(Worker& worker, tcp::socket socket, IpTable::Key ip_key)
    : worker_(worker), socket_(std::move(socket)), ip_key_(ip_key) {
  boost::system::error_code ec;
  const auto ep = socket_.remote_endpoint(ec);
  if (!ec) {
    const auto addr = ep.address();
    if (addr.is_v4()) {
      const auto b = addr.to_v4().to_bytes();
      ::inet_ntop(AF_INET, b.data(), ip_str_, sizeof ip_str_);
    } else {
      const auto b = addr.to_v6().to_bytes();
      ::inet_ntop(AF_INET6, b.data(), ip_str_, sizeof ip_str_);
    }
    ip_len_ = std::strlen(ip_str_);
  }
  worker_.link(this);
}

Session::~Session() {
  if (in_exchange_) {
    // The client went away mid-request: the handler still releases what it holds.
    in_exchange_ = false;
    worker_.handler().on_complete(*this);
  }
  worker_.unlink(this);
  worker_.server().ip_table().remove(ip_key_);
  worker_.server().total_connections().fetch_sub(1, std::memory_order_relaxed);
}

unsigned Session::worker() const noexcept { return worker_.index(); }
void* Session::io_context() noexcept { return &worker_.ioc(); }
const ServerOptions& Session::opts() const noexcept { return worker_.opts(); }
Clock::time_point Session::deadline_after(Clock::duration d) const noexcept {
  return worker_.now() + d + opts().sweep_interval;
}
WorkerStats& Session::stats() noexcept { return worker_.stats(); }

bool Session::keep_alive() const noexcept {
  // A response written before a body that is not yet here (an early refusal) ends the
  // connection: the body will not be read.
  if (parser_ && parser_->is_header_done() && !parser_->is_done() &&
      (req_.chunked || req_.content_length > in_.size())) {
    return false;
  }
  return req_.keep_alive && !close_after_write_ && !draining_ && !worker_.draining() &&
         (opts().max_requests_per_connection == 0 ||
          served_ + 1 < opts().max_requests_per_connection);
}

void Session::start() {
  boost::system::error_code ec;
  socket_.non_blocking(true, ec);  // flush() writes directly first
  state_ = worker_.handler().on_connect(worker_.index());
  phase_ = Phase::kIdle;
  deadline_ = deadline_after(opts().idle_timeout);
  // The first request usually arrives with the connection: treat it as a header wait.
  phase_ = Phase::kHeader;
  deadline_ = deadline_after(opts().header_timeout);
  do_read();
}

void Session::do_read() {
  if (closed_) {
    return;
  }
  if (in_.size() >= opts().max_header_bytes + kReadChunk && !parser_) {
    // Cannot happen: the parser consumes as it goes; guard against a stuck loop anyway.
    close_now();
    return;
  }
  reading_ = true;
  read_op_.start(socket_, in_.prepare(kReadChunk), this, shared_from_this());
}

void Session::on_read(const boost::system::error_code& ec, std::size_t n) {
  reading_ = false;
  if (ec || closed_) {
    close_now();
    return;
  }
  in_.commit(n);
  if (phase_ == Phase::kIdle) {
    phase_ = Phase::kHeader;
    deadline_ = deadline_after(opts().header_timeout);
  } else if (phase_ == Phase::kBody) {
    body_bytes_ += n;
  }
  call_guarded(&Session::process);
}

void Session::call_guarded(void (Session::*fn)()) {
  try {
    (this->*fn)();
  } catch (const std::exception&) {
    // A bug, never a client's doing: count it and drop the connection.
    WorkerStats::bump(stats().bugs);
    close_now();
  }
}

void Session::begin_request() {
  parser_.emplace(req_, store_, fields_, body_, opts().max_header_bytes, opts().max_body_bytes);
  headers_done_ = false;
  status_ = 0;
  pending_ = Pending::kNone;
}

void Session::process() {
  while (!closed_ && !writing_ && pending_ == Pending::kNone && !close_after_write_) {
    if (!process_one()) {
      break;
    }
  }
  if (closed_ || pending_ != Pending::kNone || writing_) {
    return;
  }
  if (!out_.empty()) {
    flush();
    if (writing_ || closed_) {
      return;  // on_write() carries on
    }
  }
  if (close_after_write_) {
    lingering_close();
  } else {
    do_read();
  }
}

bool Session::process_one() {
  if (!parser_) {
    if (in_.size() == 0) {
      return false;
    }
    begin_request();
  }
  if (!parser_->is_done()) {
    if (in_.size() == 0) {
      return false;
    }
    boost::beast::error_code ec;
    const std::size_t used = parser_->put(in_.data(), ec);
    in_.consume(used);
    if (ec == boost::beast::http::error::need_more) {
      // Headers incomplete, or the body continues: more bytes must be read first.
      if (!parser_->is_header_done() && in_.size() >= opts().max_header_bytes) {
        refuse(WireRefusal::kHeaderTooLarge, 431, "RequestHeaderFieldsTooLarge",
               "request headers exceed the limit");
      }
      return false;
    }
    if (ec) {
      if (ec == boost::beast::http::error::header_limit) {
        refuse(WireRefusal::kHeaderTooLarge, 431, "RequestHeaderFieldsTooLarge",
               "request headers exceed the limit");
      } else if (ec == boost::beast::http::error::body_limit) {
        refuse(WireRefusal::kBodyTooLarge, 413, "PayloadTooLarge",
               "request body exceeds the limit");
      } else if (parser_->unsupported_coding()) {
        refuse(WireRefusal::kBadRequest, 501, "NotImplemented",
               "transfer codings other than chunked are not supported");
      } else {
        refuse(WireRefusal::kBadRequest, 400, "BadRequest", ec.message());
      }
      return false;
    }
  }
  if (!headers_done_ && parser_->is_header_done()) {
    headers_done_ = true;
    started_ = Clock::now();
    core::next_request_id(id_);
    in_exchange_ = true;
    response_start_ = out_.size();
    const Step step = worker_.handler().on_headers(*this);
    if (step == Step::kPending) {
      pending_ = Pending::kHeaders;
      phase_ = Phase::kHandling;
      return false;
    }
    after_headers(step);
    return !closed_;
  }
  if (parser_->is_done()) {
    const Step step = worker_.handler().on_request(*this);
    if (step == Step::kPending) {
      pending_ = Pending::kRequest;
      phase_ = Phase::kHandling;
      return false;
    }
    after_request(step);
    return !closed_;
  }
  return true;
}

void Session::after_headers(Step step) {
  if (step == Step::kDone) {
    // Refused before the body: skip it if it is already entirely buffered, otherwise do not
    // read it and close after the response.
    if (!parser_->is_done()) {
      if (!req_.chunked && req_.content_length <= in_.size()) {
        in_.consume(static_cast<std::size_t>(req_.content_length));
      } else {
        close_after_write_ = true;
      }
    }
    finish_request();
    return;
  }
  parser_->eager(true);
  body_started_ = worker_.now() + opts().sweep_interval;  // see deadline_after()
  body_bytes_ = in_.size();
  if (!parser_->is_done()) {
    phase_ = Phase::kBody;
    deadline_ = deadline_after(opts().body_timeout);
    // Expect: 100-continue: the client waits for our go-ahead before sending the body.
    const auto expect = req_.header("expect");
    if (in_.size() == 0 && expect.size() == 12 &&
        ::strncasecmp(expect.data(), "100-continue", 12) == 0) {
      out_.append("HTTP/1.1 100 Continue\r\n\r\n");
      response_start_ = out_.size();
    }
  }
}

void Session::after_request(Step /*step*/) { finish_request(); }

void Session::finish_request() {
  if (!keep_alive()) {
    close_after_write_ = true;
  }
  if (req_.method == "HEAD") {
    // Whatever produced the response (static, proxy, error, built-in), a HEAD answer ends with
    // its headers: the Content-Length they announce is that of the GET body.
    const auto end = out_.find("\r\n\r\n", response_start_);
    if (end != std::string::npos) {
      out_.resize(end + 4);
    }
  }
  in_exchange_ = false;
  worker_.handler().on_complete(*this);
  WorkerStats::bump(stats().requests);
  ++served_;
  ++batched_;
  parser_.reset();
  phase_ = Phase::kIdle;
  deadline_ = deadline_after(opts().idle_timeout);
  if (batched_ >= opts().max_pipelined) {
    // Bound the responses queued per write: the rest of the pipeline waits for this flush.
    flush();
  }
}

void Session::resume() {
  if (closed_) {
    return;
  }
  const Pending p = pending_;
  pending_ = Pending::kNone;
  if (p == Pending::kHeaders) {
    after_headers(status_ != 0 ? Step::kDone : Step::kReadBody);
  } else if (p == Pending::kRequest) {
    after_request(Step::kDone);
  }
  call_guarded(&Session::process);
}

void Session::refuse(WireRefusal why, int status, std::string_view code, std::string_view message) {
  WorkerStats::bump(stats().refusals[static_cast<std::size_t>(why)]);
  if (!headers_done_) {
    core::next_request_id(id_);
  }
  close_after_write_ = true;
  write_error(out_, status, code, message, core::view(id_), false);
  parser_.reset();
  if (in_exchange_) {
    status_ = status;
    in_exchange_ = false;
    worker_.handler().on_complete(*this);
  }
}

void Session::flush() {
  if (out_.empty() || writing_ || closed_) {
    return;
  }
  batched_ = 0;
  // Try the write at once on the non-blocking socket: it almost always completes, and then no
  // write operation goes through the scheduler (about 500 instructions per request saved).
  boost::system::error_code ec;
  const std::size_t sent = socket_.write_some(net::buffer(out_), ec);
  if (!ec && sent == out_.size()) {
    out_.clear();
    response_start_ = 0;
    return;
  }
  if (ec && ec != net::error::would_block && ec != net::error::try_again) {
    close_now();
    return;
  }
  const std::size_t done = ec ? 0 : sent;
  writing_ = true;
  const Phase before = phase_;
  phase_ = Phase::kWriting;
  deadline_ = deadline_after(opts().idle_timeout);
  net::async_write(
      socket_, net::buffer(out_.data() + done, out_.size() - done),
      [self = shared_from_this(), before](const boost::system::error_code& ec, std::size_t) {
        self->phase_ = before;
        self->on_write(ec);
      });
}

void Session::on_write(const boost::system::error_code& ec) {
  writing_ = false;
  out_.clear();
  response_start_ = 0;
  if (ec || closed_) {
    close_now();
    return;
  }
  if (phase_ == Phase::kIdle) {
    deadline_ = deadline_after(opts().idle_timeout);
  }
  if (pending_ != Pending::kNone) {
    return;  // an async handler is still working; it resumes us
  }
  if (close_after_write_ && !parser_) {
    lingering_close();
    return;
  }
  call_guarded(&Session::process);
}

void Session::lingering_close() {
  // Half-close, then read and discard briefly so the client sees our response rather than a
  // reset caused by unread request bytes. Bounded by the sweep (2 s) and by 1 MiB.
  if (closed_) {
    return;
  }
  boost::system::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  phase_ = Phase::kClosing;
  deadline_ = deadline_after(std::chrono::seconds(2));
  body_bytes_ = 0;
  linger_read();
}

void Session::linger_read() {
  in_.clear();
  socket_.async_read_some(
      in_.prepare(kReadChunk),
      [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
        self->body_bytes_ += n;
        if (ec || n == 0 || self->closed_ || self->body_bytes_ > 1024 * 1024) {
          self->close_now();
          return;
        }
        self->linger_read();
      });
}

void Session::close_now() {
  if (closed_) {
    return;
  }
  closed_ = true;
  boost::system::error_code ec;
  socket_.close(ec);
}

void Session::force_close() { close_now(); }

void Session::drain() {
  draining_ = true;
  // Nothing of a request received yet (idle keep-alive, or a fresh connection that has sent
  // nothing): close now rather than wait out the grace period.
  if ((phase_ == Phase::kIdle || phase_ == Phase::kHeader) && !parser_ && in_.size() == 0 &&
      !writing_) {
    close_now();
  }
}

void Session::sweep(Clock::time_point now) {
  if (closed_) {
    return;
  }
  switch (phase_) {
    case Phase::kIdle:
      if (now >= deadline_) {
        WorkerStats::bump(stats().refusals[static_cast<std::size_t>(WireRefusal::kIdleTimeout)]);
        close_now();
      }
      break;
    case Phase::kHeader:
      if (now >= deadline_) {
        WorkerStats::bump(stats().refusals[static_cast<std::size_t>(WireRefusal::kHeaderTimeout)]);
        close_now();
      }
      break;
    case Phase::kBody: {
      if (now >= deadline_) {
        WorkerStats::bump(stats().refusals[static_cast<std::size_t>(WireRefusal::kBodyTimeout)]);
        close_now();
        break;
      }
      const auto elapsed = now - body_started_;
      if (opts().min_body_rate > 0 && elapsed > opts().body_grace) {
        const double secs = std::chrono::duration<double>(elapsed).count();
        if (static_cast<double>(body_bytes_) < secs * opts().min_body_rate) {
          WorkerStats::bump(stats().refusals[static_cast<std::size_t>(WireRefusal::kBodyTooSlow)]);
          close_now();
        }
      }
      break;
    }
    case Phase::kWriting:
    case Phase::kClosing:
      if (now >= deadline_) {
        close_now();
      }
      break;
    case Phase::kHandling:
      break;  // the handler owns its own deadline (upstream timeout, function timeout)
  }
}

std::unique_ptr<Server> make_server(ServerOptions options, Handler& handler) {
  return std::make_unique<ServerImpl>(std::move(options), handler);
}

}  // namespace gatehouse::http
