// The gateway's request path: stage order, refusals from each stage, release on completion,
// built-in endpoints and reload, against an in-process gateway on an ephemeral loopback port.

#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

namespace gatehouse::gateway {
namespace {

std::string http_get(std::uint16_t port, const std::string& raw) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return {};
  }
  ::send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      break;
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string get(std::uint16_t port, const std::string& path, const std::string& extra = "") {
  return http_get(port,
                  "GET " + path + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + extra + "\r\n");
}

config::Route static_route(std::string name, std::string path, std::string body,
                           std::string function = "") {
  config::Route r;
  r.name = std::move(name);
  r.methods = {"GET"};
  r.path = std::move(path);
  r.target.kind = config::Target::Kind::kStatic;
  r.target.static_target.body = std::move(body);
  r.target.function = std::move(function);
  return r;
}

config::Config base_config() {
  config::Config c;
  c.source = "test.yaml";
  c.server.listen.port = 0;
  c.server.threads = 2;
  c.server.shutdown_grace = std::chrono::milliseconds(500);
  c.log.access_log = "off";
  c.log.level = "warn";
  c.store.state = "sqlite://:memory:";
  // sha256("secret")
  c.admin.token_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
  c.routes.push_back(static_route("hello", "/hello", "hi", "fn-a"));
  c.routes.push_back(static_route("blocked", "/blocked", "never"));
  return c;
}

// Records the order stages run in; refuses on chosen paths.
struct Trace {
  std::mutex mu;
  std::vector<std::string> events;
  std::atomic<int> released{0};
  void add(std::string e) {
    std::lock_guard lock(mu);
    events.push_back(std::move(e));
  }
};

class TraceAuthn final : public Authenticator {
 public:
  explicit TraceAuthn(Trace& t) : t_(t) {}
  Verdict authenticate(RequestContext& ctx, Refusal& out) override {
    t_.add("authenticate");
    if (ctx.request->header("x-deny") == "authn") {
      out = Refusal{401, "Unauthenticated", "who are you", {}};
      return Verdict::kRefuse;
    }
    ctx.principal = Principal{"user", "arn:gh:iam::0:user/test"};
    return Verdict::kContinue;
  }

 private:
  Trace& t_;
};

class TraceAuthz final : public Authorizer {
 public:
  explicit TraceAuthz(Trace& t) : t_(t) {}
  Verdict authorize(RequestContext& ctx, Refusal& out) override {
    t_.add("authorize:" + std::string(ctx.principal.id));
    if (ctx.route_name == "blocked") {
      out = Refusal{403, "Forbidden", "not for you", {}};
      return Verdict::kRefuse;
    }
    return Verdict::kContinue;
  }

 private:
  Trace& t_;
};

class TraceThrottle final : public Throttle {
 public:
  explicit TraceThrottle(Trace& t) : t_(t) {}
  Verdict admit(RequestContext& ctx, Refusal& out) override {
    t_.add("throttle:" + std::string(ctx.function));
    if (ctx.request->header("x-deny") == "throttle") {
      out = Refusal{429, "ThrottledKey", "slow down", "Retry-After: 7\r\n"};
      return Verdict::kRefuse;
    }
    return Verdict::kContinue;
  }
  void release(RequestContext&) override { ++t_.released; }

 private:
  Trace& t_;
};

class TraceGuard final : public Guard {
 public:
  explicit TraceGuard(Trace& t) : t_(t) {}
  Verdict check(RequestContext& ctx, Refusal& out) override {
    t_.add("guard");
    if (ctx.request->header("x-deny") == "guard") {
      out = Refusal{402, "BudgetExceeded", "out of money", {}};
      return Verdict::kRefuse;
    }
    return Verdict::kContinue;
  }

 private:
  Trace& t_;
};

class GatewayTest : public ::testing::Test {
 protected:
  void start(config::Config c = base_config()) {
    Stages s;
    s.authenticate = std::make_unique<TraceAuthn>(trace_);
    s.authorize = std::make_unique<TraceAuthz>(trace_);
    s.throttle = std::make_unique<TraceThrottle>(trace_);
    s.guard = std::make_unique<TraceGuard>(trace_);
    auto gw = Gateway::create(std::move(c), std::move(s));
    ASSERT_TRUE(gw.has_value()) << gw.error().message;
    gw_ = std::move(*gw);
    ASSERT_TRUE(gw_->start().has_value());
  }
  void TearDown() override {
    if (gw_) {
      gw_->stop();
    }
  }
  std::uint16_t port() const { return gw_->port(); }

