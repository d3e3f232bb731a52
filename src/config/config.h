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
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

namespace gatehouse::policy {
class Policy;
}

namespace gatehouse::config {

// A compiled IAM policy document (src/policy), parsed and validated once at load. Immutable and
// shared by every copy of the Config and by the snapshots built from it.
using PolicyPtr = std::shared_ptr<const policy::Policy>;

// A named policy document (YAML policies[]): an identity or resource policy referenced by name
// from plans, roles, admin, routes and functions (docs/policy.md, "Wiring").
struct NamedPolicy {
  std::string name;    // [A-Za-z0-9_-]{1,64}, unique; required. The policy's id in decisions
  std::string json;    // the document as JSON: an inline YAML/JSON mapping converted, or the
                       // contents of the file a string names (relative to the config file);
                       // at most 20480 bytes (policy::kMaxPolicyBytes); required
  PolicyPtr compiled;  // set once the whole config is valid
  int line = 0;
};

// A resource policy on a route or a function (YAML `policy`): the name of a policies[] entry, or
// an inline mapping (then its id is "route:<name>" / "function:<name>"). Empty = none.
struct PolicyRef {
  std::string name;    // a policies[] name, or "" for an inline document
  std::string json;    // an inline document as JSON
  PolicyPtr compiled;  // set once the whole config is valid; null = no policy
  [[nodiscard]] bool set() const noexcept { return !name.empty() || !json.empty(); }
};

// A role: an identity a function acts as (FunctionConfig::role), with its identity policies.
struct Role {
  std::string name;                   // [A-Za-z0-9_-]{1,64}, unique; required
  std::vector<std::string> policies;  // policies[] names (checked); at most 10
  std::vector<PolicyPtr> compiled;    // the same, compiled
  int line = 0;
};

// How routes with no policy in play are treated (YAML authorization.default).
struct AuthorizationConfig {
  // false (allow, the default): a route with no resource policy, called by a principal with no
  // identity policy, is open as before policies existed. true (deny): it is refused.
  bool default_deny = false;
};

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
  std::vector<std::string> policies;    // identity policies of every key on the plan:
                                        // policies[] names (checked); at most 10
  std::vector<PolicyPtr> compiled;      // the same, compiled
  int line = 0;                         // 1-based line where it was declared, for messages
};

// How a function runs (YAML runtime: lambda | exec). kNone: the name only carries limits.
enum class FunctionRuntime : std::uint8_t { kNone, kLambda, kExec };

// What a function process may reach on the network (YAML sandbox.network).
enum class NetworkMode : std::uint8_t {
  kNone,      // its own network namespace: nothing but the runtime API; listen() and unix
              // sockets refused. The default
  kLoopback,  // its own network namespace with its loopback up: its own 127.0.0.1 services;
              // unix sockets refused
  kHost,      // the host network
};

struct SandboxConfig {
  NetworkMode network = NetworkMode::kNone;  // none | loopback | host; default none
  std::uint32_t tmp_mb = 64;  // size of its private /tmp (and /dev/shm), tmpfs counted in
                              // memory_mb; 1..4096, default 64
};

