#include "config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "config/schema.h"
#include "core/core.h"
#include "policy/policy.h"

namespace gatehouse::config {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const fs::path kSourceDir = GH_SOURCE_DIR;
const fs::path kBadDir = kSourceDir / "tests" / "unit" / "config" / "bad";
const fs::path kExample = kSourceDir / "gatehouse.example.yaml";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// "LINE:COL: message", the format of the .expected files.
std::vector<std::string> short_form(const std::vector<ConfigError>& errors) {
  std::vector<std::string> out;
  out.reserve(errors.size());
  for (const ConfigError& e : errors) {
    out.push_back(std::to_string(e.line) + ":" + std::to_string(e.column) + ": " + e.message);
  }
  return out;
}

std::string joined(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const ConfigError& e : errors) {
    out += e.to_string() + "\n";
  }
  return out;
}

Config ok(std::string_view yaml) {
  auto r = load_string(yaml, "test.yaml");
  EXPECT_TRUE(r.has_value()) << joined(r.error());
  return r ? std::move(*r) : Config{};
}

std::vector<std::string> errors(std::string_view yaml) {
  auto r = load_string(yaml, "test.yaml");
  EXPECT_FALSE(r.has_value()) << "expected errors for:\n" << yaml;
  return r ? std::vector<std::string>{} : short_form(r.error());
}

// ---------------------------------------------------------------------------------------------
// Defaults and good files.

void expect_defaults(const Config& c) {
  const Config d;
  EXPECT_EQ(c.server.listen.host, "127.0.0.1");
  EXPECT_EQ(c.server.listen.port, 8080);
  EXPECT_EQ(c.server.threads, 0U);
  EXPECT_EQ(c.server.shutdown_grace, milliseconds(10'000));
  EXPECT_EQ(c.limits.max_header_bytes, 16U * 1024);
  EXPECT_EQ(c.limits.max_body_bytes, 10U * 1024 * 1024);
  EXPECT_EQ(c.limits.header_timeout, d.limits.header_timeout);
  EXPECT_EQ(c.limits.max_connections, d.limits.max_connections);
  EXPECT_EQ(c.admin.token_sha256, "");
  EXPECT_EQ(c.admin.health_path, "/healthz");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.access_log, "stdout");
  EXPECT_EQ(c.store.state, "sqlite://./data/gatehouse.db");
  EXPECT_TRUE(c.stages.empty());
  EXPECT_TRUE(c.upstreams.empty());
  EXPECT_TRUE(c.routes.empty());
  EXPECT_EQ(c.api_keys.header, "x-api-key");
  EXPECT_EQ(c.api_keys.quota_flush_interval, milliseconds(1000));
  EXPECT_FALSE(c.throttling.account.set);
  EXPECT_FALSE(c.throttling.client_ip.set);
  EXPECT_EQ(c.throttling.concurrency, 0U);
  EXPECT_EQ(c.throttling.concurrency_wait, milliseconds(0));
  EXPECT_TRUE(c.functions.empty());
  EXPECT_TRUE(c.plans.empty());
}

TEST(ConfigDefaults, EmptyDocumentsTakeTheDefaults) {
  for (const std::string_view yaml :
       {"", "\n", "# only a comment\n", "~\n", "---\n", "---\n...\n", "server:\nlimits: ~\n",
        "stages: []\nupstreams: []\nroutes: []\n", "server: {}\nroutes:\n",
        "api_keys: {}\nthrottling:\nfunctions: []\nplans: ~\n"}) {
    SCOPED_TRACE(yaml);
    const Config c = ok(yaml);
    expect_defaults(c);
    EXPECT_EQ(c.source, "test.yaml");
  }
}

TEST(ConfigExample, LoadsAndServesHello) {
  auto r = load_file(kExample.string());
  ASSERT_TRUE(r.has_value()) << joined(r.error());
  const Config& c = *r;
  EXPECT_EQ(c.source, kExample.string());
  EXPECT_EQ(c.server.listen.host, "127.0.0.1");
  EXPECT_EQ(c.server.listen.port, 8080);
  EXPECT_EQ(c.log.access_log, "stdout");
  EXPECT_EQ(c.store.state, "sqlite://./data/gatehouse.db");
  // The example's token is the hash of "change-me", as its comment says.
  EXPECT_EQ(c.admin.token_sha256, core::sha256_hex("change-me"));
  ASSERT_GE(c.routes.size(), 2U);
  const Route& hello = c.routes[0];
  EXPECT_THAT(hello.methods, ElementsAre("GET"));
  EXPECT_EQ(hello.path, "/hello");
  EXPECT_EQ(hello.target.kind, Target::Kind::kStatic);
  EXPECT_EQ(hello.target.static_target.status, 200);
  EXPECT_EQ(hello.target.static_target.body, "hello from gatehouse\n");
  const bool has_param = std::any_of(c.routes.begin(), c.routes.end(), [](const Route& r) {
    return r.path.find('{') != std::string::npos;
  });
  EXPECT_TRUE(has_param);
  // /hello stays keyless and unthrottled, so `curl http://127.0.0.1:8080/hello` just works.
  EXPECT_EQ(hello.api_key, ApiKeyMode::kNone);
  EXPECT_FALSE(hello.throttle.set);
  ASSERT_NE(c.find_function(hello.target.function), nullptr);
  EXPECT_FALSE(c.find_function(hello.target.function)->throttle.set);
  // A keyed route on the free plan.
  const Plan* free = c.find_plan("free");
  ASSERT_NE(free, nullptr);
  EXPECT_TRUE(free->throttle.set);
  EXPECT_TRUE(free->quota.set);
  const auto keyed = std::find_if(c.routes.begin(), c.routes.end(), [](const Route& r) {
    return r.api_key == ApiKeyMode::kRequired;
  });
  ASSERT_NE(keyed, c.routes.end());
  EXPECT_EQ(keyed->path, "/v1/items/{id}");
  EXPECT_NE(std::find(free->routes.begin(), free->routes.end(), keyed->name), free->routes.end());
  EXPECT_EQ(c.api_keys.header, "x-api-key");
  EXPECT_TRUE(c.throttling.account.set);
  EXPECT_TRUE(c.throttling.client_ip.set);
}

// Every key of the schema is documented in the example (as a key or in a comment).
TEST(ConfigExample, DocumentsEveryKey) {
  const std::string text = read_text(kExample);
  const auto keys = detail::schema_keys();
  ASSERT_GT(keys.size(), 40U);
  for (const detail::KeyInfo& k : keys) {
    const std::string leaf = k.path.substr(k.path.find_last_of('.') + 1);
    const std::string key = leaf.substr(0, leaf.find('['));
    EXPECT_NE(text.find(key + ":"), std::string::npos) << k.path << " is not documented";
  }
}

TEST(ConfigSchema, KeysCarryTypesBoundsAndDefaults) {
  const auto keys = detail::schema_keys();
  const auto find = [&](std::string_view path) {
    const auto it = std::find_if(keys.begin(), keys.end(),
                                 [&](const detail::KeyInfo& k) { return k.path == path; });
    EXPECT_NE(it, keys.end()) << path;
    return it == keys.end() ? detail::KeyInfo{} : *it;
  };
  auto k = find("limits.max_header_bytes");
  EXPECT_EQ(k.type, "size");
  EXPECT_EQ(k.bounds, "1024..1048576");
  EXPECT_EQ(k.default_value, "16384");
  k = find("limits.header_timeout");
  EXPECT_EQ(k.type, "duration");
  EXPECT_EQ(k.bounds, "100ms..10m");
  EXPECT_EQ(k.default_value, "10s");
  k = find("routes[].target.http.upstream");
  EXPECT_TRUE(k.required);
  k = find("routes[].path");
  EXPECT_TRUE(k.required);
  k = find("admin.metrics_public");
  EXPECT_EQ(k.default_value, "false");
  k = find("throttling.account.rate");
  EXPECT_EQ(k.type, "number");
  EXPECT_EQ(k.bounds, "0.001..1000000");
  EXPECT_TRUE(k.required);
  k = find("routes[].throttle.burst");
  EXPECT_EQ(k.type, "integer");
  EXPECT_EQ(k.bounds, "1..1000000");
  EXPECT_EQ(k.default_value, "");  // derived from the rate
  k = find("plans[].quota.limit");
  EXPECT_EQ(k.bounds, "1..1000000000000");
  EXPECT_TRUE(k.required);
  k = find("plans[].quota.period");
  EXPECT_EQ(k.default_value, "\"DAY\"");
  k = find("plans[].quota.offset");
  EXPECT_EQ(k.bounds, "0..27");
  k = find("plans[].overrides[].throttle");
  EXPECT_TRUE(k.required);
  k = find("plans[].routes");
  EXPECT_EQ(k.bounds, "at most 10000 items");
  k = find("plans");
  EXPECT_EQ(k.bounds, "at most 1000 items");
  k = find("functions[].concurrency");
  EXPECT_EQ(k.bounds, "0..1000000");
  EXPECT_EQ(k.default_value, "0");
  k = find("api_keys.header");
  EXPECT_EQ(k.default_value, "\"x-api-key\"");
  k = find("api_keys.quota_flush_interval");
  EXPECT_EQ(k.bounds, "10ms..1m");
  EXPECT_EQ(k.default_value, "1s");
  k = find("throttling.concurrency_wait");
  EXPECT_EQ(k.bounds, "0s..1m");
  EXPECT_EQ(k.default_value, "0s");
  find("stages[].throttle.rate");
  find("routes[].api_key");
  find("routes[].concurrency");
}

constexpr std::string_view kFull = R"(
server:
  listen: "[::1]:9090"
  threads: 4
  shutdown_grace: 30s
limits:
  max_header_bytes: 8KiB
  max_body_bytes: 1048576
  header_timeout: 500ms
  body_timeout: 2m
  min_body_rate: 2KiB
  body_grace: 1s
  idle_timeout: 1h
  max_connections: 100
  max_connections_per_ip: 10
  max_pipelined: 1
  max_requests_per_connection: 1000
admin:
  token_sha256: E2186DBDB1BB4193608605E84F33208765B5693B55EDD4F730A719A100EEEA6F
  health_path: /-/health
  metrics_path: /-/metrics
  admin_prefix: /-/admin
  metrics_public: true
log:
  level: debug
  access_log: /var/log/gatehouse/access.log
store:
  state: sqlite:///var/lib/gatehouse/state.db
stages:
  - name: prod
  - name: dev_2
upstreams:
  - name: api
    url: http://api.internal:9000/v1/
    connect_timeout: 250ms
    timeout: 5s
    max_idle: 0
    max_response_bytes: 1GiB
routes:
  - name: health
    method: get
    path: /items/{id}
    stages: [prod, dev_2]
    function: items-fn
    target:
      static:
        status: 201
        body: "ok"
        content_type: application/json
        headers: {x-b: "2", x-a: one, cache-control: "no-store"}
  - method: [post, PUT]
    path: /api/{proxy+}
    stages: dev_2
    target:
      http: {upstream: api, path_prefix: /internal, strip_stage: false}
  - method: ANY
    path: /
    target:
      static: {}
functions:
  - name: items-fn
)";