  Trace trace_;
  std::unique_ptr<Gateway> gw_;
};

TEST_F(GatewayTest, StagesRunInOrderAndReleaseOnce) {
  start();
  const auto r = get(port(), "/hello");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("\r\n\r\nhi"), std::string::npos);
  std::lock_guard lock(trace_.mu);
  const std::vector<std::string> want = {"authenticate", "authorize:arn:gh:iam::0:user/test",
                                         "throttle:fn-a", "guard"};
  EXPECT_EQ(trace_.events, want);
  EXPECT_EQ(trace_.released.load(), 1);
}

TEST_F(GatewayTest, EachStageCanRefuse) {
  start();
  auto r = get(port(), "/hello", "x-deny: authn\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 401 ", 0), 0u) << r;
  EXPECT_NE(r.find("\"code\":\"Unauthenticated\""), std::string::npos);
  r = get(port(), "/blocked");
  EXPECT_EQ(r.rfind("HTTP/1.1 403 ", 0), 0u) << r;
  r = get(port(), "/hello", "x-deny: throttle\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 429 ", 0), 0u) << r;
  EXPECT_NE(r.find("Retry-After: 7\r\n"), std::string::npos);
  EXPECT_NE(r.find("\"code\":\"ThrottledKey\""), std::string::npos);
  r = get(port(), "/hello", "x-deny: guard\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 402 ", 0), 0u) << r;
  // Only the request refused by the guard had been admitted by the throttle.
  EXPECT_EQ(trace_.released.load(), 1);
  const auto m = gw_->metrics_text();
  EXPECT_NE(m.find("gatehouse_refusals_total{code=\"ThrottledKey\"} 1"), std::string::npos) << m;
}

TEST_F(GatewayTest, NotFoundAndMethodNotAllowedAreJson) {
  start();
  auto r = get(port(), "/nope");
  EXPECT_EQ(r.rfind("HTTP/1.1 404 ", 0), 0u) << r;
  EXPECT_NE(r.find("{\"error\":{\"code\":\"RouteNotFound\""), std::string::npos) << r;
  EXPECT_NE(r.find("\"request_id\":\""), std::string::npos);
  r = http_get(port(), "DELETE /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 405 ", 0), 0u) << r;
  EXPECT_NE(r.find("Allow: GET"), std::string::npos) << r;
}

TEST_F(GatewayTest, HealthIsPublicMetricsAndAdminNeedTheToken) {
  start();
  auto r = get(port(), "/healthz");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 ", 0), 0u) << r;
  r = get(port(), "/metrics");
  EXPECT_EQ(r.rfind("HTTP/1.1 401 ", 0), 0u) << r;
  r = get(port(), "/metrics", "Authorization: Bearer wrong\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 401 ", 0), 0u) << r;
  get(port(), "/hello");
  r = get(port(), "/metrics", "Authorization: Bearer secret\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 ", 0), 0u) << r;
  EXPECT_NE(r.find("gatehouse_requests_total{route=\"hello\",status=\"200\"}"), std::string::npos)
      << r;
  EXPECT_NE(r.find("gatehouse_request_duration_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
  r = get(port(), "/admin/config", "Authorization: Bearer secret\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 ", 0), 0u) << r;
  EXPECT_NE(r.find("\"name\":\"hello\""), std::string::npos) << r;
}

TEST_F(GatewayTest, ReloadSwapsRoutesAndKeepsOldOnError) {
  start();
  auto c = base_config();
  c.routes.push_back(static_route("added", "/added", "new"));
  ASSERT_TRUE(gw_->reload(c).has_value());
  // Workers install the snapshot asynchronously: poll briefly.
  std::string r;
  for (int i = 0; i < 200; ++i) {
    r = get(port(), "/added");
    if (r.rfind("HTTP/1.1 200 ", 0) == 0) {
      break;
    }
  }
  EXPECT_EQ(r.rfind("HTTP/1.1 200 ", 0), 0u) << r;
  // An invalid snapshot (conflicting routes) is refused and the running one stays.
  auto bad = c;
  bad.routes.push_back(static_route("dup", "/added", "dup"));
  EXPECT_FALSE(gw_->reload(bad).has_value());
  r = get(port(), "/added");
  EXPECT_NE(r.find("\r\n\r\nnew"), std::string::npos) << r;
  const auto m = gw_->metrics_text();
  EXPECT_NE(m.find("gatehouse_config_reloads_total{result=\"failed\"} 1"), std::string::npos);
}

}  // namespace
}  // namespace gatehouse::gateway
