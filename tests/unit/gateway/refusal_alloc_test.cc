// Refusing an over-limit request allocates nothing on the heap and takes no lock.
//
// 1. A real in-process gateway (built-in API-key authenticator and layered limiter, SQLite
//    store, real sockets) refuses a flood from one key over its plan's limit while a counting
//    global operator new watches the worker thread: zero allocations over the whole flood,
//    event loop included. Only worker threads are counted: a pass-through Authorizer (called on
//    every routed request, before the throttle) marks the thread it runs on; other threads (the
//    key poller, the quota flusher) work on their own schedule, off the request path.
// 2. The refusal itself (API-key verification, the layered admission, the 429 headers and the
//    JSON error) runs on this thread against the gateway's Limiter while the pthread mutex and
//    rwlock entry points are interposed (this executable's definitions come first in symbol
//    lookup, for the libraries too: libstdc++'s std::mutex, OpenSSL's locks): no lock, no
//    allocation. The event loop is left out of this count on purpose: Asio's scheduler and
//    reactor take their own uncontended mutexes around every operation, whatever the request.

#include <arpa/inet.h>
#include <dlfcn.h>
#include <pthread.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>

#include "auth/auth.h"
#include "core/core.h"
#include "gateway/gateway.h"
#include "gateway/limiter.h"
#include "http/http.h"
#include "store/store.h"

namespace {

std::atomic<bool> g_counting{false};
std::atomic<std::uint64_t> g_worker_allocs{0};
thread_local bool t_worker = false;

void* counted_alloc(std::size_t n) {
  if (t_worker && g_counting.load(std::memory_order_relaxed)) {
    g_worker_allocs.fetch_add(1, std::memory_order_relaxed);
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) {
    return p;
  }
  throw std::bad_alloc();
}

std::atomic<std::uint64_t> g_worker_locks{0};

void count_lock() {
  if (t_worker && g_counting.load(std::memory_order_relaxed)) {
    g_worker_locks.fetch_add(1, std::memory_order_relaxed);
  }
}

template <class F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

using MutexFn = int (*)(pthread_mutex_t*);
using RwFn = int (*)(pthread_rwlock_t*);
// Resolved during static initialization, before any thread exists.
const MutexFn g_mutex_lock = real<MutexFn>("pthread_mutex_lock");
const MutexFn g_mutex_trylock = real<MutexFn>("pthread_mutex_trylock");
const RwFn g_rdlock = real<RwFn>("pthread_rwlock_rdlock");
const RwFn g_wrlock = real<RwFn>("pthread_rwlock_wrlock");

}  // namespace

