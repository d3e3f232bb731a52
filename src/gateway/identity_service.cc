#include "gateway/identity_service.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json.hpp>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "identity/identity.h"
#include "identity/jwt.h"

namespace gatehouse::gateway {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
namespace json = boost::json;
using std::chrono::steady_clock;

// A key set as workers see it: parsed keys, and the document (served for user pools).
struct JwksDoc {
  std::shared_ptr<const identity::Jwks> keys;
  std::string json;
};
using DocTable = std::vector<std::shared_ptr<const JwksDoc>>;

struct JwtRule {
  std::uint64_t id = 0;  // unique in the process: cache entries of an older config never match
  std::uint32_t slot = 0;
  identity::VerifyPolicy policy;
  std::string pool;    // the user pool, "" for a file or url key set
  std::string issuer;  // for the ARN of external users
};

struct PoolEndpoint {
  std::uint32_t slot = 0;
  std::string openid_configuration;  // pre-serialized discovery document
};

struct CompiledIdentity {
  std::vector<std::unique_ptr<JwtRule>> routes;  // by route index; null: not a jwt route
  std::string prefix;                            // "" when no user pool is configured
  std::map<std::string, PoolEndpoint, std::less<>> pools;
  config::IdentityConfig identity;
};

namespace {

// Request bodies of the user pool endpoints are small JSON documents.
constexpr std::size_t kMaxEndpointBody = std::size_t{16} * 1024;
// How soon a key set may be re-read because a token named a kid it lacks.
constexpr std::chrono::seconds kMinEarlyRefresh{10};
// Retry delay for a key set that failed to load (capped by identity.jwks_refresh).
constexpr std::chrono::seconds kRetryFailed{2};
constexpr std::chrono::seconds kFetchTimeout{5};
// More distinct key sets than this get no early refresh (routes are capped at 10000 anyway).
constexpr std::size_t kMaxSlots = 16384;
// Verified tokens remembered per worker (direct-mapped by a hash of the token), and for how long
// at most: clients send the same token many times, and a signature check costs far more than the
// rest of a request.
constexpr std::size_t kCacheEntries = 128;
constexpr std::int64_t kCacheSeconds = 300;

std::atomic<std::uint64_t> next_rule_id{1};

constexpr std::string_view kWwwAuthenticate = "WWW-Authenticate: Bearer realm=\"gatehouse\"\r\n";
constexpr std::string_view kInvalidToken =
    "WWW-Authenticate: Bearer realm=\"gatehouse\", error=\"invalid_token\"\r\n";
constexpr std::string_view kInsufficient =
    "WWW-Authenticate: Bearer realm=\"gatehouse\", error=\"insufficient_scope\"\r\n";

using core::iequals;

// The token of an "Authorization: Bearer <token>" header, or "" when there is none.
std::string_view bearer(const http::Request& req) {
  std::string_view auth = req.header("authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (auth.size() <= kBearer.size() || !iequals(auth.substr(0, kBearer.size()), kBearer)) {
    return {};
  }
  auth.remove_prefix(kBearer.size());
  while (!auth.empty() && auth.front() == ' ') {
    auth.remove_prefix(1);
  }
  while (!auth.empty() && auth.back() == ' ') {
    auth.remove_suffix(1);
  }
  return auth;
}

identity::AlgSet alg_set(const std::vector<std::string>& names) {
  if (names.empty()) {
    return identity::kAllAlgs;
  }
  identity::AlgSet set = 0;
  for (const auto& n : names) {
    if (const auto a = identity::alg_from_name(n)) {
      set = static_cast<identity::AlgSet>(set | static_cast<identity::AlgSet>(*a));
    }
  }
  return set;
}

// The ARN of a user of an external issuer: the issuer without its scheme, then the subject.
std::string external_arn(const config::IdentityConfig& id, std::string_view issuer,
                         std::string_view sub) {
  const std::size_t scheme = issuer.find("://");
  if (scheme != std::string_view::npos) {
    issuer.remove_prefix(scheme + 3);
  }
  while (!issuer.empty() && issuer.back() == '/') {
    issuer.remove_suffix(1);
  }
  std::string out = "arn:gatehouse:iam::" + id.account_id + ":oidc-provider/";
  out += issuer;
  out += "/user/";
  out += sub;
  return out;
}

core::Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return core::make_error(core::ErrorCode::kIo, "cannot open " + path);
  }
  std::string text;
  text.resize(identity::kMaxJwksBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > identity::kMaxJwksBytes) {
    return core::make_error(
        core::ErrorCode::kIo,
        path + " is larger than " + std::to_string(identity::kMaxJwksBytes) + " bytes");
  }
  return text;
}

bool is_loopback(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
  }
  return false;
}

