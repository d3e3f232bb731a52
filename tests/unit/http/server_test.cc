// The server's wire limits and framing, against an in-process server on an ephemeral loopback
// port with a small echo handler. Blocking sockets with receive timeouts; nothing sleeps.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "http/http.h"

namespace gatehouse::http {
namespace {

class EchoHandler final : public Handler {
 public:
  std::unique_ptr<ConnectionState> on_connect(unsigned) override {
    return std::make_unique<ConnectionState>();
  }
  Step on_headers(Exchange& ex) override {
    ++headers_seen;
    if (ex.request().path == "/refuse") {
      write_error(ex.out(), 429, "Throttled", "no", ex.request_id(), ex.keep_alive());
      ex.set_status(429);
      return Step::kDone;
    }
    return Step::kReadBody;
  }
  Step on_request(Exchange& ex) override {
    const Request& r = ex.request();
    std::string body = std::string(r.method) + " " + std::string(r.target) + " " +
                       std::to_string(r.body.size()) + ":" + std::string(r.body);
    ResponseWriter w(ex.out());
    w.start(200, ex.request_id(), ex.keep_alive());
    w.body("text/plain", body);
    ex.set_status(200);
    return Step::kDone;
  }
  void on_complete(Exchange&) override { ++completed; }

  std::atomic<int> headers_seen{0};
  std::atomic<int> completed{0};
};

class Client {
 public:
  explicit Client(std::uint16_t port, const char* source_ip = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (source_ip != nullptr) {
      sockaddr_in src{};
      src.sin_family = AF_INET;
      ::inet_pton(AF_INET, source_ip, &src.sin_addr);
      ::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src);
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  void send(std::string_view s) {
    std::size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        return;
      }
      off += static_cast<std::size_t>(n);
    }
  }
  // Reads until `count` complete responses (by Content-Length) are in, or EOF/timeout.
  std::string read_responses(int count) {
    std::string data;
    char buf[65536];
    while (complete_responses(data) < count) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        eof_ = true;
        break;
      }
      data.append(buf, static_cast<std::size_t>(n));
    }
    return data;
  }
  // True if the server closed the connection (EOF or reset) before `timeout_s`.
  bool closed_by_server() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0) {
        return true;
      }
      if (n < 0) {
        return errno == ECONNRESET;
      }
    }
  }
  bool eof() const { return eof_; }

  static int complete_responses(const std::string& data) {
    int count = 0;
    std::size_t pos = 0;
    for (;;) {
      const auto end = data.find("\r\n\r\n", pos);
      if (end == std::string::npos) {
        return count;
      }
      std::size_t len = 0;
      const auto cl = data.find("Content-Length: ", pos);
      if (cl != std::string::npos && cl < end) {
        len = std::stoul(data.substr(cl + 16));
      }
      if (data.size() < end + 4 + len) {
        return count;
      }
      pos = end + 4 + len;
      ++count;
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
};

class ServerTest : public ::testing::Test {
 protected:
  void start(ServerOptions o) {
    o.port = 0;
    o.threads = o.threads == 0 ? 2 : o.threads;
    server_ = make_server(o, handler_);
    ASSERT_TRUE(server_->start().has_value());
    port_ = server_->port();
    ASSERT_NE(port_, 0);
  }
  void TearDown() override {
    if (server_) {
      server_->drain_and_stop(std::chrono::milliseconds(1000));
    }
  }
  std::uint64_t refusals(WireRefusal r) {
    return server_->stats().refusals[static_cast<std::size_t>(r)];
  }

  EchoHandler handler_;
  std::unique_ptr<Server> server_;
  std::uint16_t port_ = 0;
};

TEST_F(ServerTest, ServesAndKeepsAlive) {
  start({});
  Client c(port_);
  ASSERT_TRUE(c.connected());
  for (int i = 0; i < 3; ++i) {
    c.send("GET /a?x=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    const auto r = c.read_responses(1);
    EXPECT_NE(r.find("HTTP/1.1 200 OK\r\n"), std::string::npos) << r;
    EXPECT_NE(r.find("GET /a?x=1 0:"), std::string::npos) << r;
    EXPECT_NE(r.find("x-request-id: "), std::string::npos);
  }
  EXPECT_FALSE(c.eof());
}

TEST_F(ServerTest, PipelinedRequestsAnsweredInOrder) {
  start({});
  Client c(port_);
  std::string batch;
  for (int i = 0; i < 20; ++i) {
    batch += "GET /r" + std::to_string(i) + " HTTP/1.1\r\nHost: t\r\n\r\n";
  }
  c.send(batch);
  const auto r = c.read_responses(20);
  ASSERT_EQ(Client::complete_responses(r), 20);
  std::size_t pos = 0;
  for (int i = 0; i < 20; ++i) {
    const auto at = r.find("GET /r" + std::to_string(i) + " ", pos);
    ASSERT_NE(at, std::string::npos) << "response " << i << " missing or out of order";
    pos = at;
  }
}

TEST_F(ServerTest, BodyWithContentLengthAndChunked) {
  start({});
  Client c(port_);
  c.send("POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
  auto r = c.read_responses(1);
  EXPECT_NE(r.find("POST /p 5:hello"), std::string::npos) << r;
  c.send(
      "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
      "chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  r = c.read_responses(1);
  EXPECT_NE(r.find("POST /c 5:abcde"), std::string::npos) << r;
}

TEST_F(ServerTest, HeaderOverLimitIs431AndCloses) {
  ServerOptions o;
  o.max_header_bytes = 1024;
  start(o);
  Client c(port_);
  c.send("GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n");
  const auto r = c.read_responses(1);
  EXPECT_EQ(r.rfind("HTTP/1.1 431 ", 0), 0u) << r;
  EXPECT_NE(r.find("\"code\":\"RequestHeaderFieldsTooLarge\""), std::string::npos);
  EXPECT_NE(r.find("Connection: close"), std::string::npos);
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(refusals(WireRefusal::kHeaderTooLarge), 1u);
  EXPECT_EQ(handler_.headers_seen.load(), 0);
}

TEST_F(ServerTest, TooManyHeaderFieldsIs431) {
  start({});
  Client c(port_);
  std::string req = "GET / HTTP/1.1\r\nHost: t\r\n";
  for (std::size_t i = 0; i < kMaxHeaders + 5; ++i) {
    req += "X-" + std::to_string(i) + ": v\r\n";
  }
  c.send(req + "\r\n");
  const auto r = c.read_responses(1);
  EXPECT_EQ(r.rfind("HTTP/1.1 431 ", 0), 0u) << r;
}

TEST_F(ServerTest, BodyOverLimitIs413BeforeTheBodyIsSent) {
  ServerOptions o;
  o.max_body_bytes = 1000;
  start(o);
  Client c(port_);
  // Only the headers: the answer must come without the server waiting for the body.
  c.send("POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n");
  const auto r = c.read_responses(1);
  EXPECT_EQ(r.rfind("HTTP/1.1 413 ", 0), 0u) << r;
  EXPECT_NE(r.find("\"code\":\"PayloadTooLarge\""), std::string::npos);
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(refusals(WireRefusal::kBodyTooLarge), 1u);
  EXPECT_EQ(handler_.headers_seen.load(), 0);
}

TEST_F(ServerTest, ChunkedBodyOverLimitIs413WhileStreaming) {
  ServerOptions o;
  o.max_body_bytes = 100;
  start(o);
  Client c(port_);
  c.send("POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
  c.send("40\r\n" + std::string(64, 'x') + "\r\n40\r\n" + std::string(64, 'y') + "\r\n");
  const auto r = c.read_responses(1);
  EXPECT_EQ(r.rfind("HTTP/1.1 413 ", 0), 0u) << r;
  // The handler saw the headers and must still be told the exchange ended.
  EXPECT_EQ(handler_.headers_seen.load(), 1);
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(handler_.completed.load(), 1);
}

TEST_F(ServerTest, MalformedRequestIs400) {
  start({});
  Client c(port_);
  c.send("GET / HTTP/9.9\r\n\r\n");
  const auto r = c.read_responses(1);
  EXPECT_EQ(r.rfind("HTTP/1.1 400 ", 0), 0u) << r;
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(refusals(WireRefusal::kBadRequest), 1u);
}

TEST_F(ServerTest, EarlyRefusalSkipsBufferedBodyAndKeepsConnection) {
  start({});
  Client c(port_);
  c.send(
      "POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
      "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
  const auto r = c.read_responses(2);
  EXPECT_EQ(r.rfind("HTTP/1.1 429 ", 0), 0u) << r;
  EXPECT_NE(r.find("GET /after 0:"), std::string::npos) << r;
}

TEST_F(ServerTest, EarlyRefusalWithUnreadBodyCloses) {
  start({});
  Client c(port_);
  c.send("POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
  const auto r = c.read_responses(1);
  EXPECT_EQ(r.rfind("HTTP/1.1 429 ", 0), 0u) << r;
  EXPECT_NE(r.find("Connection: close"), std::string::npos);
  EXPECT_TRUE(c.closed_by_server());
}

TEST_F(ServerTest, ExpectContinue) {
  start({});
  Client c(port_);
  c.send("PUT /u HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
  auto r = c.read_responses(1);  // "100 Continue" has no Content-Length: counts as a response
  EXPECT_EQ(r.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0), 0u) << r;
  c.send("data");
  r = c.read_responses(1);
  EXPECT_NE(r.find("PUT /u 4:data"), std::string::npos) << r;
}

TEST_F(ServerTest, Http10ClosesByDefault) {
  start({});
  Client c(port_);
  c.send("GET /old HTTP/1.0\r\n\r\n");
  const auto r = c.read_responses(1);
  EXPECT_NE(r.find("Connection: close"), std::string::npos) << r;
  EXPECT_TRUE(c.closed_by_server());
}

TEST_F(ServerTest, PerIpConnectionCap) {
  ServerOptions o;
  o.max_connections_per_ip = 2;
  start(o);
  Client a(port_, "127.0.0.2");
  Client b(port_, "127.0.0.2");
  // Make sure both are accepted (served) before the third arrives.
  a.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
  b.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_EQ(Client::complete_responses(a.read_responses(1)), 1);
  ASSERT_EQ(Client::complete_responses(b.read_responses(1)), 1);
  Client excess(port_, "127.0.0.2");
  EXPECT_TRUE(excess.closed_by_server());
  Client other(port_, "127.0.0.3");
  other.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
  EXPECT_EQ(Client::complete_responses(other.read_responses(1)), 1);
  EXPECT_EQ(refusals(WireRefusal::kMaxPerIp), 1u);
}

TEST_F(ServerTest, MaxRequestsPerConnection) {
  ServerOptions o;
  o.max_requests_per_connection = 2;
  start(o);
  Client c(port_);
  c.send("GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n");
  const auto r = c.read_responses(2);
  EXPECT_EQ(Client::complete_responses(r), 2);
  EXPECT_NE(r.find("Connection: close"), std::string::npos);
  EXPECT_TRUE(c.closed_by_server());
}

}  // namespace
}  // namespace gatehouse::http
