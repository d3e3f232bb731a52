#include "gateway/proxy.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <map>

#include "http/socket_read.h"

namespace gatehouse::gateway {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;

using core::iequals;

// Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy sets itself.
bool skip_request_header(std::string_view name) {
  static constexpr std::string_view kSkip[] = {"connection",
                                               "keep-alive",
                                               "proxy-connection",
                                               "te",
                                               "trailer",
                                               "upgrade",
                                               "host",
                                               "content-length",
                                               "transfer-encoding",
                                               "x-request-id",
                                               "x-forwarded-for",
                                               "x-forwarded-proto",
                                               "expect",
                                               "proxy-authorization"};
  for (auto s : kSkip) {
    if (iequals(name, s)) {
      return true;
    }
  }
  return false;
}

bool skip_response_header(std::string_view name) {
  static constexpr std::string_view kSkip[] = {
      "connection", "keep-alive",     "proxy-connection",  "te",           "trailer",
      "upgrade",    "content-length", "transfer-encoding", "x-request-id", "date"};
  for (auto s : kSkip) {
    if (iequals(name, s)) {
      return true;
    }
  }
  return false;
}

struct Conn {
  explicit Conn(net::io_context& ioc) : socket(ioc) {}
  tcp::socket socket;
  boost::beast::flat_buffer buffer;
};

class ProxyOp;

}  // namespace

struct Proxy::Pool {
  // Idle keep-alive connections by upstream name and address (UpstreamTarget::pool_key).
  std::map<std::string, std::vector<std::unique_ptr<Conn>>, std::less<>> idle;
  // Bumped by clear() and shutdown(), which empty `idle`: a request started before holds a
  // pointer into the old map and an upstream of the old config, so its connection is not
  // pooled again.
  std::uint64_t generation = 0;
  // Requests waiting for an upstream, oldest first (deadlines are checked by the sweep).
  ProxyOp* head = nullptr;
  ProxyOp* tail = nullptr;
  std::unique_ptr<net::steady_timer> sweep;  // armed while requests are in flight
  bool sweep_armed = false;
};

namespace {

// How often in-flight requests are checked against their upstream timeout: a timeout fires up
// to this much late, never early. One timer per worker, instead of one per request.
constexpr std::chrono::milliseconds kSweepInterval{50};

void arm_sweep(Proxy::Pool& pool, net::io_context& ioc);

class ProxyOp : public std::enable_shared_from_this<ProxyOp> {
 public:
  ProxyOp(http::Exchange& ex, const UpstreamTarget& target, Proxy::Pool& pool, std::string request)
      : ex_(ex),
        keep_(ex.keep_alive_token()),
        target_(target),
        pool_(pool),
        ioc_(*static_cast<net::io_context*>(ex.io_context())),
        request_(std::move(request)) {}
  ~ProxyOp() { unlink(); }
  ProxyOp(const ProxyOp&) = delete;
  ProxyOp& operator=(const ProxyOp&) = delete;

  void start() {
    deadline_ = std::chrono::steady_clock::now() + target_.upstream->timeout;
    link();
    idle_ = &pool_.idle[target_.pool_key];
    generation_ = pool_.generation;
    if (!idle_->empty()) {
      conn_ = std::move(idle_->back());
      idle_->pop_back();
      reused_ = true;
      send();
    } else {
      connect();
    }
  }

  // The worker's sweep: past the deadline, close the connection; the pending operation fails
  // and answers 504.
  void check_deadline(std::chrono::steady_clock::time_point now) {
    if (done_ || now < deadline_) {
      return;
    }
    timed_out_ = true;
    if (conn_) {
      boost::system::error_code ignored;
      conn_->socket.close(ignored);
    }
  }

  ProxyOp* next_ = nullptr;  // in Pool's in-flight list