// Asynchronous invocations of a function (YAML functions[].async; docs/runtime.md): how often a
// failed event is retried, and how many may wait in its durable queue.
struct AsyncConfig {
  std::uint32_t max_retries = 2;    // retries after the first failed attempt (Lambda's
                                    // MaximumRetryAttempts); 0..100
  std::uint32_t backoff_s = 1;      // delay before retry k is backoff_s * 2^(k-1); 0..3600
  std::uint32_t max_age_s = 21600;  // an event older than this is dead-lettered instead of
                                    // run again (MaximumEventAgeInSeconds); 1..1209600
  std::uint32_t max_depth = 10000;  // events queued (waiting, retrying or running); one more is
                                    // refused with 429; 1..1000000
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
  std::uint32_t memory_mb = 128;                         // per worker process tree; 16..10240
  std::uint32_t timeout_s = 3;              // per invocation, SIGKILL at the deadline; 1..900
  std::uint32_t reserved_concurrency = 10;  // most workers (processes) at once; 1..1000
  std::uint32_t max_queue = 100;            // invocations waiting for a worker; 0..100000
  std::uint32_t idle_timeout_s = 300;       // a warm worker idle this long is stopped; 1..86400
  std::uint32_t max_pids = 64;              // tasks (processes + threads) per worker; 1..4096
  std::uint32_t init_timeout_s = 10;        // a lambda worker must ask for work this soon after
                                            // it starts, or its start failed; 1..900
  SandboxConfig sandbox;
  AsyncConfig async;
  std::string role;                   // the role its invocations act as; "" = none
  std::vector<std::string> invokers;  // shorthand for a resource policy (not with `policy`):
                                      // "route:NAME", "trigger:NAME", "workflow:NAME",
                                      // "principal:ARN"; a trailing '*' matches any suffix.
                                      // Translated at load into `policy` (docs/policy.md)
  bool invokers_set = false;          // `invokers` was given (even empty)
  PolicyRef policy;                   // resource policy for lambda:InvokeFunction. None =
                                      // every route that targets it, plus principals whose
                                      // identity policies allow it (admin by default)
  std::string arn;                    // arn:gatehouse:lambda:<region>:<account>:function:
                                      // <name>, set at load
  int line = 0;                       // 1-based line where it was declared, for messages
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
  bool forward = false;  // pass the key header on to http upstreams (default: removed, so a
                         // backend never learns its callers' keys)
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

// How a route authenticates callers (YAML auth: api_key | jwt | sigv4; default api_key, where the
// route's api_key field decides). jwt: a bearer JWT checked by the route's `jwt` block
// (docs/identity.md). sigv4: AWS Signature Version 4 with access keys issued to roles by
// `gatehouse credentials create`; the principal is the key's role ARN (docs/identity.md).
enum class RouteAuth : std::uint8_t { kApiKey, kJwt, kSigV4 };

// SigV4 access keys (YAML credentials). Their ARNs use Config::account_id, and signatures must
// be scoped to Config::region.
struct CredentialsConfig {
  std::string kek_file;  // key-encryption key file (created 0600); "" = beside the sqlite store
                         // ("<db>.kek"); 1..4096 bytes
};

// Where a JWT authorizer gets its verification keys (YAML jwt.jwks: "pool NAME", "file PATH" or
// "url http://127.0.0.1:PORT/PATH").
enum class JwksSource : std::uint8_t { kNone, kPool, kFile, kUrl };

// A route's JWT authorizer (YAML routes[].jwt), with `auth: jwt`.
struct JwtAuthorizerConfig {
  JwksSource source = JwksSource::kNone;  // required
  std::string jwks;                       // as written ("pool main"): the cache key of the key set
  std::string location;  // the pool name, file path (relative: to the working directory) or
                         // URL (http, host 127.0.0.0/8, ::1 or localhost; checked)
  std::string url_host;  // kUrl: the URL's parts (IPv6 without brackets)
  std::uint16_t url_port = 80;
  std::string url_path;  // "/" when the URL has none
  std::string issuer;    // "iss" must equal it; required for file and url, defaults to the
                         // pool's issuer for a pool (and must equal it when given)
  std::vector<std::string> audience;    // accepted "aud" / "client_id" values, 1..100 items;
                                        // required for file and url; default for a pool: its
                                        // clients
  std::string token_use;                // access | id | any; default access for a pool (its
                                        // tokens carry token_use), any for file and url
                                        // (most issuers do not send it)
  std::vector<std::string> scopes;      // at least one of them must be in "scope"; at most 100;
                                        // empty = no scope needed
  std::vector<std::string> algorithms;  // EdDSA and/or RS256; empty (the default) = both
  milliseconds leeway{60'000};          // clock skew allowed on exp/nbf/iat; 0..5m
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
  RouteAuth auth = RouteAuth::kApiKey;     // YAML auth: api_key | jwt | sigv4 (jwt and sigv4
                                           // exclude api_key: optional/required; jwt needs
                                           // the jwt block)
  JwtAuthorizerConfig jwt;                 // with auth: jwt only (checked)
  RateConfig throttle;                     // the route, all callers together; unset = no limit
  std::uint32_t concurrency = 0;           // most in flight; 0 = unlimited; 0..1000000
  PolicyRef policy;                        // resource policy for gatehouse:Invoke; none = see
                                           // AuthorizationConfig
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

// A user pool's password rules (checked at sign-up). Passwords are 1..1024 bytes in any case.
struct PasswordPolicy {
  std::uint32_t min_length = 12;  // bytes; 6..256
  bool require_lowercase = false;
  bool require_uppercase = false;
  bool require_digits = false;
  bool require_symbols = false;  // any printable ASCII that is not a letter, digit or space
};

// Token lifetimes of a user pool.
struct TokenLifetimes {
  milliseconds access{3'600'000};           // 5m..24h
  milliseconds id{3'600'000};               // 5m..24h
  milliseconds refresh{30LL * 86'400'000};  // 1h..87600h (10 years); default 720h
};

// Failed sign-ins, counted per user and per client IP: after `free_attempts` failures, each
// further failure locks that user (or IP) out of sign-in for base_delay * 2^(n - 1) (n = failures
// past the free ones), capped at max_delay; an attempt during a lock-out is refused with 429 and
// Retry-After without checking the password. A success clears the user's count; counts are
// forgotten reset_after the last failure. In memory (a restart forgets them).
struct SignInThrottle {
  std::uint32_t free_attempts = 5;      // 0..1000
  milliseconds base_delay{1'000};       // 1ms..1h
  milliseconds max_delay{900'000};      // base_delay..24h
  milliseconds reset_after{3'600'000};  // 1s..168h
};

// argon2id cost for new password hashes (libsodium crypto_pwhash); hashes keep their own
// parameters, and a sign-in rehashes a password whose hash used other ones.
struct Argon2Config {
  std::uint32_t ops_limit = 2;                             // passes; 1..20
  std::uint64_t memory = std::uint64_t{64} * 1024 * 1024;  // bytes; 8KiB..1GiB
};

// A user pool (YAML user_pools[]): users who sign up and sign in for tokens (docs/identity.md).
struct UserPool {
  std::string name;    // [A-Za-z0-9_-]{1,64}, unique; required
  std::string issuer;  // the tokens' "iss"; "" = http://<server.listen><path_prefix>/<name>
                       // (localhost for a wildcard listen host); 1..1024 bytes
  std::string signing_alg = "EdDSA";  // EdDSA | RS256: the algorithm of new signing keys
  std::string confirmation = "auto";  // auto | admin: who confirms a sign-up
  std::vector<std::string> clients;   // app client ids allowed to sign in ("aud" of ID tokens,
                                      // "client_id" of access tokens); 1..100, names; required
  PasswordPolicy password_policy;
  TokenLifetimes tokens;
  SignInThrottle sign_in_throttle;
  Argon2Config argon2;
  int line = 0;  // 1-based line where it was declared, for messages
};

// Identity settings shared by user pools and JWT authorizers.
struct IdentityConfig {
  std::string account_id = "000000000000";  // the <account> and <region> of user ARNs: copies
  std::string region = "us-east-1";         // of Config::account_id / region made at load
  std::string path_prefix = "/auth";        // user pool endpoints: <prefix>/<pool>/signin ...
  std::uint32_t hash_threads = 1;           // threads running argon2id; 1..64 (restart)
  std::uint32_t max_pending = 64;           // sign-ups/sign-ins queued for them; past it 503
                                            // IdentityBusy; 1..100000
  milliseconds jwks_refresh{300'000};       // file and url key sets are re-read this often;
                                            // 1s..24h (an unknown kid triggers an early
                                            // re-read, at most every 10 s)
};

struct AdminConfig {
  std::string token_sha256;               // hex SHA-256 of the admin token, stored lower-case;
                                          // "" disables admin endpoints
  std::string health_path = "/healthz";   // absolute paths without parameters;
  std::string metrics_path = "/metrics";  // metrics_path != health_path
  std::string admin_prefix = "/admin";    // no trailing '/'
  bool metrics_public = false;            // true: /metrics without the admin token
  std::vector<std::string> policies;      // identity policies of the admin principal
                                          // (policies[] names, checked; at most 10); empty =
                                          // allowed everything
  std::vector<PolicyPtr> compiled;        // the same, compiled
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
  std::string account_id = "000000000000";  // 12 digits: the <account> of every ARN
  std::string region = "us-east-1";         // [a-z0-9-]{1,32}: the <region> of every ARN
  std::vector<NamedPolicy> policies;        // at most 1000
  std::vector<Role> roles;                  // at most 1000
  AuthorizationConfig authorization;
  IdentityConfig identity;
  std::vector<UserPool> user_pools;  // at most 100

  // The upstream called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const Upstream* find_upstream(std::string_view name) const;
  // The plan called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const Plan* find_plan(std::string_view name) const;
  // The function called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const FunctionConfig* find_function(std::string_view name) const;
  // The role called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const Role* find_role(std::string_view name) const;
  // The user pool called `name`, or nullptr. Linear; the pointer lives as long as this Config.
  [[nodiscard]] const UserPool* find_user_pool(std::string_view name) const;
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
