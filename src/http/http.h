#pragma once
// gatehouse::http — the HTTP/1.1 front door: router, wire limits, the server and its
// connection loop, response helpers.
//
// The server runs one worker per core, each with its own io_context and SO_REUSEPORT acceptor;
// a connection never leaves its worker, so a Handler is called for a connection only on that
// connection's worker thread. Asio and Beast stay out of this header (they are compiled once in
// asio_impl.cc); callers see only the types below.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/core.h"

namespace gatehouse::http {

// ---------------------------------------------------------------------------------------------
// Router: method + path templates.
//
// Templates are '/'-separated segments; a segment is a literal, "{name}" (one whole segment) or
// "{name+}" (greedy: the rest of the path, one or more segments; only last). Matching prefers, at
// each segment, a literal over {name} over {name+} and backtracks, so "/items/new" beats
// "/items/{id}". If stages are defined the first path segment must name one and is stripped
// before matching. Paths are matched raw (no percent-decoding); the query string is ignored.
// Immutable after build(); thread-safe to share.

constexpr std::size_t kMaxPathParams = 16;

struct PathParam {
  std::string_view name;   // points into the Router (lives as long as it)
  std::string_view value;  // points into the matched path (lives as long as the request)
};

struct RouteSpec {
  std::vector<std::string> methods;  // upper-case; "ANY" matches every method
  std::string path;                  // template
  std::vector<std::string> stages;   // empty = every stage
};

enum class MatchStatus : std::uint8_t { kFound, kNotFound, kMethodNotAllowed };

struct Match {
  MatchStatus status = MatchStatus::kNotFound;
  std::uint32_t route = 0;  // index into the specs given to build(), when kFound
  std::string_view stage;   // matched stage name ("" when no stages are defined)
  std::array<PathParam, kMaxPathParams> params{};
  std::size_t param_count = 0;
  std::string allow;  // for kMethodNotAllowed: "GET, POST" (allocates; rare path)
  [[nodiscard]] std::string_view param(std::string_view name) const noexcept;
};

class Router {
 public:
  // Errors (kInvalidArgument, message names the route index): bad template syntax (empty
  // segment, unbalanced braces, greedy not last, duplicate param names, > kMaxPathParams params),
  // two routes with the same method, stage and equivalent template, unknown stage names.
  [[nodiscard]] static core::Result<std::unique_ptr<Router>> build(
      const std::vector<RouteSpec>& routes, const std::vector<std::string>& stages);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // `path` is the request target without the query string. Does not allocate unless the result
  // is kMethodNotAllowed.
  void match(std::string_view method, std::string_view path, Match& out) const;

  struct Impl;