// GET http://host:port/path on loopback, blocking (the refresher thread), with one deadline for
// the whole exchange. The response is parsed by Beast; only a 200 with a body of at most
// kMaxJwksBytes is accepted.
core::Result<std::string> fetch(const std::string& host, std::uint16_t port,
                                const std::string& path) {
  const auto fail = [&](const std::string& why) {
    return core::make_error(core::ErrorCode::kIo,
                            "http://" + host + ":" + std::to_string(port) + path + ": " + why);
  };
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 ||
      res == nullptr) {
    return fail("cannot resolve the host");
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> hold(res, ::freeaddrinfo);
  if (!is_loopback(res->ai_addr)) {
    return fail("the host does not resolve to a loopback address");
  }
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return fail("socket failed");
  }
  std::unique_ptr<int, void (*)(int*)> close_fd(new int(fd), [](int* p) {
    ::close(*p);
    delete p;  // NOLINT(cppcoreguidelines-owning-memory): paired with the new above
  });
  const auto deadline = steady_clock::now() + kFetchTimeout;
  const auto wait = [&](short events) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady_clock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd p{fd, events, 0};
    return ::poll(&p, 1, static_cast<int>(left.count())) == 1;
  };
  if (::connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    if (errno != EINPROGRESS || !wait(POLLOUT)) {
      return fail("cannot connect");
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      return fail("cannot connect");
    }
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + host + ":" +
                          std::to_string(port) +
                          "\r\nAccept: application/json\r\nConnection: close\r\n"
                          "User-Agent: gatehouse\r\n\r\n";
  std::size_t sent = 0;
  while (sent < req.size()) {
    const ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EAGAIN && wait(POLLOUT)) {
      continue;
    } else {
      return fail("send failed");
    }
  }
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(identity::kMaxJwksBytes);
  parser.header_limit(16 * 1024);
  parser.eager(true);
  std::string buf;
  std::array<char, 8192> chunk{};
  boost::system::error_code ec;
  while (!parser.is_done()) {
    const ssize_t n = ::recv(fd, chunk.data(), chunk.size(), 0);
    if (n < 0 && errno == EAGAIN) {
      if (!wait(POLLIN)) {
        return fail("timed out");
      }
      continue;
    }
    if (n < 0) {
      return fail("recv failed");
    }
    if (n == 0) {
      parser.put_eof(ec);
      if (ec) {
        return fail("the response ended early");
      }
      break;
    }
    buf.append(chunk.data(), static_cast<std::size_t>(n));
    while (!buf.empty() && !parser.is_done()) {
      const std::size_t used = parser.put(net::buffer(buf.data(), buf.size()), ec);
      if (ec == bhttp::error::need_more) {
        ec = {};
        break;
      }
      if (ec) {
        return fail("bad response: " + ec.message());
      }
      buf.erase(0, used);
    }
  }
  if (!parser.is_done()) {
    return fail("incomplete response");
  }
  const auto& msg = parser.get();
  if (msg.result_int() != 200) {
    return fail("status " + std::to_string(msg.result_int()));
  }
  return msg.body();
}

// A slot's source: what to read, and its refresh schedule (refresher thread only, except the
// doc, which the control thread sets too: guarded by Impl::mu).
struct Source {
  config::JwksSource kind = config::JwksSource::kNone;
  std::string location;  // pool name or file path
  std::string host;
  std::uint16_t port = 0;
  std::string path;
  std::shared_ptr<const JwksDoc> doc;
  bool in_use = true;  // named by the config in force; others are not re-read
  steady_clock::time_point next_load{};
  steady_clock::time_point last_load{};
  std::string last_error;
};

core::Result<std::shared_ptr<const JwksDoc>> load_source(const Source& s) {
  auto text =
      s.kind == config::JwksSource::kFile ? read_file(s.location) : fetch(s.host, s.port, s.path);
  if (!text) {
    return tl::unexpected(text.error());
  }
  auto set = identity::Jwks::parse(*text);
  if (!set) {
    return core::make_error(core::ErrorCode::kIo, set.error().message);
  }
  auto doc = std::make_shared<JwksDoc>();
  doc->keys = std::make_shared<const identity::Jwks>(std::move(*set));
  doc->json = std::move(*text);
  return std::shared_ptr<const JwksDoc>(std::move(doc));
}

std::string token_body(const identity::TokenSet& t) {
  json::object o;
  o["id_token"] = t.id_token;
  o["access_token"] = t.access_token;
  if (!t.refresh_token.empty()) {
    o["refresh_token"] = t.refresh_token;
  }
  o["expires_in"] = t.expires_in;
  o["token_type"] = "Bearer";
  return json::serialize(o);
}

json::object user_json(const identity::UserRecord& u) {
  json::object o;
  o["username"] = u.username;
  o["sub"] = u.sub;
  o["confirmed"] = u.confirmed;
  o["created_ms"] = u.created_ms;
  return o;
}

// The endpoint a path names: <prefix>/<pool>/<action>.
struct EndpointPath {
  std::string_view pool;
  std::string_view action;
};
EndpointPath split_endpoint(const CompiledIdentity& ci, std::string_view path) {
  std::string_view rest = path.substr(ci.prefix.size() + 1);
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos) {
    return {rest, {}};
  }
  return {rest.substr(0, slash), rest.substr(slash + 1)};
}