TEST(ConfigGood, EveryKeySet) {
  const Config c = ok(kFull);
  EXPECT_EQ(c.server.listen.host, "::1");
  EXPECT_EQ(c.server.listen.port, 9090);
  EXPECT_EQ(c.server.threads, 4U);
  EXPECT_EQ(c.server.shutdown_grace, milliseconds(30'000));
  EXPECT_EQ(c.limits.max_header_bytes, 8U * 1024);
  EXPECT_EQ(c.limits.max_body_bytes, 1048576U);
  EXPECT_EQ(c.limits.header_timeout, milliseconds(500));
  EXPECT_EQ(c.limits.body_timeout, milliseconds(120'000));
  EXPECT_EQ(c.limits.min_body_rate, 2048U);
  EXPECT_EQ(c.limits.body_grace, milliseconds(1000));
  EXPECT_EQ(c.limits.idle_timeout, milliseconds(3'600'000));
  EXPECT_EQ(c.limits.max_connections, 100U);
  EXPECT_EQ(c.limits.max_connections_per_ip, 10U);
  EXPECT_EQ(c.limits.max_pipelined, 1U);
  EXPECT_EQ(c.limits.max_requests_per_connection, 1000U);
  // Stored lower-case, to compare with core::sha256_hex.
  EXPECT_EQ(c.admin.token_sha256, core::sha256_hex("change-me"));
  EXPECT_EQ(c.admin.health_path, "/-/health");
  EXPECT_EQ(c.admin.metrics_path, "/-/metrics");
  EXPECT_EQ(c.admin.admin_prefix, "/-/admin");
  EXPECT_TRUE(c.admin.metrics_public);
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.access_log, "/var/log/gatehouse/access.log");
  EXPECT_EQ(c.store.state, "sqlite:///var/lib/gatehouse/state.db");

  ASSERT_EQ(c.stages.size(), 2U);
  EXPECT_EQ(c.stages[1].name, "dev_2");

  ASSERT_EQ(c.upstreams.size(), 1U);
  const Upstream& u = c.upstreams[0];
  EXPECT_EQ(u.name, "api");
  EXPECT_EQ(u.host, "api.internal");
  EXPECT_EQ(u.port, 9000);
  EXPECT_EQ(u.base_path, "/v1");
  EXPECT_EQ(u.connect_timeout, milliseconds(250));
  EXPECT_EQ(u.timeout, milliseconds(5000));
  EXPECT_EQ(u.max_idle, 0U);
  EXPECT_EQ(u.max_response_bytes, 1024ULL * 1024 * 1024);
  EXPECT_EQ(c.find_upstream("api"), &c.upstreams[0]);
  EXPECT_EQ(c.find_upstream("nope"), nullptr);

  ASSERT_EQ(c.routes.size(), 3U);
  const Route& r0 = c.routes[0];
  EXPECT_EQ(r0.name, "health");
  EXPECT_THAT(r0.methods, ElementsAre("GET"));
  EXPECT_EQ(r0.path, "/items/{id}");
  EXPECT_THAT(r0.stages, ElementsAre("prod", "dev_2"));
  EXPECT_EQ(r0.target.function, "items-fn");
  EXPECT_EQ(r0.target.kind, Target::Kind::kStatic);
  EXPECT_EQ(r0.target.static_target.status, 201);
  EXPECT_EQ(r0.target.static_target.body, "ok");
  EXPECT_EQ(r0.target.static_target.content_type, "application/json");
  using Header = std::pair<std::string, std::string>;
  EXPECT_THAT(r0.target.static_target.headers, ElementsAre(Header{"x-b", "2"}, Header{"x-a", "one"},
                                                           Header{"cache-control", "no-store"}));
  EXPECT_EQ(r0.line, 40);

  const Route& r1 = c.routes[1];
  EXPECT_EQ(r1.name, "POST,PUT /api/{proxy+}");
  EXPECT_THAT(r1.methods, ElementsAre("POST", "PUT"));
  EXPECT_THAT(r1.stages, ElementsAre("dev_2"));
  EXPECT_EQ(r1.target.kind, Target::Kind::kHttp);
  EXPECT_EQ(r1.target.http.upstream, "api");
  EXPECT_EQ(r1.target.http.path_prefix, "/internal");
  EXPECT_FALSE(r1.target.http.strip_stage);
  EXPECT_EQ(r1.line, 51);

  const Route& r2 = c.routes[2];
  EXPECT_EQ(r2.name, "ANY /");
  EXPECT_THAT(r2.methods, ElementsAre("ANY"));
  EXPECT_EQ(r2.target.kind, Target::Kind::kStatic);
  EXPECT_EQ(r2.target.static_target.status, 200);
  EXPECT_EQ(r2.target.static_target.content_type, "text/plain");
}

constexpr std::string_view kLimits = R"(
api_keys:
  header: X-Client-Key
  quota_flush_interval: 250ms
throttling:
  account: {rate: 10000, burst: 20000}
  client_ip: {rate: 0.5}
  concurrency: 100
  concurrency_wait: 50ms
stages:
  - name: prod
    throttle: {rate: 5000, burst: 10000}
  - name: dev
functions:
  - name: resize
    throttle: {rate: 50, burst: 100}
    concurrency: 10
  - name: thumbs
plans:
  - name: free
    throttle: {rate: 10, burst: 20}
    quota: {limit: 1000, period: DAY}
    stages: [prod]
    routes: [items-get, upload]
    overrides:
      - route: upload
        throttle: {rate: 1, burst: 2}
  - name: pro
    quota: {limit: 1000000000000, period: MONTH, offset: 27}
    stages: dev
    overrides:
      - route: GET /public
        throttle: {rate: 2.5}
  - name: weekly
    quota: {limit: 1, period: WEEK, offset: 6}
routes:
  - name: items-get
    method: GET
    path: /items/{id}
    api_key: optional
    target: {static: {}}
  - name: upload
    method: POST
    path: /upload
    api_key: required
    throttle: {rate: 100, burst: 200}
    concurrency: 5
    function: resize
    target: {static: {status: 200, body: "ok"}}
  - method: GET
    path: /public
    api_key: none
    function: thumbs
    target: {static: {}}
)";

TEST(ConfigGood, PlansKeysAndThrottles) {
  const Config c = ok(kLimits);
  EXPECT_EQ(c.api_keys.header, "x-client-key");  // stored lower-case
  EXPECT_EQ(c.api_keys.quota_flush_interval, milliseconds(250));

  EXPECT_TRUE(c.throttling.account.set);
  EXPECT_EQ(c.throttling.account.rate, 10000.0);
  EXPECT_EQ(c.throttling.account.burst, 20000U);
  EXPECT_TRUE(c.throttling.client_ip.set);
  EXPECT_EQ(c.throttling.client_ip.rate, 0.5);
  EXPECT_EQ(c.throttling.client_ip.burst, 1U);  // max(1, ceil(0.5))
  EXPECT_EQ(c.throttling.concurrency, 100U);
  EXPECT_EQ(c.throttling.concurrency_wait, milliseconds(50));

  ASSERT_EQ(c.stages.size(), 2U);
  EXPECT_TRUE(c.stages[0].throttle.set);
  EXPECT_EQ(c.stages[0].throttle.rate, 5000.0);
  EXPECT_EQ(c.stages[0].throttle.burst, 10000U);
  EXPECT_FALSE(c.stages[1].throttle.set);
  EXPECT_EQ(c.stages[1].throttle.burst, 0U);

  ASSERT_EQ(c.functions.size(), 2U);
  const FunctionConfig* resize = c.find_function("resize");
  ASSERT_EQ(resize, &c.functions[0]);
  EXPECT_EQ(resize->line, 15);
  EXPECT_TRUE(resize->throttle.set);
  EXPECT_EQ(resize->throttle.rate, 50.0);
  EXPECT_EQ(resize->throttle.burst, 100U);
  EXPECT_EQ(resize->concurrency, 10U);
  EXPECT_FALSE(c.functions[1].throttle.set);
  EXPECT_EQ(c.functions[1].concurrency, 0U);
  EXPECT_EQ(c.find_function("nope"), nullptr);

  ASSERT_EQ(c.plans.size(), 3U);
  const Plan* free = c.find_plan("free");
  ASSERT_EQ(free, &c.plans[0]);
  EXPECT_EQ(free->line, 20);
  EXPECT_TRUE(free->throttle.set);
  EXPECT_EQ(free->throttle.rate, 10.0);
  EXPECT_EQ(free->throttle.burst, 20U);
  EXPECT_TRUE(free->quota.set);
  EXPECT_EQ(free->quota.limit, 1000U);
  EXPECT_EQ(free->quota.period, "DAY");
  EXPECT_EQ(free->quota.offset, 0U);
  EXPECT_THAT(free->stages, ElementsAre("prod"));
  EXPECT_THAT(free->routes, ElementsAre("items-get", "upload"));
  ASSERT_EQ(free->overrides.size(), 1U);
  EXPECT_EQ(free->overrides[0].route, "upload");
  EXPECT_EQ(free->overrides[0].line, 26);
  EXPECT_EQ(free->overrides[0].throttle.rate, 1.0);
  EXPECT_EQ(free->overrides[0].throttle.burst, 2U);

  const Plan& pro = c.plans[1];
  EXPECT_FALSE(pro.throttle.set);
  EXPECT_EQ(pro.quota.limit, 1'000'000'000'000U);
  EXPECT_EQ(pro.quota.period, "MONTH");
  EXPECT_EQ(pro.quota.offset, 27U);
  EXPECT_THAT(pro.stages, ElementsAre("dev"));
  EXPECT_TRUE(pro.routes.empty());
  ASSERT_EQ(pro.overrides.size(), 1U);
  EXPECT_EQ(pro.overrides[0].route, "GET /public");  // a default route name
  EXPECT_EQ(pro.overrides[0].throttle.rate, 2.5);
  EXPECT_EQ(pro.overrides[0].throttle.burst, 3U);  // ceil(2.5)

  EXPECT_EQ(c.plans[2].quota.period, "WEEK");
  EXPECT_EQ(c.plans[2].quota.offset, 6U);
  EXPECT_EQ(c.find_plan("nope"), nullptr);

  ASSERT_EQ(c.routes.size(), 3U);
  EXPECT_EQ(c.routes[0].api_key, ApiKeyMode::kOptional);
  EXPECT_FALSE(c.routes[0].throttle.set);
  EXPECT_EQ(c.routes[0].concurrency, 0U);
  const Route& upload = c.routes[1];
  EXPECT_EQ(upload.api_key, ApiKeyMode::kRequired);
  EXPECT_EQ(upload.throttle.rate, 100.0);
  EXPECT_EQ(upload.throttle.burst, 200U);
  EXPECT_EQ(upload.concurrency, 5U);
  EXPECT_EQ(upload.target.function, "resize");
  EXPECT_EQ(c.routes[2].api_key, ApiKeyMode::kNone);
  EXPECT_EQ(c.routes[2].target.function, "thumbs");
}

TEST(ConfigGood, PlanAndThrottleDefaults) {
  const Config c = ok(R"(
functions: [{name: f}]
plans: [{name: basic}]
routes:
  - {method: GET, path: /a, target: {static: {}}}
)");
  ASSERT_EQ(c.plans.size(), 1U);
  const Plan& p = c.plans[0];
  EXPECT_FALSE(p.throttle.set);
  EXPECT_FALSE(p.quota.set);
  EXPECT_EQ(p.quota.period, "DAY");
  EXPECT_TRUE(p.stages.empty());
  EXPECT_TRUE(p.routes.empty());
  EXPECT_TRUE(p.overrides.empty());
  ASSERT_EQ(c.functions.size(), 1U);
  EXPECT_FALSE(c.functions[0].throttle.set);
  EXPECT_EQ(c.functions[0].concurrency, 0U);
  ASSERT_EQ(c.routes.size(), 1U);
  EXPECT_EQ(c.routes[0].api_key, ApiKeyMode::kNone);
  EXPECT_FALSE(c.routes[0].throttle.set);
  EXPECT_EQ(c.routes[0].concurrency, 0U);
  EXPECT_EQ(c.routes[0].target.function, "");
}

TEST(ConfigGood, BurstDefaultsToOneSecondOfRate) {
  struct Case {
    std::string_view rate;
    double value;
    std::uint32_t burst;
  };
  for (const Case& t :
       {Case{"0.001", 0.001, 1}, Case{"0.5", 0.5, 1}, Case{"1", 1, 1}, Case{"2.5", 2.5, 3},
        Case{"7", 7, 7}, Case{"100.01", 100.01, 101}, Case{"1000000", 1e6, 1'000'000},
        Case{"!!float 3", 3, 3}, Case{"!!int 4", 4, 4}, Case{".5", 0.5, 1}, Case{"+8.", 8, 8}}) {
    SCOPED_TRACE(t.rate);
    const Config c = ok("throttling: {account: {rate: " + std::string(t.rate) + "}}\n");
    EXPECT_TRUE(c.throttling.account.set);
    EXPECT_EQ(c.throttling.account.rate, t.value);
    EXPECT_EQ(c.throttling.account.burst, t.burst);
  }
}

TEST(ConfigGood, LimitBoundsAreInclusive) {
  const Config c = ok(R"(
api_keys: {quota_flush_interval: 10ms}
throttling:
  account: {rate: 0.001, burst: 1000000}
  client_ip: {rate: 1000000, burst: 1}
  concurrency: 1000000
  concurrency_wait: 1m
functions: [{name: f, concurrency: 1000000}]
plans:
  - {name: a, quota: {limit: 1}}
  - {name: b, quota: {limit: 1000000000000, period: WEEK, offset: 0}}
  - {name: c, quota: {limit: 5, period: MONTH, offset: 0}}
)");
  EXPECT_EQ(c.api_keys.quota_flush_interval, milliseconds(10));
  EXPECT_EQ(c.throttling.account.rate, 0.001);
  EXPECT_EQ(c.throttling.account.burst, 1'000'000U);
  EXPECT_EQ(c.throttling.client_ip.rate, 1e6);
  EXPECT_EQ(c.throttling.client_ip.burst, 1U);
  EXPECT_EQ(c.throttling.concurrency, 1'000'000U);
  EXPECT_EQ(c.throttling.concurrency_wait, milliseconds(60'000));
  EXPECT_EQ(c.functions[0].concurrency, 1'000'000U);
  EXPECT_EQ(c.plans[0].quota.limit, 1U);
}

TEST(ConfigErrors, PlanOverrideChecks) {
  // One error per problem, at the override's route.
  EXPECT_THAT(errors(R"(
routes:
  - {name: a, method: GET, path: /a, target: {static: {}}}
  - {name: b, method: GET, path: /b, target: {static: {}}}
plans:
  - name: p
    routes: [a]
    overrides:
      - {route: b, throttle: {rate: 1}}
      - {route: a, throttle: {rate: 1}}
      - {route: a, throttle: {rate: 2}}
      - {route: c, throttle: {rate: 1}}
)"),
              ElementsAre("9:17: plans[0].overrides[0].route: route 'b' is not among the plan's "
                          "routes",
                          "11:17: plans[0].overrides[2].route: duplicate override for route 'a' "
                          "(first at line 10)",
                          "12:17: plans[0].overrides[3].route: unknown route 'c'"));
}

TEST(ConfigErrors, PlanListsAreBounded) {
  std::string yaml = "plans:\n  - name: p\n    routes: [";
  for (int i = 0; i <= 10'000; ++i) {
    yaml += (i == 0 ? "r" : ", r") + std::to_string(i);
  }
  yaml += "]\n";
  EXPECT_THAT(errors(yaml), ElementsAre("3:13: plans[0].routes: has 10001 items; the maximum is "
                                        "10000"));
  yaml = "plans:\n";
  for (int i = 0; i <= 1000; ++i) {
    yaml += "  - {name: p" + std::to_string(i) + "}\n";
  }
  EXPECT_THAT(errors(yaml), ElementsAre("2:3: plans: has 1001 items; the maximum is 1000"));
}

TEST(ConfigErrors, RateNeedsADecimalNumber) {
  EXPECT_THAT(errors("throttling: {account: {rate: 1e3}}\n"),
              ElementsAre("1:30: throttling.account.rate: expected a decimal number such as 100 "
                          "or 0.5 (no exponent, inf or nan), got '1e3'"));
  EXPECT_THAT(errors("throttling: {account: {rate: .inf}}\n"),
              ElementsAre("1:30: throttling.account.rate: expected a decimal number such as 100 "
                          "or 0.5 (no exponent, inf or nan), got '.inf'"));
  EXPECT_THAT(errors("throttling: {account: {rate: \"10\"}}\n"),
              ElementsAre("1:30: throttling.account.rate: expected a number, got a string"));
  EXPECT_THAT(errors("throttling: {account: {rate: true}}\n"),
              ElementsAre("1:30: throttling.account.rate: expected a number, got a boolean"));
  EXPECT_THAT(errors("throttling: {account: {rate: 1" + std::string(400, '0') + "}}\n"),
              ElementsAre(HasSubstr("is above the maximum 1000000")));
  EXPECT_THAT(errors("throttling: {account: {rate: 0." + std::string(400, '0') + "1}}\n"),
              ElementsAre(HasSubstr("is below the minimum 0.001")));
  EXPECT_THAT(errors("throttling: {account: {rate: 0.0009}}\n"),
              ElementsAre("1:30: throttling.account.rate: 0.0009 is below the minimum 0.001"));
}

TEST(ConfigErrors, ApiKeyHeaderIsAHeaderNameThatCanCarryAKey) {
  EXPECT_THAT(errors("api_keys: {header: \"\"}\n"),
              ElementsAre("1:20: api_keys.header: must not be empty"));
  EXPECT_THAT(errors("api_keys: {header: Host}\n"),
              ElementsAre("1:20: api_keys.header: 'host' frames or routes the request and cannot "
                          "carry an API key"));
  EXPECT_THAT(errors("api_keys: {header: " + std::string(257, 'x') + "}\n"),
              ElementsAre("1:20: api_keys.header: is 257 bytes long; the maximum is 256"));
}

TEST(ConfigGood, ListenForms) {
  Config c = ok("server: {listen: \"localhost:0\"}");
  EXPECT_EQ(c.server.listen.host, "localhost");
  EXPECT_EQ(c.server.listen.port, 0);
  c = ok("server: {listen: 0.0.0.0:80}");
  EXPECT_EQ(c.server.listen.host, "0.0.0.0");
  EXPECT_EQ(c.server.listen.port, 80);
}

TEST(ConfigGood, ScalarSpellings) {
  const Config c = ok(R"(
server: {threads: !!int 3}
limits: {max_header_bytes: "2KiB", header_timeout: "1m", max_body_bytes: 0, body_grace: 0s}
admin: {metrics_public: True}
)");
  EXPECT_EQ(c.server.threads, 3U);
  EXPECT_EQ(c.limits.max_header_bytes, 2048U);
  EXPECT_EQ(c.limits.header_timeout, milliseconds(60'000));
  EXPECT_EQ(c.limits.max_body_bytes, 0U);
  EXPECT_EQ(c.limits.body_grace, milliseconds(0));
  EXPECT_TRUE(c.admin.metrics_public);
}

TEST(ConfigGood, BoundsAreInclusive) {
  const Config c = ok(R"(
server: {threads: 256, shutdown_grace: 10m}
limits: {max_header_bytes: 1MiB, max_body_bytes: 4GiB, header_timeout: 100ms, max_pipelined: 1024,
         max_requests_per_connection: 4294967295}
routes:
  - {method: GET, path: /a, target: {static: {status: 100}}}
  - {method: GET, path: /b, target: {static: {status: 599}}}
)");
  EXPECT_EQ(c.server.threads, 256U);
  EXPECT_EQ(c.limits.max_header_bytes, 1024U * 1024);
  EXPECT_EQ(c.limits.max_body_bytes, 4ULL * 1024 * 1024 * 1024);
  EXPECT_EQ(c.limits.max_requests_per_connection, 4294967295U);
}

TEST(ConfigGood, AnchorsAndAliasesAreExpanded) {
  const Config c = ok(R"(
routes:
  - method: GET
    path: /a
    target: &t {static: {body: shared, headers: {x-a: b}}}
  - method: POST
    path: /a
    target: *t
)");
  ASSERT_EQ(c.routes.size(), 2U);
  EXPECT_EQ(c.routes[1].target.static_target.body, "shared");
  EXPECT_EQ(c.routes[1].target.static_target.headers.size(), 1U);
}

TEST(ConfigGood, MultilineBodyKeepsNewlines) {
  const Config c =
      ok("routes:\n  - method: GET\n    path: /\n    target:\n      static:\n"
         "        body: |\n          line one\n          line two\n");
  ASSERT_EQ(c.routes.size(), 1U);
  EXPECT_EQ(c.routes[0].target.static_target.body, "line one\nline two\n");
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST(ConfigErrors, ToString) {
  EXPECT_EQ((ConfigError{"g.yaml", 3, 7, "server.threads: x"}).to_string(),
            "g.yaml:3:7: server.threads: x");
  EXPECT_EQ((ConfigError{"g.yaml", 0, 0, "cannot read the file: x"}).to_string(),
            "g.yaml: cannot read the file: x");
}

TEST(ConfigErrors, FileNameIsReported) {
  auto r = load_string("sever: {}\n", "conf/gatehouse.yaml");
  ASSERT_FALSE(r.has_value());
  ASSERT_EQ(r.error().size(), 1U);
  EXPECT_EQ(r.error()[0].to_string(),
            "conf/gatehouse.yaml:1:1: sever: unknown key (did you mean 'server'?)");
}

TEST(ConfigErrors, UnreadableFileIsOneErrorAtLineZero) {
  const std::string path = (fs::temp_directory_path() / "gatehouse-no-such-file.yaml").string();
  auto r = load_file(path);
  ASSERT_FALSE(r.has_value());
  ASSERT_EQ(r.error().size(), 1U);
  EXPECT_EQ(r.error()[0].file, path);
  EXPECT_EQ(r.error()[0].line, 0);
  EXPECT_EQ(r.error()[0].message, "cannot read the file: No such file or directory");

  r = load_file(fs::temp_directory_path().string());
  ASSERT_FALSE(r.has_value());
  ASSERT_EQ(r.error().size(), 1U);
  EXPECT_EQ(r.error()[0].line, 0);
  EXPECT_EQ(r.error()[0].message, "cannot read the file: Is a directory");
}

TEST(ConfigErrors, OversizedDocumentIsRefusedUnparsed) {
  const std::string big(16 * 1024 * 1024 + 1, '#');
  EXPECT_THAT(errors(big), ElementsAre("0:0: the file is 16777217 bytes; the maximum is 16 MiB"));
}

TEST(ConfigErrors, ErrorsAreCappedAndSorted) {
  std::string yaml = "server:\n";
  for (int i = 0; i < 2000; ++i) {
    yaml += "  k" + std::to_string(i) + ": 1\n";
  }
  const auto e = errors(yaml);
  ASSERT_EQ(e.size(), detail::Diagnostics::kMaxErrors + 1);
  EXPECT_EQ(e.front(), "2:3: server.k0: unknown key");
  EXPECT_THAT(e.back(), HasSubstr("too many errors; stopped checking after 500 of them"));
}

TEST(ConfigErrors, AliasExpansionIsBounded) {
  // One 1 MiB body named by 100 routes would copy 100 MiB.
  std::string yaml = "routes:\n  - {method: GET, path: /0, target: {static: {body: &b \"" +
                     std::string(std::size_t{1024} * 1024, 'x') + "\"}}}\n";
  for (int i = 1; i < 100; ++i) {
    yaml += "  - {method: GET, path: /" + std::to_string(i) + ", target: {static: {body: *b}}}\n";
  }
  const auto e = errors(yaml);
  ASSERT_EQ(e.size(), 1U);
  EXPECT_THAT(e[0], HasSubstr("the document expands to more than 64 MiB"));
}

TEST(ConfigErrors, CyclicAliasesDoNotLoop) {
  EXPECT_THAT(errors("server: &s {listen: *s}\n"),
              ElementsAre("1:9: server.listen: expected a string, got a mapping"));
  EXPECT_THAT(errors("routes: &r [*r]\n"),
              ElementsAre("1:9: routes[0]: expected a mapping, got a sequence"));
}

TEST(ConfigErrors, ControlCharactersAreEscapedInMessages) {
  EXPECT_THAT(errors("\"se\\x1b[31mver\": 1\n"), ElementsAre("1:1: se\\x1b[31mver: unknown key"));
}

TEST(ConfigErrors, SecretsAreNotEchoed) {
  const auto token = errors("admin: {token_sha256: my-secret-token}\n");
  ASSERT_EQ(token.size(), 1U);
  EXPECT_THAT(token[0], ::testing::Not(HasSubstr("my-secret-token")));
  const auto store = errors("store: {state: \"mysql://u:hunter2@db\"}\n");
  ASSERT_EQ(store.size(), 1U);
  EXPECT_THAT(store[0], ::testing::Not(HasSubstr("hunter2")));
}

TEST(ConfigErrors, TrailingEmptyDocumentIsFine) { ok("server: {threads: 1}\n---\n"); }

// yaml-cpp 0.7's LoadAll loops forever on a ',' outside a flow collection (found by fuzzing).
TEST(ConfigErrors, StrayCommaIsAnErrorNotAHang) {
  EXPECT_THAT(errors(","), ElementsAre("1:1: invalid YAML: unexpected ','"));
  EXPECT_THAT(errors("  ,a\n"), ElementsAre("1:3: invalid YAML: unexpected ','"));
  EXPECT_THAT(errors("a: 1\n...\n,\n"), ElementsAre("3:1: invalid YAML: unexpected ','"));
}

TEST(ConfigErrors, SyntaxErrorInALaterDocumentIsReported) {
  EXPECT_THAT(errors("server: {}\n---\n[\n"),
              ElementsAre("4:1: invalid YAML: end of sequence flow not found"));
}

TEST(ConfigErrors, NeverThrows) {
  for (const std::string_view yaml :
       {std::string_view("\0\0\0", 3), std::string_view("["), std::string_view("{{{{"),
        std::string_view("&a [*a]"), std::string_view("*nope"), std::string_view("? : :"),
        std::string_view("\xff\xfe\x00\x00", 4), std::string_view("!<tag:x> {a: b}"),
        std::string_view("%YAML 9.9\n---\na: 1"), std::string_view("a: !!binary |\n  AAAA\n"),
        std::string_view("routes: [{target: {static: {headers: {? [a] : b}}}}]")}) {
    SCOPED_TRACE(std::string(yaml));
    auto r = load_string(yaml, "x.yaml");
    if (!r) {
      EXPECT_FALSE(r.error().empty());
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Policies, roles and authorization (docs/policy.md, "Wiring").

constexpr std::string_view kPoliciesYaml = R"(
account_id: "123456789012"
region: eu-west-3
authorization: {default: deny}
policies:
  - name: reader
    document:
      Version: "2012-10-17"
      Statement:
        - {Sid: Read, Effect: Allow, Action: "execute-api:Invoke", Resource: "*"}
  - name: only-ops
    document: {"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:role/ops"},
               "Action": "lambda:InvokeFunction", "Resource": "*"}]}
roles:
  - {name: ops, policies: [reader]}
plans:
  - {name: free, policies: [reader]}
admin: {policies: [reader]}
functions:
  - {name: f, runtime: exec, command: [/bin/cat], role: ops, policy: only-ops}
  - name: g
    runtime: exec
    command: [/bin/cat]
    invokers: ["route:r", "principal:arn:gatehouse:iam::123456789012:role/a*"]
  - {name: h, runtime: exec, command: [/bin/cat], invokers: []}
routes:
  - name: r
    method: GET
    path: /r
    policy:
      Statement:
        - {Sid: Anyone, Effect: Allow, Principal: "*", Action: "execute-api:Invoke",
           Resource: "*", Condition: {NumericLessThan: {"gatehouse:LineageDepth": 10}}}
    target: {function: g}
  - {name: s, method: GET, path: /s, policy: only-ops, target: {static: {body: x}}}
)";

TEST(ConfigPolicies, NamedAndInlinePoliciesCompileOnce) {
  const Config c = ok(kPoliciesYaml);
  EXPECT_EQ(c.account_id, "123456789012");
  EXPECT_EQ(c.region, "eu-west-3");
  EXPECT_TRUE(c.authorization.default_deny);
  ASSERT_EQ(c.policies.size(), 2U);
  ASSERT_NE(c.policies[0].compiled, nullptr);
  EXPECT_EQ(c.policies[0].compiled->id(), "reader");
  // Every use shares the one compiled document.
  ASSERT_EQ(c.plans[0].compiled.size(), 1U);
  EXPECT_EQ(c.plans[0].compiled[0], c.policies[0].compiled);
  EXPECT_EQ(c.admin.compiled[0], c.policies[0].compiled);
  ASSERT_NE(c.find_role("ops"), nullptr);
  EXPECT_EQ(c.find_role("ops")->compiled[0], c.policies[0].compiled);
  EXPECT_EQ(c.functions[0].policy.compiled, c.policies[1].compiled);
  EXPECT_EQ(c.routes[1].policy.compiled, c.policies[1].compiled);
  // Inline documents are named after their owner.
  ASSERT_NE(c.routes[0].policy.compiled, nullptr);
  EXPECT_EQ(c.routes[0].policy.compiled->id(), "route:r");
  EXPECT_EQ(c.routes[0].policy.compiled->sid(0), "Anyone");
  EXPECT_EQ(c.functions[0].arn, "arn:gatehouse:lambda:eu-west-3:123456789012:function:f");
}

TEST(ConfigPolicies, DefaultsAreAllowAndTheZeroAccount) {
  const Config c = ok("routes: []\n");
  EXPECT_FALSE(c.authorization.default_deny);
  EXPECT_EQ(c.account_id, policy::kDefaultAccount);
  EXPECT_EQ(c.region, "us-east-1");
  EXPECT_TRUE(c.policies.empty());
  EXPECT_TRUE(c.admin.compiled.empty());
}

policy::Decision invoke_as(const FunctionConfig& f, std::string_view principal,
                           std::string_view source) {
  policy::Request r;
  r.principal.arns.emplace_back(principal);
  r.action = "lambda:InvokeFunction";
  r.resource = f.arn;
  r.account = "123456789012";
  r.context.set("gatehouse:Source", std::string(source));
  return policy::evaluate(r, {}, f.policy.compiled.get());
}

TEST(ConfigPolicies, InvokersBecomeAResourcePolicy) {
  const Config c = ok(kPoliciesYaml);
  const FunctionConfig& g = c.functions[1];
  ASSERT_NE(g.policy.compiled, nullptr);
  EXPECT_EQ(g.policy.compiled->id(), "function:g");
  const std::string anon(policy::kAnonymousArn);
  EXPECT_TRUE(invoke_as(g, anon, "route:r").allowed());
  EXPECT_FALSE(invoke_as(g, anon, "route:r2").allowed());  // no '*': exact
  EXPECT_FALSE(invoke_as(g, anon, "direct:").allowed());
  EXPECT_TRUE(invoke_as(g, "arn:gatehouse:iam::123456789012:role/app", "direct:").allowed());
  EXPECT_FALSE(invoke_as(g, "arn:gatehouse:iam::123456789012:role/b", "direct:").allowed());
  // An empty list allows nobody.
  const FunctionConfig& h = c.functions[2];
  ASSERT_NE(h.policy.compiled, nullptr);
  EXPECT_FALSE(invoke_as(h, anon, "route:r").allowed());
  EXPECT_FALSE(invoke_as(h, "arn:gatehouse:iam::123456789012:admin", "direct:").allowed());
}

TEST(ConfigPolicies, InvokerEntriesAreLiteralButForATrailingStar) {
  const Config c = ok(R"(
functions:
  - name: f
    runtime: exec
    command: [/bin/cat]
    invokers: ["trigger:a*b?c${x}\"d", "workflow:w-*"]
)");
  const FunctionConfig& f = c.functions[0];
  const std::string anon(policy::kAnonymousArn);
  EXPECT_TRUE(invoke_as(f, anon, "trigger:a*b?c${x}\"d").allowed());
  EXPECT_FALSE(invoke_as(f, anon, "trigger:aXXbYc${x}\"d").allowed());
  EXPECT_FALSE(invoke_as(f, anon, "trigger:a*b?c").allowed());
  EXPECT_TRUE(invoke_as(f, anon, "workflow:w-1").allowed());
  EXPECT_FALSE(invoke_as(f, anon, "workflow:v-1").allowed());
}

TEST(ConfigPolicies, PolicyFilesAreReadNextToTheConfig) {
  const fs::path dir = fs::temp_directory_path() / ("gh-policy-file-" + std::to_string(::getpid()));
  fs::create_directories(dir / "policies");
  {
    std::ofstream(dir / "policies" / "reader.json")
        << R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]})";
    std::ofstream(dir / "policies" / "bad.json") << R"({"Statement":[{"Effect":"Maybe"}]})";
    std::ofstream(dir / "gh.yaml")
        << "policies:\n  - {name: reader, document: policies/reader.json}\n"
           "plans:\n  - {name: p, policies: [reader]}\n";
    std::ofstream(dir / "bad.yaml") << "policies:\n  - {name: bad, document: policies/bad.json}\n";
  }
  auto good = load_file((dir / "gh.yaml").string());
  ASSERT_TRUE(good.has_value()) << joined(good.error());
  ASSERT_EQ(good->plans[0].compiled.size(), 1U);
  EXPECT_EQ(good->plans[0].compiled[0]->id(), "reader");
  auto bad = load_file((dir / "bad.yaml").string());
  ASSERT_FALSE(bad.has_value());
  EXPECT_THAT(
      short_form(bad.error()),
      ElementsAre(HasSubstr("2:27: policies[0].document: in the file: Statement[0].Effect")));
  fs::remove_all(dir);
}

TEST(ConfigPolicies, HostileDocumentsAreRefusedWithTheirLine) {
  // Not a mapping, nested too deep, an oversized inline document, a repeated key, YAML tags
  // and anchors: each refused where it stands, never crashing the loader.
  EXPECT_THAT(errors("policies: [{name: p, document: [1, 2]}]\n"),
              ElementsAre(HasSubstr("policies[0].document: expected a policy document")));
  EXPECT_THAT(errors("routes:\n  - {name: r, method: GET, path: /r, policy: {a: {b: {c: {d: {e: "
                     "{f: {g: {h: 1}}}}}}}}, target: {static: {}}}\n"),
              ElementsAre(HasSubstr("routes[0].policy:")));
  std::string big = "policies:\n  - name: p\n    document:\n      Statement:\n";
  for (int i = 0; i < 400; ++i) {
    big += "        - {Effect: Allow, Action: \"s3:GetObject\", Resource: \"arn:aws:s3:::bucket/" +
           std::to_string(i) + "/*\"}\n";
  }
  EXPECT_THAT(errors(big), ElementsAre(HasSubstr("limit is 20480")));
  EXPECT_THAT(errors("policies:\n  - name: p\n    document:\n      Statement: "
                     "{Effect: Allow, Effect: Deny, Action: '*', Resource: '*'}\n"),
              ElementsAre(HasSubstr("4:")));
  EXPECT_THAT(errors("policies:\n  - name: p\n    document:\n      Version: 2012-10-17\n"
                     "      Statement: {Effect: !!str Allow, Action: *a, Resource: '*'}\n"),
              ::testing::Not(::testing::IsEmpty()));
}

// ---------------------------------------------------------------------------------------------
// The corpus of bad files: tests/unit/config/bad/NAME.yaml must produce exactly the errors in
// NAME.expected, one "LINE:COL: message" per line, in order.

std::vector<std::string> bad_files() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(kBadDir)) {
    if (entry.path().extension() == ".yaml") {
      names.push_back(entry.path().stem().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

class BadFile : public ::testing::TestWithParam<std::string> {};

TEST_P(BadFile, ReportsExactlyTheExpectedErrors) {
  const fs::path yaml = kBadDir / (GetParam() + ".yaml");
  const fs::path expected_path = kBadDir / (GetParam() + ".expected");
  ASSERT_TRUE(fs::exists(expected_path)) << expected_path << " is missing";
  std::vector<std::string> expected;
  std::istringstream in(read_text(expected_path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) {
      expected.push_back(line);
    }
  }
  ASSERT_FALSE(expected.empty()) << expected_path << " is empty";

  auto r = load_file(yaml.string());
  ASSERT_FALSE(r.has_value()) << yaml << " loaded without errors";
  for (const ConfigError& e : r.error()) {
    EXPECT_EQ(e.file, yaml.string());
  }
  EXPECT_EQ(short_form(r.error()), expected);
}

INSTANTIATE_TEST_SUITE_P(Corpus, BadFile, ::testing::ValuesIn(bad_files()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(BadCorpus, IsLargeEnough) { EXPECT_GE(bad_files().size(), 20U); }

}  // namespace
}  // namespace gatehouse::config

namespace gatehouse::config {
namespace {

TEST(ConfigIdentity, PoolDefaultsAndJwtRoutes) {
  auto c = load_string(R"(server: {listen: "0.0.0.0:9000"}
user_pools:
  - name: main
    clients: [web, cli]
  - name: ext
    issuer: https://idp.test/ext
    signing_alg: RS256
    confirmation: admin
    clients: [app]
routes:
  - path: /me
    method: GET
    auth: jwt
    jwt: {jwks: pool main, token_use: id, algorithms: EdDSA}
    target: {static: {body: me}}
  - path: /ext
    method: GET
    auth: jwt
    jwt:
      jwks: url http://127.0.0.1:9999/keys
      issuer: https://idp.test
      audience: api
      scopes: [read, write]
    target: {static: {body: ext}}
  - path: /file
    method: GET
    auth: jwt
    jwt: {jwks: "file  ./keys.json", issuer: x, audience: [a, b]}
    target: {static: {body: f}}
)",
                       "t.yaml");
  ASSERT_TRUE(c) << c.error().front().to_string();
  ASSERT_EQ(c->user_pools.size(), 2U);
  EXPECT_EQ(c->user_pools[0].issuer, "http://localhost:9000/auth/main");
  EXPECT_EQ(c->user_pools[0].signing_alg, "EdDSA");
  EXPECT_EQ(c->user_pools[0].confirmation, "auto");
  EXPECT_EQ(c->user_pools[1].issuer, "https://idp.test/ext");
  EXPECT_EQ(c->find_user_pool("ext")->confirmation, "admin");
  EXPECT_EQ(c->find_user_pool("nope"), nullptr);
  const Route& me = c->routes[0];
  EXPECT_EQ(me.auth, RouteAuth::kJwt);
  EXPECT_EQ(me.jwt.source, JwksSource::kPool);
  EXPECT_EQ(me.jwt.location, "main");
  EXPECT_EQ(me.jwt.issuer, "http://localhost:9000/auth/main");
  EXPECT_EQ(me.jwt.audience, (std::vector<std::string>{"web", "cli"}));
  EXPECT_EQ(me.jwt.token_use, "id");
  EXPECT_EQ(me.jwt.algorithms, std::vector<std::string>{"EdDSA"});
  const Route& ext = c->routes[1];
  EXPECT_EQ(ext.jwt.source, JwksSource::kUrl);
  EXPECT_EQ(ext.jwt.url_host, "127.0.0.1");
  EXPECT_EQ(ext.jwt.url_port, 9999);
  EXPECT_EQ(ext.jwt.url_path, "/keys");
  EXPECT_EQ(ext.jwt.jwks, "url http://127.0.0.1:9999/keys");
  EXPECT_EQ(ext.jwt.audience, std::vector<std::string>{"api"});
  EXPECT_EQ(ext.jwt.token_use, "any");
  EXPECT_EQ(ext.jwt.leeway, std::chrono::seconds(60));
  EXPECT_EQ(c->routes[2].jwt.source, JwksSource::kFile);
  EXPECT_EQ(c->routes[2].jwt.location, "./keys.json");
  EXPECT_EQ(c->routes[2].jwt.jwks, "file ./keys.json");
}

}  // namespace
}  // namespace gatehouse::config