 private:
  void link() {
    prev_ = pool_.tail;
    (prev_ != nullptr ? prev_->next_ : pool_.head) = this;
    pool_.tail = this;
    linked_ = true;
    arm_sweep(pool_, ioc_);
  }
  void unlink() {
    if (!linked_) {
      return;
    }
    (prev_ != nullptr ? prev_->next_ : pool_.head) = next_;
    (next_ != nullptr ? next_->prev_ : pool_.tail) = prev_;
    prev_ = next_ = nullptr;
    linked_ = false;
  }

 private:
  void connect() {
    conn_ = std::make_unique<Conn>(ioc_);
    reused_ = false;
    // The connect deadline is shorter than the whole-response one: a second timer would cost
    // an allocation, so the connect timeout is checked against the clock when connect fails.
    connect_started_ = std::chrono::steady_clock::now();
    auto connect_timer =
        std::make_shared<net::steady_timer>(ioc_, target_.upstream->connect_timeout);
    connect_timer->async_wait(
        [self = shared_from_this(), connect_timer](const boost::system::error_code& ec) {
          if (!ec && !self->connected_ && !self->done_ && self->conn_) {
            self->connect_timed_out_ = true;
            boost::system::error_code ignored;
            self->conn_->socket.close(ignored);
          }
        });
    conn_->socket.async_connect(target_.endpoint, [self = shared_from_this(), connect_timer](
                                                      const boost::system::error_code& ec) {
      self->connected_ = true;
      connect_timer->cancel();
      if (ec) {
        self->fail(
            self->connect_timed_out_ || self->timed_out_ ? 504 : 502,
            self->connect_timed_out_ ? "upstream connect timed out" : "cannot connect to upstream");
        return;
      }
      boost::system::error_code ignored;
      self->conn_->socket.set_option(tcp::no_delay(true), ignored);
      self->send();
    });
  }

  void send() {
    // Write at once on the non-blocking socket: a request almost always fits the socket buffer,
    // and then no write operation (and no posted completion) goes through the scheduler.
    boost::system::error_code ec;
    if (!conn_->socket.non_blocking()) {
      conn_->socket.non_blocking(true, ec);
    }
    const std::size_t sent = ec ? 0 : conn_->socket.write_some(net::buffer(request_), ec);
    if (!ec && sent == request_.size()) {
      read();
      return;
    }
    if (ec && ec != net::error::would_block && ec != net::error::try_again) {
      retry_or_fail(502, "upstream write failed");
      return;
    }
    const std::size_t done = ec ? 0 : sent;
    net::async_write(conn_->socket, net::buffer(request_.data() + done, request_.size() - done),
                     [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                       if (ec) {
                         self->retry_or_fail(502, "upstream write failed");
                         return;
                       }
                       self->read();
                     });
  }

  void read() {
    parser_.emplace();
    parser_->body_limit(target_.upstream->max_response_bytes);
    parser_->header_limit(64 * 1024);
    parser_->eager(true);
    if (iequals(ex_.request().method, "HEAD")) {
      parser_->skip(true);
    }
    parse();
  }

  // Reads straight from the socket into the connection's buffer and feeds the parser: one read
  // operation per arrival of bytes, completed from the reactor without a composed operation.
  void read_more() {
    read_op_.start(conn_->socket, conn_->buffer.prepare(kReadChunk), this, shared_from_this());
  }

  static void read_done(void* op, const boost::system::error_code& ec, std::size_t n) {
    static_cast<ProxyOp*>(op)->on_read(ec, n);
  }

  void on_read(const boost::system::error_code& ec, std::size_t n) {
    conn_->buffer.commit(n);
    received_ += n;
    if (ec == net::error::eof && parser_->got_some() && !parser_->is_done()) {
      boost::system::error_code eof_ec;
      parser_->put_eof(eof_ec);  // a body delimited by the end of the connection
      if (!eof_ec && parser_->is_done()) {
        close_after_ = true;
        finish_message();
        return;
      }
    }
    if (ec) {
      if (received_ == 0 && !timed_out_) {
        retry_or_fail(502, "upstream closed the connection");
      } else {
        fail(timed_out_ ? 504 : 502,
             timed_out_ ? "upstream timed out" : "invalid upstream response");
      }
      return;
    }
    parse();
  }