// A reply computed off the worker.
struct Reply {
  int status = 200;
  std::string_view code;  // static storage
  std::string body;       // JSON, or the error message
  std::int64_t retry_after = 0;
};

Reply from_error(const identity::IdpError& e) {
  return Reply{e.status, e.code, e.message, e.retry_after.count()};
}

void write_reply(http::Exchange& ex, const Reply& r) {
  if (r.status < 400) {
    http::ResponseWriter w(ex.out());
    w.start(r.status, ex.request_id(), ex.keep_alive());
    w.header("Cache-Control", "no-store");
    w.body("application/json", r.body);
  } else {
    std::string extra;
    if (r.retry_after > 0) {
      extra = "Retry-After: " + std::to_string(r.retry_after) + "\r\n";
    }
    if (r.status == 401) {
      extra += kWwwAuthenticate;
    }
    http::write_error(ex.out(), r.status, r.code, r.body, ex.request_id(), ex.keep_alive(), extra);
  }
  ex.set_status(r.status);
}

}  // namespace

struct IdentityService::Impl {
  Impl(store::Store& st, const core::Clock& c, unsigned workers)
      : store(st), clock(c), per_worker(workers), wanted(new std::atomic<bool>[kMaxSlots]) {
    for (std::size_t i = 0; i < kMaxSlots; ++i) {
      wanted[i].store(false, std::memory_order_relaxed);
    }
  }

  store::Store& store;
  const core::Clock& clock;

  std::mutex mu;                                            // guards what follows, up to per_worker
  std::vector<std::unique_ptr<Source>> sources;             // by slot
  std::map<std::string, std::uint32_t, std::less<>> slots;  // jwks text -> slot
  std::unique_ptr<identity::UserPools> pools;
  config::IdentityConfig identity;
  std::int64_t keys_version = -1;
  std::function<void(std::function<void(unsigned)>)> post;
  bool stopping = false;
  std::condition_variable cv;
  std::thread refresher;

  // A token that verified, with what it yielded. Holding the key set keeps its address from
  // being reused by a later set, so a pointer comparison tells whether the set changed.
  struct CachedToken {
    std::uint64_t rule_id = 0;  // 0: empty
    std::shared_ptr<const JwksDoc> doc;
    std::int64_t valid_until = 0;  // wall seconds: exp + leeway, at most kCacheSeconds ahead
    std::string token;
    std::string arn;
    std::vector<std::pair<std::string, std::string>> claims;
  };

  struct alignas(64) PerWorker {
    std::shared_ptr<const DocTable> docs;  // worker thread only
    identity::Claims claims;               // scratch for verify()
    std::array<CachedToken, kCacheEntries> cache;
  };
  std::vector<PerWorker> per_worker;
  std::unique_ptr<std::atomic<bool>[]> wanted;  // by slot: a worker saw an unknown kid

  std::unique_ptr<net::thread_pool> hashing;  // argon2id (sign-up, sign-in)
  std::unique_ptr<net::thread_pool> light;    // store-only work (refresh, sign-out)
  std::atomic<std::uint32_t> pending{0};      // jobs queued on or running in `hashing`
  std::atomic<std::uint32_t> max_pending{64};

  // Counters for /metrics.
  std::atomic<std::uint64_t> signups{0}, signins_ok{0}, signins_failed{0}, signins_throttled{0},
      refreshes{0}, signouts{0}, busy{0}, jwks_loads_ok{0}, jwks_loads_failed{0};

  std::uint32_t slot_for(const std::string& key, const Source& proto) {  // mu held
    const auto it = slots.find(key);
    if (it != slots.end()) {
      return it->second;
    }
    const auto slot = static_cast<std::uint32_t>(sources.size());
    sources.push_back(std::make_unique<Source>(proto));
    slots.emplace(key, slot);
    return slot;
  }

  // Pool key sets from `pools` into their slots. mu held.
  void refresh_pool_docs() {
    for (auto& s : sources) {
      if (s->kind != config::JwksSource::kPool) {
        continue;
      }
      auto keys = pools->jwks(s->location);
      if (!keys) {
        continue;
      }
      auto doc = std::make_shared<JwksDoc>();
      doc->keys = std::move(keys);
      doc->json = pools->jwks_json(s->location);
      s->doc = std::move(doc);
    }
  }

  // Posts the current key sets to every worker. mu held.
  void publish() {
    if (!post) {
      return;
    }
    auto table = std::make_shared<DocTable>();
    table->reserve(sources.size());
    for (const auto& s : sources) {
      table->push_back(s->doc);
    }
    std::shared_ptr<const DocTable> t = std::move(table);
    post([this, t](unsigned w) { per_worker[w].docs = t; });
  }