 private:
  explicit Router(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Requests and responses.

constexpr std::size_t kMaxHeaders = 128;  // more header fields than this: 431

struct Header {
  std::string_view name;
  std::string_view value;
};

// A parsed request. Views point into the connection's read buffer and stay valid until the
// handler has completed the request (Step::kDone, or Exchange::resume()).
struct Request {
  std::string_view method;  // as sent, e.g. "GET"
  std::string_view target;  // path + query as sent
  std::string_view path;    // target before '?'
  std::string_view query;   // after '?', without it
  unsigned version = 11;    // 10 or 11
  std::span<const Header> headers;
  std::string_view body;             // complete body (after on_request), empty before
  std::uint64_t content_length = 0;  // declared, 0 if none or chunked
  bool chunked = false;
  bool keep_alive = true;

  // First value of header `name` (case-insensitive), "" if absent.
  [[nodiscard]] std::string_view header(std::string_view name) const noexcept;
};

// "Date: <IMF-fixdate>\r\n" for the current second (cached per thread; refreshed by each
// worker's sweep, so at most one sweep interval old).
[[nodiscard]] std::string_view date_header() noexcept;
void refresh_date_header() noexcept;

// Builds a response into the connection's output buffer. Appends; never reallocates once the
// buffer has grown to its steady size.
class ResponseWriter {
 public:
  explicit ResponseWriter(std::string& out) : out_(out) {}
  // Status line and the headers every response carries (x-request-id, Connection as needed).
  void start(int status, std::string_view request_id, bool keep_alive);
  void header(std::string_view name, std::string_view value);
  void header(std::string_view name, std::uint64_t value);
  // Content-Length, blank line and body.
  void body(std::string_view content_type, std::string_view body);
  // Raw pre-serialized bytes (a cached response prefix).
  void raw(std::string_view bytes) { out_.append(bytes); }
  std::string& buffer() { return out_; }

 private:
  std::string& out_;
};

// Writes the uniform JSON error {"error":{"code","message","request_id"}} with the given status.
// `extra_headers` are complete "Name: value\r\n" lines.
void write_error(std::string& out, int status, std::string_view code, std::string_view message,
                 std::string_view request_id, bool keep_alive, std::string_view extra_headers = {});

// ---------------------------------------------------------------------------------------------
// The handler interface the gateway implements.

enum class Step : std::uint8_t {
  kDone,      // the response is in exchange.out()
  kReadBody,  // (on_headers only) read the body, then call on_request
  kPending,   // async: the handler calls exchange.resume() later, on the same worker thread
};

class Exchange;

// Per-connection state owned by the handler (allocated once per connection, not per request).
class ConnectionState {
 public:
  virtual ~ConnectionState() = default;
};

class Handler {
 public:
  virtual ~Handler() = default;
  virtual std::unique_ptr<ConnectionState> on_connect(unsigned worker) = 0;
  // After the request line and headers, before any body byte is consumed. Return kDone with a
  // response written to refuse early (the body is then not read; the connection is closed if a
  // body was announced), kReadBody to go on, or kPending.
  virtual Step on_headers(Exchange& ex) = 0;
  // With the complete body. Return kDone or kPending.
  virtual Step on_request(Exchange& ex) = 0;
  // After the response for this request has been queued (always called once per on_headers).
  virtual void on_complete(Exchange& ex) = 0;
};

// One request/response exchange on a connection; reused across the connection's requests.
class Exchange {
 public:
  virtual ~Exchange() = default;
  [[nodiscard]] virtual const Request& request() const noexcept = 0;
  [[nodiscard]] virtual std::string_view request_id() const noexcept = 0;
  [[nodiscard]] virtual std::string_view remote_ip() const noexcept = 0;
  [[nodiscard]] virtual unsigned worker() const noexcept = 0;
  [[nodiscard]] virtual std::chrono::steady_clock::time_point started() const noexcept = 0;
  [[nodiscard]] virtual ConnectionState& state() noexcept = 0;
  // The output buffer the response is appended to.
  [[nodiscard]] virtual std::string& out() noexcept = 0;
  // Whether the response should keep the connection alive (client wish, server draining).
  [[nodiscard]] virtual bool keep_alive() const noexcept = 0;
  // Replaces the request body seen by request() (after on_request began, e.g. with a decoded
  // aws-chunked payload); `body` must stay valid until the exchange completes.
  virtual void replace_body(std::string_view body) noexcept = 0;
  // Status of the response written (the handler tells it, for logs and metrics).
  virtual void set_status(int status) noexcept = 0;
  [[nodiscard]] virtual int status() const noexcept = 0;
  // Completes a kPending step. Must be called on the connection's worker thread.
  virtual void resume() = 0;
  // Keeps the connection object alive across a pending async operation.
  [[nodiscard]] virtual std::shared_ptr<void> keep_alive_token() = 0;
  // The worker's io_context, type-erased (cast to boost::asio::io_context* in .cc files that
  // include Asio).
  [[nodiscard]] virtual void* io_context() noexcept = 0;
};

// ---------------------------------------------------------------------------------------------
// The server.

struct ServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  unsigned threads = 0;  // 0: one per core
  std::uint32_t max_header_bytes = 16 * 1024;
  std::uint64_t max_body_bytes = std::uint64_t{10} * 1024 * 1024;
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{60'000};
  std::uint32_t min_body_rate = 1024;
  std::chrono::milliseconds body_grace{5'000};
  std::chrono::milliseconds idle_timeout{60'000};
  std::uint32_t max_connections = 10'000;
  std::uint32_t max_connections_per_ip = 256;
  std::uint32_t max_pipelined = 32;
  std::uint32_t max_requests_per_connection = 0;
  std::chrono::milliseconds sweep_interval{250};  // deadline sweep granularity
};

// Why a connection or request was refused on the wire.
enum class WireRefusal : std::uint8_t {
  kHeaderTooLarge,  // 431
  kBodyTooLarge,    // 413
  kHeaderTimeout,   // slowloris: headers not complete in time
  kBodyTimeout,     // body not complete in time
  kBodyTooSlow,     // under min_body_rate
  kIdleTimeout,     // keep-alive idle (not an attack; counted for visibility)
  kMaxConnections,  // process-wide connection cap
  kMaxPerIp,        // per-client-IP connection cap
  kBadRequest,      // malformed HTTP
  kCount
};
[[nodiscard]] std::string_view wire_refusal_name(WireRefusal r) noexcept;

struct ServerStats {
  std::uint64_t connections_open = 0;
  std::uint64_t connections_accepted = 0;
  std::uint64_t requests = 0;
  std::array<std::uint64_t, static_cast<std::size_t>(WireRefusal::kCount)> refusals{};
  std::uint64_t bugs = 0;  // unexpected exceptions caught at the session top level
};

// Thread-safety: start/stop/limits from the control thread; stats() from any thread.
class Server {
 public:
  virtual ~Server() = default;
  // Binds every worker's acceptor (errors: kIo with the address) and starts the worker threads.
  [[nodiscard]] virtual core::Result<void> start() = 0;
  // Replaces the wire limits for new requests (listen address and threads are fixed).
  virtual void update_limits(const ServerOptions& options) = 0;
  // Stops accepting, lets in-flight requests finish (idle connections closed at once, busy ones
  // after their response) until `grace`, then closes what is left. Blocks until workers exit.
  virtual void drain_and_stop(std::chrono::milliseconds grace) = 0;
  [[nodiscard]] virtual ServerStats stats() const = 0;
  [[nodiscard]] virtual unsigned workers() const noexcept = 0;
  // The bound port (after start(); the kernel's choice when options.port was 0).
  [[nodiscard]] virtual std::uint16_t port() const noexcept = 0;
  // Runs `fn(worker)` on every worker thread (posted; returns at once).
  virtual void run_on_all_workers(std::function<void(unsigned)> fn) = 0;
  // The worker's io_context, type-erased as in Exchange::io_context().
  [[nodiscard]] virtual void* worker_io_context(unsigned worker) noexcept = 0;
};

// `handler` must outlive the server.
[[nodiscard]] std::unique_ptr<Server> make_server(ServerOptions options, Handler& handler);

}  // namespace gatehouse::http