  void parse() {
    auto& buf = conn_->buffer;
    while (buf.size() > 0 && !parser_->is_done()) {
      boost::system::error_code ec;
      const std::size_t used = parser_->put(buf.data(), ec);
      buf.consume(used);
      if (ec == bhttp::error::need_more) {
        break;
      }
      if (ec) {
        fail(502, ec == bhttp::error::body_limit ? "upstream response exceeds max_response_bytes"
                                                 : "invalid upstream response");
        return;
      }
    }
    if (!parser_->is_done()) {
      read_more();
      return;
    }
    finish_message();
  }

  void finish_message() {
    // Interim 1xx answers (103 Early Hints, 100 Continue) are not the response: read on. 101
    // would switch protocols, which we never ask for.
    const int status = static_cast<int>(parser_->get().result_int());
    if (status >= 100 && status < 200 && status != 101) {
      if (++interim_ > 8) {
        fail(502, "upstream sent too many interim responses");
        return;
      }
      read();
      return;
    }
    if (status == 101) {
      fail(502, "upstream switched protocols");
      return;
    }
    respond();
  }

  // A pooled connection the upstream closed while idle fails before any byte of response:
  // the request never reached the application, so one retry on a fresh connection is safe.
  void retry_or_fail(int status, std::string_view message) {
    if (reused_ && !retried_ && !timed_out_) {
      retried_ = true;
      connect();
      return;
    }
    fail(timed_out_ ? 504 : status, timed_out_ ? "upstream timed out" : message);
  }

  void respond() {
    done_ = true;
    unlink();
    auto& msg = parser_->get();
    std::string& out = ex_.out();
    http::ResponseWriter w(out);
    const int status = static_cast<int>(msg.result_int());
    w.start(status, ex_.request_id(), ex_.keep_alive());
    for (const auto& f : msg) {
      const std::string_view name(f.name_string().data(), f.name_string().size());
      if (!skip_response_header(name)) {
        w.header(name, std::string_view(f.value().data(), f.value().size()));
      }
    }
    const std::string& body = msg.body();
    const bool head = iequals(ex_.request().method, "HEAD");
    if (head) {
      if (const auto len = parser_->content_length()) {
        w.header("Content-Length", *len);
      }
      out.append("\r\n");
    } else {
      w.body({}, body);
    }
    // Only a connection with nothing left unread may serve another request: stray bytes would
    // be taken as the next client's response.
    const bool reusable =
        msg.keep_alive() && !close_after_ && !timed_out_ && conn_->buffer.size() == 0;
    if (reusable && pool_.generation == generation_) {
      if (idle_->size() < target_.upstream->max_idle) {
        idle_->push_back(std::move(conn_));
      }
    }
    conn_.reset();
    ex_.set_status(status);
    ex_.resume();
  }

  void fail(int status, std::string_view message) {
    done_ = true;
    unlink();
    conn_.reset();
    http::write_error(ex_.out(), status, status == 504 ? "GatewayTimeout" : "BadGateway", message,
                      ex_.request_id(), ex_.keep_alive());
    ex_.set_status(status);
    ex_.resume();
  }