  void run() {
    std::unique_lock lock(mu);
    while (!stopping) {
      // Workers never wake this thread: a flood of tokens with unknown kids costs them a flag
      // store, and the refresher at most one re-read per key set every kMinEarlyRefresh.
      cv.wait_for(lock, std::chrono::seconds(1), [&] { return stopping; });
      if (stopping) {
        break;
      }
      lock.unlock();
      tick();
      lock.lock();
    }
  }

  // Refresher thread: pool keys rotated elsewhere, then file and url key sets that are due.
  void tick() {
    bool changed = false;
    if (auto v = pools->keys_version(); v) {
      std::int64_t seen = 0;
      {
        std::lock_guard lock(mu);
        seen = keys_version;
      }
      if (*v != seen) {
        if (auto r = pools->load_keys(false); r) {
          std::lock_guard lock(mu);
          keys_version = *v;
          refresh_pool_docs();
          changed = true;
        } else {
          spdlog::warn("identity: reloading user pool keys: {}", r.error().message);
        }
      }
    }
    const auto now = steady_clock::now();
    std::vector<std::pair<std::uint32_t, Source>> due;
    std::chrono::milliseconds period{};
    {
      std::lock_guard lock(mu);
      period = identity.jwks_refresh;
      for (std::uint32_t i = 0; i < sources.size(); ++i) {
        const Source& s = *sources[i];
        if (!s.in_use ||
            (s.kind != config::JwksSource::kFile && s.kind != config::JwksSource::kUrl)) {
          continue;
        }
        const bool early = i < kMaxSlots && wanted[i].exchange(false, std::memory_order_relaxed) &&
                           now - s.last_load >= kMinEarlyRefresh;
        if (now >= s.next_load || early) {
          due.emplace_back(i, s);
        }
      }
    }
    for (auto& [slot, s] : due) {
      auto doc = load_source(s);
      std::lock_guard lock(mu);
      Source& live = *sources[slot];
      live.last_load = steady_clock::now();
      if (doc) {
        jwks_loads_ok.fetch_add(1, std::memory_order_relaxed);
        live.next_load = live.last_load + period;
        live.last_error.clear();
        live.doc = std::move(*doc);
        changed = true;
      } else {
        jwks_loads_failed.fetch_add(1, std::memory_order_relaxed);
        live.next_load = live.last_load + std::min<std::chrono::milliseconds>(period, kRetryFailed);
        if (live.last_error != doc.error().message) {
          spdlog::warn("identity: key set {}: {} (keeping the last good one)",
                       live.kind == config::JwksSource::kFile ? live.location : live.host,
                       doc.error().message);
          live.last_error = doc.error().message;
        }
      }
    }
    if (changed) {
      std::lock_guard lock(mu);
      publish();
    }
  }

  // Runs `job` on `pool` and its reply back on the exchange's worker.
  void run_job(net::thread_pool& pool, http::Exchange& ex, std::function<Reply()> job,
               bool counted) {
    auto* ioc = static_cast<net::io_context*>(ex.io_context());
    net::post(pool, [this, ioc, &ex, token = ex.keep_alive_token(), job = std::move(job),
                     counted]() mutable {
      Reply r = job();
      if (counted) {
        pending.fetch_sub(1, std::memory_order_relaxed);
      }
      net::post(*ioc, [&ex, token = std::move(token), r = std::move(r)]() mutable {
        write_reply(ex, r);
        ex.resume();
      });
    });
  }
};

IdentityService::IdentityService(store::Store& store, const core::Clock& clock, unsigned workers)
    : impl_(std::make_unique<Impl>(store, clock, workers)) {}

IdentityService::~IdentityService() { stop(); }