extern "C" int pthread_mutex_lock(pthread_mutex_t* m) {
  count_lock();
  return g_mutex_lock(m);
}
extern "C" int pthread_mutex_trylock(pthread_mutex_t* m) {
  count_lock();
  return g_mutex_trylock(m);
}
extern "C" int pthread_rwlock_rdlock(pthread_rwlock_t* l) {
  count_lock();
  return g_rdlock(l);
}
extern "C" int pthread_rwlock_wrlock(pthread_rwlock_t* l) {
  count_lock();
  return g_wrlock(l);
}

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
  return operator new(n, t);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace gatehouse::gateway {
namespace {

class MarkWorker final : public Authorizer {
 public:
  Verdict authorize(RequestContext&, Refusal&) override {
    t_worker = true;
    return Verdict::kContinue;
  }
};

class Client {
 public:
  explicit Client(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
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

  // Sends `req` and returns the status of the one response (0 on error). The response must have
  // a Content-Length (every Gatehouse answer here has one).
  int exchange(const std::string& req) {
    if (::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      return 0;
    }
    for (;;) {
      const auto end = buf_.find("\r\n\r\n");
      if (end != std::string::npos) {
        const auto cl = buf_.find("Content-Length: ");
        if (cl == std::string::npos || cl > end) {
          return 0;
        }
        const std::size_t len = std::strtoul(buf_.c_str() + cl + 16, nullptr, 10);
        if (buf_.size() >= end + 4 + len) {
          const int status = std::atoi(buf_.c_str() + 9);
          buf_.erase(0, end + 4 + len);
          return status;
        }
      }
      char tmp[4096];
      const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n <= 0) {
        return 0;
      }
      buf_.append(tmp, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_;
  bool connected_ = false;
  std::string buf_;
};

config::Config flood_config(const std::string& db) {
  config::Config c;
  c.source = "test.yaml";
  c.server.listen.port = 0;
  c.server.threads = 1;
  c.server.shutdown_grace = std::chrono::milliseconds(500);
  c.log.access_log = "off";
  c.log.level = "warn";
  c.store.state = "sqlite://" + db;
  const config::RateConfig wide{true, 1'000'000, 1'000'000};
  c.throttling.account = wide;
  config::FunctionConfig fn;
  fn.name = "fn";
  fn.throttle = wide;
  c.functions.push_back(fn);
  config::Plan tight;
  tight.name = "tight";
  tight.throttle = config::RateConfig{true, 0.001, 1};  // one request, then one per 1000 s
  tight.quota.set = true;
  tight.quota.limit = 1'000'000;
  tight.quota.period = "DAY";
  c.plans.push_back(tight);
  config::Route r;
  r.name = "api";
  r.methods = {"GET"};
  r.path = "/api/{proxy+}";
  r.api_key = config::ApiKeyMode::kRequired;
  r.throttle = wide;
  r.target.kind = config::Target::Kind::kStatic;
  r.target.static_target.body = "allowed";
  r.target.function = "fn";
  c.routes.push_back(r);
  return c;
}

TEST(RefusalPath, AFloodOfRefusalsAllocatesNothingOnTheWorker) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("gh-refusal-alloc-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string db = (dir / "gh.db").string();
  std::string key;
  {
    auto st = store::open("sqlite://" + db, core::system_clock());
    ASSERT_TRUE(st.has_value()) << st.error().message;
    auth::KeyRegistry keys(**st, core::system_clock());
    auto created = keys.create("flood", "tight", {});
    ASSERT_TRUE(created.has_value()) << created.error().message;
    key = created->key;
  }
  Stages stages;
  stages.authorize = std::make_unique<MarkWorker>();
  auto gw = Gateway::create(flood_config(db), std::move(stages));
  ASSERT_TRUE(gw.has_value()) << gw.error().message;
  ASSERT_TRUE((*gw)->start().has_value());

  Client client((*gw)->port());
  ASSERT_TRUE(client.connected());
  const std::string req = "GET /api/items HTTP/1.1\r\nHost: t\r\nx-api-key: " + key + "\r\n\r\n";
  EXPECT_EQ(client.exchange(req), 200);  // the plan's one request
  // Warm up: per-thread buffers and Asio's handler memory reach their steady size.
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(client.exchange(req), 429);
  }
  constexpr int kRequests = 2000;
  g_worker_allocs = 0;
  g_counting = true;
  int refused = 0;
  for (int i = 0; i < kRequests; ++i) {
    refused += client.exchange(req) == 429 ? 1 : 0;
  }
  g_counting = false;
  t_worker = false;
  EXPECT_EQ(refused, kRequests);
  EXPECT_EQ(g_worker_allocs.load(), 0u) << "heap allocations on the worker while refusing";
  (*gw)->stop();
  std::filesystem::remove_all(dir);
}

TEST(RefusalPath, TheRefusalTakesNoLockAndAllocatesNothing) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("gh-refusal-locks-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string db = (dir / "gh.db").string();
  const config::Config c = flood_config(db);
  auto st = store::open("sqlite://" + db, core::system_clock());
  ASSERT_TRUE(st.has_value()) << st.error().message;
  std::string key;
  {
    auth::KeyRegistry keys(**st, core::system_clock());
    auto created = keys.create("flood", "tight", {});
    ASSERT_TRUE(created.has_value()) << created.error().message;
    key = created->key;
  }
  auto limiter = std::make_unique<Limiter>(**st, core::system_clock(), 1);
  auto table = limiter->compile(c);
  ASSERT_TRUE(table.has_value()) << table.error().message;
  limiter->activate(*table);
  ASSERT_TRUE(limiter
                  ->start(std::chrono::seconds(60),
                          [](const std::function<void(unsigned)>& fn) { fn(0); })
                  .has_value());

  const http::Header header{"x-api-key", key};
  http::Request req;
  req.method = "GET";
  req.path = "/api/items";
  req.headers = std::span<const http::Header>(&header, 1);
  std::string out;
  // One context reused across requests, as a connection's is in the pipeline (its storage for
  // the principal's ARN warms up once).
  RequestContext ctx;
  auto refuse_once = [&]() {
    ctx.api_key = nullptr;
    ctx.key_state = nullptr;
    ctx.gate_count = 0;
    ctx.principal = Principal{};
    ctx.request = &req;
    ctx.limits = table->get();
    ctx.route_index = 0;
    ctx.remote_ip = "127.0.0.1";
    ctx.request_id = "0123456789abcdef";
    Refusal r;
    Verdict v = limiter->authenticate(ctx, r);
    if (v == Verdict::kContinue) {
      v = limiter->admit(ctx, r);
      if (v == Verdict::kContinue) {
        limiter->release(ctx);
        return 200;
      }
    }
    out.clear();
    http::write_error(out, r.status, r.code, r.message, ctx.request_id, true, r.extra_headers);
    return r.status;
  };
  EXPECT_EQ(refuse_once(), 200);  // the plan's one request
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(refuse_once(), 429);  // warm: per-thread buffers reach their size
  }
  t_worker = true;
  g_worker_allocs = 0;
  g_worker_locks = 0;
  g_counting = true;
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    refused += refuse_once() == 429 ? 1 : 0;
  }
  g_counting = false;
  t_worker = false;
  EXPECT_EQ(refused, 2000);
  EXPECT_EQ(g_worker_locks.load(), 0u) << "locks taken by the refusal";
  EXPECT_EQ(g_worker_allocs.load(), 0u) << "heap allocations by the refusal";
  EXPECT_NE(out.find("ThrottledKey"), std::string::npos) << out;
  limiter->stop();
  limiter.reset();
  st->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gatehouse::gateway
