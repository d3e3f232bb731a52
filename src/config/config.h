#pragma once
// gatehouse::config — the typed model of gatehouse.yaml and its loader.
//
// load_file() / load_string() parse the YAML, check every field against the bounds declared in
// schema.cc (one place defines the schema: keys, types, bounds and formats; the defaults are the
// member initialisers below), run the cross-field checks (dangling references, duplicates), and
// return either an immutable Config or *all* the errors found, each with file:line:col. Unknown
// keys are errors. A Config is a plain value: copyable, immutable once built, shared between
// threads as std::shared_ptr<const Config>. gatehouse.example.yaml documents every key.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

namespace gatehouse::config {

using std::chrono::milliseconds;

struct Listen {
  std::string host = "127.0.0.1";  // IPv4 or IPv6 literal (no brackets), or "localhost"
  std::uint16_t port = 8080;       // 0 = kernel-chosen (one port for all workers is then
                                   // not guaranteed; tests pass an explicit port)
};

struct ServerConfig {
  Listen listen;
  std::uint32_t threads = 0;            // 0 = one per core; 1..256
  milliseconds shutdown_grace{10'000};  // SIGTERM drain deadline; 0..600000
};

// Limits enforced on the wire, before routing. Each refusal is counted by reason.
struct WireLimits {
  std::uint32_t max_header_bytes = 16 * 1024;  // request line + headers; 431 past it. 1 KiB..1 MiB
  std::uint64_t max_body_bytes = std::uint64_t{10} * 1024 * 1024;  // 413 past it; 0..4 GiB
  milliseconds header_timeout{10'000};            // whole header must arrive by then; 100..600000
  milliseconds body_timeout{60'000};              // whole body must arrive by then; 100..3600000
  std::uint32_t min_body_rate = 1024;             // bytes/s after body_grace; 0 = off; ..1 GiB
  milliseconds body_grace{5'000};                 // no rate check before; 0..600000
  milliseconds idle_timeout{60'000};              // keep-alive idle; 100..3600000
  std::uint32_t max_connections = 10'000;         // whole process; 1..1000000
  std::uint32_t max_connections_per_ip = 256;     // 1..1000000
  std::uint32_t max_pipelined = 32;               // requests buffered per connection; 1..1024
  std::uint32_t max_requests_per_connection = 0;  // 0 = unlimited; ..4294967295
};

// A throttle: `rate` requests per second with bursts of up to `burst` (GCRA, equivalent to a
// token bucket of capacity `burst` refilled at `rate` per second). YAML {rate: 10, burst: 20}.
// Absent = this layer is not limited. `rate` is required when the mapping is present.
struct RateConfig {
  bool set = false;         // false = this layer is not limited
  double rate = 0;          // requests per second, fractions allowed (0.5 = one every 2 s);
                            // 0.001..1000000 (the floor keeps burst * 1/rate inside 64-bit ns)
  std::uint32_t burst = 0;  // 1..1000000; default when omitted: max(1, ceil(rate))
};

// A request count per period, per API key (API Gateway usage-plan quotas). Periods are aligned on
// UTC boundaries. YAML {limit: 1000, period: DAY, offset: 0}; `limit` is required.
struct QuotaConfig {
  bool set = false;            // false = no quota
  std::uint64_t limit = 0;     // requests per period; 1..1000000000000
  std::string period = "DAY";  // DAY | WEEK | MONTH, upper-case as written; default DAY
  std::uint32_t offset = 0;    // where a period starts. DAY: must be 0; WEEK: 0..6, the weekday
                               // (0 = Sunday); MONTH: 0..27, starts on day offset + 1. Default 0
};

// A per-route throttle for each key of a plan (API Gateway method throttling).
struct PlanOverride {
  std::string route;    // a route name (checked: it exists, and is among Plan::routes when that
                        // list is not empty; one override per route); 1..256 bytes; required
  RateConfig throttle;  // required
  int line = 0;         // 1-based line where it was declared, for messages
};

// A usage plan: the limits applied to each API key on it.
struct Plan {
  std::string name;                     // [A-Za-z0-9_-]{1,64}, unique; required
  RateConfig throttle;                  // per key; unset = not limited
  QuotaConfig quota;                    // per key; unset = no quota
  std::vector<std::string> stages;      // names from Config::stages (checked), at most 100;
                                        // empty = every stage
  std::vector<std::string> routes;      // route names (checked), at most 10000;
                                        // empty = every route
  std::vector<PlanOverride> overrides;  // at most 10000
  int line = 0;                         // 1-based line where it was declared, for messages
};

// How a function runs (YAML runtime: lambda | exec). kNone: the name only carries limits.
enum class FunctionRuntime : std::uint8_t { kNone, kLambda, kExec };

// What a function process may reach on the network (YAML sandbox.network).
enum class NetworkMode : std::uint8_t {
  kNone,      // its own empty network namespace (only its own loopback); the default
  kLoopback,  // reserved: today the host network, with a warning at start (not enforced yet)
  kHost,      // the host network
};

struct SandboxConfig {
  NetworkMode network = NetworkMode::kNone;  // none | loopback | host; default none
};

// A function: its limits (however it is reached: every route whose `function` names it) and,
// when `runtime` is set, how its processes are started and bounded (docs/runtime.md).
struct FunctionConfig {
  std::string name;               // [A-Za-z0-9_-]{1,64}, unique; required
  RateConfig throttle;            // all callers together; unset = not limited
  std::uint32_t concurrency = 0;  // most requests in flight; 0 = unlimited; 0..1000000
  FunctionRuntime runtime = FunctionRuntime::kNone;  // lambda | exec; absent = limits only
  std::vector<std::string> command;  // argv, command[0] an absolute path or resolved through
                                     // PATH; 1..64 items; required with a runtime
  std::string working_dir;           // absolute; "" = the gateway's working directory
  std::string handler;               // _HANDLER for lambda runtimes ("index.handler"); <= 256
  std::vector<std::pair<std::string, std::string>> env;  // extra environment, at most 64;
                                                         // names [A-Za-z_][A-Za-z0-9_]*, not
                                                         // AWS_LAMBDA_* / _HANDLER (ours)
  std::uint32_t memory_mb = 128;          // per worker process tree; 16..10240
  std::uint32_t timeout_s = 3;            // per invocation, SIGKILL at the deadline; 1..900
  std::uint32_t reserved_concurrency = 10;  // most workers (processes) at once; 1..1000
  std::uint32_t max_queue = 100;          // invocations waiting for a worker; 0..100000
  std::uint32_t idle_timeout_s = 300;     // a warm worker idle this long is stopped; 1..86400
  std::uint32_t max_pids = 64;            // tasks (processes + threads) per worker; 1..4096
  SandboxConfig sandbox;
  std::string role;                       // the role its invocations act as; "" = none
  std::vector<std::string> invokers;      // who may invoke it: "route:NAME", "trigger:NAME",
                                          // "workflow:NAME", "principal:ID"; a trailing '*'
                                          // matches any suffix. Absent = every route that
                                          // targets it. The admin API may always invoke.
  bool invokers_set = false;              // `invokers` was given (even empty)
  int line = 0;                           // 1-based line where it was declared, for messages
};

// The function runtime as a whole.
struct RuntimeConfig {
  std::uint32_t max_lineage_depth = 16;  // a call chain deeper than this is refused
                                         // (RecursiveInvocationStopped); 1..1000
  std::uint32_t run_as_uid = 65534;      // when gatehouse runs as root, functions run as this
                                         // uid/gid (default nobody); 1..4294967294
  std::uint32_t run_as_gid = 65534;
};

struct ApiKeysConfig {
  std::string header = "x-api-key";  // request header carrying the key; an HTTP token of at
                                     // most 256 bytes, stored lower-case; framing headers (host,
                                     // content-length, ...) are refused
  milliseconds quota_flush_interval{1000};  // quota counters are written to the store at least
                                            // this often; 10ms..1m
};

// Gateway-wide throttling layers.
struct ThrottlingConfig {
  RateConfig account;                // the whole gateway; unset = not limited
  RateConfig client_ip;              // per client IP, for routes that take no API key
  std::uint32_t concurrency = 0;     // account in-flight max; 0 = unlimited; 0..1000000
  milliseconds concurrency_wait{0};  // bounded wait for a concurrency slot (any gate);
                                     // 0 = refuse at once; 0..1m
};

// Whether a route takes an API key (YAML api_key: none | optional | required; default none).
enum class ApiKeyMode : std::uint8_t { kNone, kOptional, kRequired };

// How a route authenticates callers (YAML auth: api_key | sigv4; default api_key, where the
// route's api_key field decides). sigv4: AWS Signature Version 4 with access keys issued by
// `gatehouse credentials create`; the principal is the key's role ARN (docs/sigv4.md).
enum class RouteAuth : std::uint8_t { kApiKey, kSigV4 };

// SigV4 access keys.
struct CredentialsConfig {
  std::string kek_file;                  // key-encryption key file (created 0600); "" = beside
                                         // the sqlite store ("<db>.kek"); 1..4096 bytes
  std::string account_id = "000000000000";  // the account of role ARNs: 12 digits
  std::string region = "us-east-1";      // the region signatures must be scoped to;
                                         // [A-Za-z0-9_-]{1,64}
};

// What a route answers with.
struct StaticTarget {
  std::uint16_t status = 200;               // 100..599
  std::string body;                         // <= 1 MiB
  std::string content_type = "text/plain";  // 1..256 bytes, no control characters
  // Extra response headers, in file order; at most 64. Names are HTTP tokens (framing headers
  // such as content-length, and content-type, are refused); values <= 8 KiB, no CR/LF.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct HttpTarget {
  std::string upstream;     // name of an entry in Config::upstreams (checked)
  std::string path_prefix;  // prepended to the forwarded path; "" keeps the request path;
                            // else an absolute path without a trailing '/'
  bool strip_stage = true;  // forward without the stage prefix
};

// The event shape a function target sends (API Gateway HTTP API payload format versions).
enum class PayloadFormat : std::uint8_t { kV2, kV1 };

struct Target {
  enum class Kind : std::uint8_t { kStatic, kHttp, kFunction };
  Kind kind = Kind::kStatic;
  StaticTarget static_target;  // when kind == kStatic
  HttpTarget http;             // when kind == kHttp
  std::string function;        // the function this target stands for (limits layer; YAML
                               // routes[].function) and, when kind == kFunction, the function
                               // invoked (YAML target.function; the two must agree); must name
                               // a function with a runtime when kind == kFunction (checked)
  PayloadFormat payload_format = PayloadFormat::kV2;  // YAML target.payload_format: "2.0" |
                                                      // "1.0"; only with target.function
};

struct Route {
  std::string name;                  // unique, 1..256 bytes; defaults to "METHOD path" with the
                                     // methods joined by ',' ("GET,HEAD /items/{id}")
  std::vector<std::string> methods;  // 1..16 upper-cased HTTP tokens, or {"ANY"} alone
  std::string path;                  // template: /items/{id}, /files/{proxy+}; starts with '/',
                                     // params are whole segments, {x+} only last; no "//", "."
                                     // or ".." segments, no '?' or '#'; <= 2048 bytes
  std::vector<std::string> stages;   // names from Config::stages (checked), at most 100;
                                     // empty = every stage (or no stage prefix if none defined)
  Target target;                     // target.function must name a Config::functions entry
                                     // when set (checked)
  ApiKeyMode api_key = ApiKeyMode::kNone;  // YAML api_key: none | optional | required
  RouteAuth auth = RouteAuth::kApiKey;     // YAML auth: api_key | sigv4 (sigv4 excludes
                                           // api_key: optional/required)
  RateConfig throttle;                     // the route, all callers together; unset = no limit
  std::uint32_t concurrency = 0;           // most in flight; 0 = unlimited; 0..1000000
  int line = 0;                            // 1-based line where it was declared, for messages
};

struct Stage {
  std::string name;     // [A-Za-z0-9_-]{1,64}; requests are /{stage}/...
  RateConfig throttle;  // the stage, all callers together; unset = not limited
};

struct Upstream {
  std::string name;                     // [A-Za-z0-9_-]{1,64}, unique
  std::string host;                     // from url http://host[:port][/base]; DNS name or IP
                                        // literal (IPv6 without brackets); https is refused
  std::uint16_t port = 80;              // 1..65535
  std::string base_path;                // from the url, "" or "/v1" (trailing '/' removed)
  milliseconds connect_timeout{2'000};  // 1..60000
  milliseconds timeout{30'000};         // whole response; 1..3600000
  std::uint32_t max_idle = 64;          // idle keep-alive connections kept per worker; 0..10000
  std::uint64_t max_response_bytes = std::uint64_t{10} * 1024 * 1024;  // 0..4 GiB
};

struct AdminConfig {
  std::string token_sha256;               // hex SHA-256 of the admin token, stored lower-case;
                                          // "" disables admin endpoints
  std::string health_path = "/healthz";   // absolute paths without parameters;
  std::string metrics_path = "/metrics";  // metrics_path != health_path
  std::string admin_prefix = "/admin";    // no trailing '/'
  bool metrics_public = false;            // true: /metrics without the admin token
};

struct LogConfig {
  std::string level = "info";         // trace|debug|info|warn|error|off
  std::string access_log = "stdout";  // stdout|stderr|off|<file path>
};

struct StoreConfig {
  std::string state = "sqlite://./data/gatehouse.db";  // sqlite://PATH; postgres://... is
                                                       // accepted here, for later
};

struct Config {
  std::string source;  // path it was loaded from
  ServerConfig server;
  WireLimits limits;
  AdminConfig admin;
  LogConfig log;
  StoreConfig store;
  std::vector<Stage> stages;        // at most 100
  std::vector<Upstream> upstreams;  // at most 1000
  std::vector<Route> routes;        // at most 10000, in file order
  ApiKeysConfig api_keys;
  CredentialsConfig credentials;
  ThrottlingConfig throttling;
  std::vector<FunctionConfig> functions;  // at most 10000
  std::vector<Plan> plans;                // at most 1000
  RuntimeConfig runtime;

  // The upstream called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const Upstream* find_upstream(std::string_view name) const;
  // The plan called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const Plan* find_plan(std::string_view name) const;
  // The function called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const FunctionConfig* find_function(std::string_view name) const;
};

// One problem found in a config file.
struct ConfigError {
  std::string file;
  int line = 0;         // 1-based; 0 when unknown (e.g. the file cannot be read)
  int column = 0;       // 1-based, in bytes; 0 when unknown
  std::string message;  // "routes[2].target.http.upstream: unknown upstream 'api'"; user text in
                        // it is escaped (\xNN) and cut short; secrets are never echoed
  // "file:line:col: message", or "file: message" when line is 0.
  [[nodiscard]] std::string to_string() const;
};

using LoadResult = tl::expected<Config, std::vector<ConfigError>>;

// Loads and validates `path` (a file, FIFO or /dev/stdin). Never throws. Errors are sorted by
// line, then column; a file that cannot be read, or is over 16 MiB, is one error with line 0.
// Only one YAML document is allowed; an empty document gives the defaults. At most 500 errors
// are reported (checking stops there, and a last error says so). Config::source is `path`.
[[nodiscard]] LoadResult load_file(const std::string& path);
// Same, from text; `name` is used as the file name in errors and as Config::source.
[[nodiscard]] LoadResult load_string(std::string_view yaml, const std::string& name);

}  // namespace gatehouse::config