core::Result<std::shared_ptr<const CompiledIdentity>> IdentityService::compile(
    const config::Config& c) {
  auto ci = std::make_shared<CompiledIdentity>();
  ci->identity = c.identity;
  ci->routes.resize(c.routes.size());
  if (!c.user_pools.empty()) {
    ci->prefix = c.identity.path_prefix;
  }
  // File key sets are read now, so a broken one refuses this config.
  std::vector<std::pair<std::uint32_t, std::shared_ptr<const JwksDoc>>> loaded;
  std::lock_guard lock(impl_->mu);
  for (const auto& p : c.user_pools) {
    Source proto;
    proto.kind = config::JwksSource::kPool;
    proto.location = p.name;
    PoolEndpoint ep;
    ep.slot = impl_->slot_for("pool " + p.name, proto);
    json::object oc;
    oc["issuer"] = p.issuer;
    oc["jwks_uri"] = p.issuer + "/.well-known/jwks.json";
    oc["response_types_supported"] = json::array{"token"};
    oc["subject_types_supported"] = json::array{"public"};
    oc["id_token_signing_alg_values_supported"] = json::array{"EdDSA", "RS256"};
    oc["token_endpoint_auth_methods_supported"] = json::array{"none"};
    ep.openid_configuration = json::serialize(oc);
    ci->pools.emplace(p.name, std::move(ep));
  }
  for (std::size_t i = 0; i < c.routes.size(); ++i) {
    const config::Route& r = c.routes[i];
    if (r.auth != config::RouteAuth::kJwt) {
      continue;
    }
    const config::JwtAuthorizerConfig& j = r.jwt;
    Source proto;
    proto.kind = j.source;
    proto.location = j.location;
    proto.host = j.url_host;
    proto.port = j.url_port;
    proto.path = j.url_path;
    auto rule = std::make_unique<JwtRule>();
    rule->id = next_rule_id.fetch_add(1, std::memory_order_relaxed);
    rule->slot = impl_->slot_for(j.jwks, proto);
    rule->policy.algorithms = alg_set(j.algorithms);
    rule->policy.issuer = j.issuer;
    rule->policy.audiences = j.audience;
    rule->policy.token_use = j.token_use == "access" ? identity::TokenUse::kAccess
                             : j.token_use == "id"   ? identity::TokenUse::kId
                                                     : identity::TokenUse::kAny;
    rule->policy.scopes = j.scopes;
    rule->policy.leeway = std::chrono::duration_cast<std::chrono::seconds>(j.leeway);
    rule->pool = j.source == config::JwksSource::kPool ? j.location : std::string();
    rule->issuer = j.issuer;
    if (j.source == config::JwksSource::kFile) {
      auto doc = load_source(*impl_->sources[rule->slot]);
      if (!doc) {
        return core::make_error(core::ErrorCode::kConfig, c.source + ":" + std::to_string(r.line) +
                                                              ": routes[" + std::to_string(i) +
                                                              "].jwt.jwks: " + doc.error().message);
      }
      loaded.emplace_back(rule->slot, std::move(*doc));
    }
    ci->routes[i] = std::move(rule);
  }
  // Only a config that compiled whole changes the loaded key sets.
  for (auto& [slot, doc] : loaded) {
    Source& s = *impl_->sources[slot];
    s.doc = std::move(doc);
    s.last_load = steady_clock::now();
    s.next_load = s.last_load + c.identity.jwks_refresh;
  }
  return std::shared_ptr<const CompiledIdentity>(std::move(ci));
}

core::Result<void> IdentityService::activate(const config::Config& c) {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    if (!m.pools) {
      m.pools = std::make_unique<identity::UserPools>(c, m.store, m.clock);
    } else {
      m.pools->update(c);
    }
    m.identity = c.identity;
    m.max_pending.store(c.identity.max_pending, std::memory_order_relaxed);
    // Key sets the config no longer names keep their slot (a snapshot still in flight may use
    // it) but are no longer fetched.
    std::set<std::string_view> named;
    for (const auto& r : c.routes) {
      if (r.auth == config::RouteAuth::kJwt) {
        named.insert(r.jwt.jwks);
      }
    }
    for (const auto& [key, slot] : m.slots) {
      m.sources[slot]->in_use =
          named.contains(key) || m.sources[slot]->kind == config::JwksSource::kPool;
    }
  }
  // Store I/O and key generation: on the control thread, outside the lock.
  if (auto r = m.pools->load_keys(true); !r) {
    return r;
  }
  auto v = m.pools->keys_version();
  std::lock_guard lock(m.mu);
  if (v) {
    m.keys_version = *v;
  }
  m.refresh_pool_docs();
  m.publish();
  return {};
}

void IdentityService::start(std::function<void(std::function<void(unsigned)>)> post) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  m.post = std::move(post);
  m.hashing = std::make_unique<net::thread_pool>(m.identity.hash_threads);
  m.light = std::make_unique<net::thread_pool>(1);
  m.publish();
  m.refresher = std::thread([&m] { m.run(); });
}

void IdentityService::stop() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.stopping = true;
  }
  m.cv.notify_all();
  if (m.refresher.joinable()) {
    m.refresher.join();
  }
  if (m.hashing) {
    m.hashing->join();
  }
  if (m.light) {
    m.light->join();
  }
}