  http::Exchange& ex_;
  std::shared_ptr<void> keep_;  // keeps the session (and so ex_) alive
  UpstreamTarget target_;
  Proxy::Pool& pool_;
  std::vector<std::unique_ptr<Conn>>* idle_ = nullptr;  // pool_.idle[target_.pool_key]
  std::uint64_t generation_ = 0;  // pool_.generation when idle_ was taken: valid while equal
  net::io_context& ioc_;
  std::chrono::steady_clock::time_point deadline_{};
  ProxyOp* prev_ = nullptr;
  bool linked_ = false;
  std::string request_;
  std::unique_ptr<Conn> conn_;
  // Reads of the response: after one that drained the socket, the next waits for epoll (the
  // flag lives with the socket, so a pooled connection's next request starts that way too).
  http::SocketRead read_op_{&ProxyOp::read_done};
  std::optional<bhttp::response_parser<bhttp::string_body>> parser_;
  std::chrono::steady_clock::time_point connect_started_{};
  bool reused_ = false;
  bool retried_ = false;
  bool connected_ = false;
  bool connect_timed_out_ = false;
  bool timed_out_ = false;
  bool done_ = false;
  bool close_after_ = false;  // the body ended with the connection
  int interim_ = 0;
  std::size_t received_ = 0;  // response bytes read on this connection for this request
};

void arm_sweep(Proxy::Pool& pool, net::io_context& ioc) {
  if (pool.sweep_armed || pool.head == nullptr) {
    return;
  }
  if (!pool.sweep) {
    pool.sweep = std::make_unique<net::steady_timer>(ioc);
  }
  pool.sweep_armed = true;
  pool.sweep->expires_after(kSweepInterval);
  pool.sweep->async_wait([&pool, &ioc](const boost::system::error_code& ec) {
    pool.sweep_armed = false;
    if (ec) {
      return;
    }
    const auto now = std::chrono::steady_clock::now();
    // check_deadline only closes sockets: no op leaves the list during the walk.
    for (ProxyOp* op = pool.head; op != nullptr; op = op->next_) {
      op->check_deadline(now);
    }
    arm_sweep(pool, ioc);
  });
}

}  // namespace

Proxy::Proxy(unsigned workers) {
  for (unsigned i = 0; i < workers; ++i) {
    pools_.push_back(std::make_unique<Pool>());
  }
}

Proxy::~Proxy() = default;

void Proxy::clear(unsigned worker) {
  Pool& p = *pools_[worker];
  ++p.generation;
  p.idle.clear();
}

void Proxy::shutdown(unsigned worker) {
  Pool& p = *pools_[worker];
  ++p.generation;
  p.idle.clear();
  p.sweep.reset();
}

void Proxy::forward(http::Exchange& ex, const UpstreamTarget& target, std::string path) {
  const http::Request& req = ex.request();
  std::string out;
  out.reserve(256 + req.body.size());
  out.append(req.method);
  out.push_back(' ');
  out.append(path);
  out.append(" HTTP/1.1\r\nHost: ");
  out.append(target.host_header);
  out.append("\r\n");
  std::string_view forwarded_for;
  // Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
  std::vector<std::string_view> connection_tokens;
  for (const http::Header& h : req.headers) {
    if (iequals(h.name, "connection")) {
      std::string_view v = h.value;
      while (!v.empty()) {
        const auto comma = v.find(',');
        std::string_view tok = v.substr(0, comma);
        while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) {
          tok.remove_prefix(1);
        }
        while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) {
          tok.remove_suffix(1);
        }
        if (!tok.empty()) {
          connection_tokens.push_back(tok);
        }
        v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
      }
    }
  }
  for (const http::Header& h : req.headers) {
    if (iequals(h.name, "x-forwarded-for")) {
      forwarded_for = h.value;
    }
    if (skip_request_header(h.name) ||
        (!target.strip_header.empty() && iequals(h.name, target.strip_header))) {
      continue;
    }
    bool hop = false;
    for (auto tok : connection_tokens) {
      hop = hop || iequals(h.name, tok);
    }
    if (hop) {
      continue;
    }
    out.append(h.name);
    out.append(": ");
    out.append(h.value);
    out.append("\r\n");
  }
  out.append("X-Forwarded-For: ");
  if (!forwarded_for.empty()) {
    out.append(forwarded_for);
    out.append(", ");
  }
  out.append(ex.remote_ip());
  out.append("\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ");
  out.append(ex.request_id());
  out.append("\r\n");
  if (!req.body.empty() || req.chunked || req.content_length > 0) {
    out.append("Content-Length: ");
    out.append(std::to_string(req.body.size()));
    out.append("\r\n");
  }
  out.append("\r\n");
  out.append(req.body);
  std::make_shared<ProxyOp>(ex, target, *pools_[ex.worker()], std::move(out))->start();
}

}  // namespace gatehouse::gateway