Verdict IdentityService::authenticate(const CompiledIdentity& ci, RequestContext& ctx,
                                      Refusal& out) {
  const JwtRule* rule =
      ctx.route_index < ci.routes.size() ? ci.routes[ctx.route_index].get() : nullptr;
  if (rule == nullptr) {
    return Verdict::kContinue;
  }
  const std::string_view token = bearer(*ctx.request);
  if (token.empty()) {
    out = Refusal{401, "Unauthenticated",
                  "this route needs a bearer token: Authorization: Bearer <JWT>", kWwwAuthenticate};
    return Verdict::kRefuse;
  }
  Impl::PerWorker& pw = impl_->per_worker[ctx.worker];
  const std::shared_ptr<const JwksDoc>* doc_ptr =
      pw.docs && rule->slot < pw.docs->size() ? &(*pw.docs)[rule->slot] : nullptr;
  const JwksDoc* doc = doc_ptr != nullptr ? doc_ptr->get() : nullptr;
  if (doc == nullptr || !doc->keys) {
    out = Refusal{503, "JwksUnavailable", "the route's signing keys are not loaded yet",
                  "Retry-After: 1\r\n"};
    return Verdict::kRefuse;
  }
  const auto wall = impl_->clock.wall();
  const std::int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(wall.time_since_epoch()).count();
  Impl::CachedToken& hit = pw.cache[std::hash<std::string_view>{}(token) % kCacheEntries];
  // The comparison takes the same time whatever the bytes: the cache holds valid credentials.
  if (hit.rule_id == rule->id && hit.doc.get() == doc && now < hit.valid_until &&
      core::constant_time_equal(hit.token, token)) {
    ctx.principal_arn = hit.arn;
    ctx.user_pool = rule->pool;
    ctx.claims = hit.claims;
    ctx.principal = Principal{"user", ctx.principal_arn};
    return Verdict::kContinue;
  }
  identity::Claims& claims = pw.claims;
  const identity::JwtStatus st = identity::verify(token, *doc->keys, rule->policy, wall, claims);
  if (st == identity::JwtStatus::kUnknownKey && rule->slot < kMaxSlots) {
    // Maybe the issuer rotated its keys: ask the refresher for an early re-read.
    impl_->wanted[rule->slot].store(true, std::memory_order_relaxed);
  }
  if (st != identity::JwtStatus::kOk) {
    out = identity::is_authentication_failure(st)
              ? Refusal{401, "InvalidToken", identity::describe(st), kInvalidToken}
              : Refusal{403, "TokenNotAccepted", identity::describe(st), kInsufficient};
    return Verdict::kRefuse;
  }
  if (claims.sub.empty()) {
    out = Refusal{401, "InvalidToken", "the token has no subject (sub)", kInvalidToken};
    return Verdict::kRefuse;
  }
  ctx.principal_arn = rule->pool.empty() ? external_arn(ci.identity, rule->issuer, claims.sub)
                                         : identity::user_arn(ci.identity, rule->pool, claims.sub);
  ctx.user_pool = rule->pool;
  ctx.claims.assign(claims.all.begin(), claims.all.end());
  ctx.principal = Principal{"user", ctx.principal_arn};
  // exp is required by every rule (VerifyPolicy::require_exp), so the token's life is bounded.
  const std::int64_t leeway = std::clamp<std::int64_t>(rule->policy.leeway.count(), 0, 300);
  hit.rule_id = rule->id;
  hit.doc = *doc_ptr;
  hit.valid_until =
      claims.exp >= now + kCacheSeconds - leeway ? now + kCacheSeconds : claims.exp + leeway;
  hit.token.assign(token);
  hit.arn = ctx.principal_arn;
  hit.claims = ctx.claims;
  return Verdict::kContinue;
}

bool IdentityService::owns(const CompiledIdentity& ci, std::string_view path) noexcept {
  return !ci.prefix.empty() && path.size() > ci.prefix.size() + 1 &&
         path.compare(0, ci.prefix.size(), ci.prefix) == 0 && path[ci.prefix.size()] == '/';
}

http::Step IdentityService::on_headers(const CompiledIdentity& ci, http::Exchange& ex) {
  const http::Request& req = ex.request();
  const EndpointPath ep = split_endpoint(ci, req.path);
  const auto pool = ci.pools.find(ep.pool);
  const auto refuse = [&](int status, std::string_view code, std::string_view message,
                          std::string_view extra = {}) {
    http::write_error(ex.out(), status, code, message, ex.request_id(), ex.keep_alive(), extra);
    ex.set_status(status);
    return http::Step::kDone;
  };
  if (pool == ci.pools.end()) {
    return refuse(404, "UserPoolNotFound", "no such user pool");
  }
  const bool get = req.method == "GET" || req.method == "HEAD";
  if (ep.action == ".well-known/jwks.json" || ep.action == ".well-known/openid-configuration") {
    if (!get) {
      return refuse(405, "MethodNotAllowed", "use GET", "Allow: GET, HEAD\r\n");
    }
    std::string_view body = pool->second.openid_configuration;
    if (ep.action == ".well-known/jwks.json") {
      const auto& docs = impl_->per_worker[ex.worker()].docs;
      const JwksDoc* doc =
          docs && pool->second.slot < docs->size() ? (*docs)[pool->second.slot].get() : nullptr;
      if (doc == nullptr) {
        return refuse(503, "JwksUnavailable", "the pool's keys are not loaded yet",
                      "Retry-After: 1\r\n");
      }
      body = doc->json;
    }
    http::ResponseWriter w(ex.out());
    w.start(200, ex.request_id(), ex.keep_alive());
    // Short caching: a rotation must reach verifiers well before the old key is unpublished.
    w.header("Cache-Control", "public, max-age=300");
    w.body("application/json", req.method == "HEAD" ? std::string_view() : body);
    ex.set_status(200);
    return http::Step::kDone;
  }
  if (ep.action != "signup" && ep.action != "signin" && ep.action != "refresh" &&
      ep.action != "signout") {
    return refuse(404, "NotFound", "no such user pool endpoint");
  }
  if (req.method != "POST") {
    return refuse(405, "MethodNotAllowed", "use POST", "Allow: POST\r\n");
  }
  if (req.content_length > kMaxEndpointBody) {
    return refuse(413, "PayloadTooLarge", "user pool requests are at most 16 KiB");
  }
  return http::Step::kReadBody;
}

http::Step IdentityService::on_request(const CompiledIdentity& ci, http::Exchange& ex) {
  Impl& m = *impl_;
  const http::Request& req = ex.request();
  const EndpointPath ep = split_endpoint(ci, req.path);
  const std::string pool(ep.pool);
  const auto done = [&](const Reply& r) {
    write_reply(ex, r);
    return http::Step::kDone;
  };
  if (req.body.size() > kMaxEndpointBody) {
    return done(Reply{413, "PayloadTooLarge", "user pool requests are at most 16 KiB"});
  }
  if (ep.action == "signout") {
    std::string token(bearer(req));
    if (token.empty()) {
      return done(
          Reply{401, "NotAuthorized", "sign-out needs Authorization: Bearer <access token>"});
    }
    m.run_job(
        *m.light, ex,
        [&m, pool, token = std::move(token)] {
          auto r = m.pools->sign_out(pool, token);
          if (!r) {
            return from_error(r.error());
          }
          m.signouts.fetch_add(1, std::memory_order_relaxed);
          return Reply{200, {}, "{\"signed_out\":true}"};
        },
        false);
    return http::Step::kPending;
  }
  // The other endpoints take a JSON object of strings (and "attributes", an object of strings).
  boost::system::error_code ec;
  json::parse_options opts;
  opts.max_depth = 4;
  const json::value doc =
      json::parse(json::string_view(req.body.data(), req.body.size()), ec, {}, opts);
  if (ec || !doc.is_object()) {
    return done(Reply{400, "BadRequest", "the body must be a JSON object"});
  }
  const json::object& o = doc.get_object();
  std::string bad;
  const auto field = [&](const char* name, bool required) -> std::string {
    const json::value* v = o.if_contains(name);
    if (v == nullptr) {
      if (required && bad.empty()) {
        bad = std::string("missing \"") + name + "\"";
      }
      return {};
    }
    if (!v->is_string()) {
      if (bad.empty()) {
        bad = std::string("\"") + name + "\" must be a string";
      }
      return {};
    }
    return std::string(v->get_string());
  };
  if (ep.action == "refresh") {
    std::string token = field("refresh_token", true);
    std::string client = field("client_id", false);
    if (!bad.empty()) {
      return done(Reply{400, "BadRequest", bad});
    }
    m.run_job(
        *m.light, ex,
        [&m, pool, token = std::move(token), client = std::move(client)] {
          auto r = m.pools->refresh(pool, token, client);
          if (!r) {
            return from_error(r.error());
          }
          m.refreshes.fetch_add(1, std::memory_order_relaxed);
          return Reply{200, {}, token_body(*r)};
        },
        false);
    return http::Step::kPending;
  }
  std::string username = field("username", true);
  std::string password = field("password", true);
  std::string client = field("client_id", ep.action == "signin");
  std::vector<std::pair<std::string, std::string>> attributes;
  if (const json::value* a = o.if_contains("attributes"); a != nullptr && ep.action == "signup") {
    if (!a->is_object()) {
      bad = "\"attributes\" must be an object of strings";
    } else {
      for (const auto& kv : a->get_object()) {
        if (!kv.value().is_string()) {
          bad = "\"attributes\" must be an object of strings";
          break;
        }
        attributes.emplace_back(std::string(kv.key()), std::string(kv.value().get_string()));
      }
    }
  }
  if (!bad.empty()) {
    return done(Reply{400, "BadRequest", bad});
  }
  // argon2id is slow by design: bound the queue so a flood of sign-ins costs a 503, not memory
  // and minutes of latency for everyone queued behind it.
  if (m.pending.fetch_add(1, std::memory_order_relaxed) >=
      m.max_pending.load(std::memory_order_relaxed)) {
    m.pending.fetch_sub(1, std::memory_order_relaxed);
    m.busy.fetch_add(1, std::memory_order_relaxed);
    return done(Reply{503, "IdentityBusy", "too many sign-ins in progress; retry shortly", 1});
  }
  if (ep.action == "signup") {
    m.run_job(
        *m.hashing, ex,
        [&m, pool, username = std::move(username), password = std::move(password),
         attributes = std::move(attributes)]() mutable {
          auto r = m.pools->sign_up(pool, username, password, std::move(attributes));
          if (!r) {
            return from_error(r.error());
          }
          m.signups.fetch_add(1, std::memory_order_relaxed);
          json::object out = user_json(*r);
          out.erase("created_ms");
          return Reply{200, {}, json::serialize(out)};
        },
        true);
    return http::Step::kPending;
  }
  m.run_job(
      *m.hashing, ex,
      [&m, pool, username = std::move(username), password = std::move(password),
       client = std::move(client), ip = std::string(ex.remote_ip())] {
        auto r = m.pools->sign_in(pool, username, password, client, ip);
        if (!r) {
          (r.error().status == 429 ? m.signins_throttled : m.signins_failed)
              .fetch_add(1, std::memory_order_relaxed);
          return from_error(r.error());
        }
        m.signins_ok.fetch_add(1, std::memory_order_relaxed);
        return Reply{200, {}, token_body(*r)};
      },
      true);
  return http::Step::kPending;
}

IdentityAdminReply IdentityService::admin(const std::string& method, const std::string& sub) {
  Impl& m = *impl_;
  const auto reply = [](const identity::IdpError& e) {
    return IdentityAdminReply{e.status, std::string(e.code), e.message};
  };
  constexpr std::string_view kPrefix = "/user-pools/";
  std::string_view rest = sub;
  rest.remove_prefix(kPrefix.size());
  const std::size_t slash = rest.find('/');
  const std::string pool(rest.substr(0, slash));
  rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (!m.pools) {
    return IdentityAdminReply{404, "UserPoolNotFound", "no user pools"};
  }
  if (rest == "/users" && method == "GET") {
    auto users = m.pools->list_users(pool);
    if (!users) {
      return reply(users.error());
    }
    json::array arr;
    for (const auto& u : *users) {
      arr.emplace_back(user_json(u));
    }
    return IdentityAdminReply{200, {}, json::serialize(json::object{{"users", std::move(arr)}})};
  }
  if (rest == "/keys" && method == "GET") {
    auto keys = m.pools->list_keys(pool);
    if (!keys) {
      return reply(keys.error());
    }
    json::array arr;
    for (const auto& k : *keys) {
      arr.emplace_back(json::object{{"kid", k.kid},
                                    {"alg", std::string(identity::alg_name(k.alg))},
                                    {"created_ms", k.created_ms},
                                    {"retired_ms", k.retired_ms},
                                    {"active", k.retired_ms == 0}});
    }
    return IdentityAdminReply{200, {}, json::serialize(json::object{{"keys", std::move(arr)}})};
  }
  if (rest == "/keys/rotate" && method == "POST") {
    auto k = m.pools->rotate_key(pool);
    if (!k) {
      return reply(k.error());
    }
    {
      std::lock_guard lock(m.mu);
      m.refresh_pool_docs();
      m.publish();
    }
    return IdentityAdminReply{
        200,
        {},
        json::serialize(
            json::object{{"kid", k->kid}, {"alg", std::string(identity::alg_name(k->alg))}})};
  }
  constexpr std::string_view kUsers = "/users/";
  if (method == "POST" && rest.starts_with(kUsers)) {
    const std::string_view tail = rest.substr(kUsers.size());
    const std::size_t s2 = tail.rfind('/');
    if (s2 != std::string_view::npos) {
      const std::string user(tail.substr(0, s2));
      const std::string_view action = tail.substr(s2 + 1);
      if (action == "confirm" || action == "signout") {
        auto u = action == "confirm" ? m.pools->admin_confirm(pool, user)
                                     : m.pools->admin_sign_out(pool, user);
        if (!u) {
          return reply(u.error());
        }
        return IdentityAdminReply{200, {}, json::serialize(user_json(*u))};
      }
    }
  }
  return IdentityAdminReply{404, "NotFound", "no such admin endpoint"};
}

void IdentityService::metrics(std::string& out) const {
  const Impl& m = *impl_;
  const auto line = [&](std::string_view name, std::string_view labels,
                        const std::atomic<std::uint64_t>& v) {
    out += name;
    out += labels;
    out += ' ';
    out += std::to_string(v.load(std::memory_order_relaxed));
    out += '\n';
  };
  out += "# HELP gatehouse_identity_requests_total User pool endpoint outcomes.\n";
  out += "# TYPE gatehouse_identity_requests_total counter\n";
  constexpr std::string_view kReq = "gatehouse_identity_requests_total";
  line(kReq, "{op=\"signup\",result=\"ok\"}", m.signups);
  line(kReq, "{op=\"signin\",result=\"ok\"}", m.signins_ok);
  line(kReq, "{op=\"signin\",result=\"failed\"}", m.signins_failed);
  line(kReq, "{op=\"signin\",result=\"throttled\"}", m.signins_throttled);
  line(kReq, "{op=\"refresh\",result=\"ok\"}", m.refreshes);
  line(kReq, "{op=\"signout\",result=\"ok\"}", m.signouts);
  line(kReq, "{op=\"any\",result=\"busy\"}", m.busy);
  out += "# HELP gatehouse_jwks_loads_total Loads of file and url key sets.\n";
  out += "# TYPE gatehouse_jwks_loads_total counter\n";
  line("gatehouse_jwks_loads_total", "{result=\"ok\"}", m.jwks_loads_ok);
  line("gatehouse_jwks_loads_total", "{result=\"failed\"}", m.jwks_loads_failed);
}

}  // namespace gatehouse::gateway
