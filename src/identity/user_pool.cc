#include <sodium.h>

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cctype>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "identity/identity.h"

namespace gatehouse::identity {

namespace json = boost::json;
using std::chrono::milliseconds;

namespace {

constexpr std::string_view kUsers = "idp_users";
constexpr std::string_view kRefresh = "idp_refresh";
constexpr std::string_view kKeys = "idp_keys";
constexpr std::string_view kKeysVersion = "idp_keys_version";
// How long a retired key stays published past the longest token lifetime: the largest leeway a
// verifier may allow on exp.
constexpr std::int64_t kRetiredGraceMs = std::int64_t{5} * 60 * 1000;

IdpError fail(int status, std::string_view code, std::string message) {
  return IdpError{status, code, std::move(message), std::chrono::seconds(0)};
}
IdpError internal(const core::Error& e) { return fail(500, "InternalError", e.message); }
IdpError no_pool(std::string_view pool) {
  return fail(404, "UserPoolNotFound", "no user pool '" + std::string(pool) + "'");
}
IdpError not_authorized() { return fail(401, "NotAuthorized", "incorrect username or password"); }

std::int64_t wall_ms(const core::Clock& clock) {
  return std::chrono::duration_cast<milliseconds>(clock.wall().time_since_epoch()).count();
}

bool username_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '@' || c == '+' || c == '-';
}

bool attribute_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == ':' || c == '.' || c == '-';
}

// Claims the pool sets itself; a user attribute must not shadow them.
constexpr std::array<std::string_view, 16> kReservedClaims{"sub",
                                                           "iss",
                                                           "aud",
                                                           "exp",
                                                           "nbf",
                                                           "iat",
                                                           "jti",
                                                           "token_use",
                                                           "auth_time",
                                                           "scope",
                                                           "username",
                                                           "client_id",
                                                           "cognito:username",
                                                           "cognito:groups",
                                                           "event_id",
                                                           "origin_jti"};

// A random UUID in the version 4 form: the user's "sub".
std::string uuid4() {
  std::array<unsigned char, 16> b{};
  randombytes_buf(b.data(), b.size());
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) {
      out.push_back('-');
    }
    out.push_back(kHex[b[i] >> 4]);
    out.push_back(kHex[b[i] & 15]);
  }
  return out;
}

struct StoredUser {
  UserRecord rec;
  std::string hash;  // argon2id, libsodium's crypto_pwhash_str format
};

std::string user_json(const StoredUser& u) {
  json::object o;
  o["username"] = u.rec.username;
  o["sub"] = u.rec.sub;
  o["hash"] = u.hash;
  o["confirmed"] = u.rec.confirmed;
  o["created_ms"] = u.rec.created_ms;
  o["gen"] = u.rec.gen;
  json::object attrs;
  for (const auto& [k, v] : u.rec.attributes) {
    attrs[k] = v;
  }
  o["attributes"] = std::move(attrs);
  return json::serialize(o);
}

const json::object* parse_object(std::string_view text, json::value& holder) {
  json::error_code ec;
  holder = json::parse(json::string_view(text.data(), text.size()), ec);
  return !ec && holder.is_object() ? &holder.get_object() : nullptr;
}

std::string get_string(const json::object& o, const char* name) {
  const json::value* v = o.if_contains(name);
  return v != nullptr && v->is_string() ? std::string(v->get_string()) : std::string();
}
std::int64_t get_int(const json::object& o, const char* name) {
  const json::value* v = o.if_contains(name);
  return v != nullptr && v->is_int64() ? v->get_int64() : 0;
}

core::Result<StoredUser> parse_user(std::string_view text) {
  json::value holder;
  const json::object* o = parse_object(text, holder);
  if (o == nullptr) {
    return core::make_error(core::ErrorCode::kIo, "stored user record is not a JSON object");
  }
  StoredUser u;
  u.rec.username = get_string(*o, "username");
  u.rec.sub = get_string(*o, "sub");
  u.hash = get_string(*o, "hash");
  const json::value* c = o->if_contains("confirmed");
  u.rec.confirmed = c != nullptr && c->is_bool() && c->get_bool();
  u.rec.created_ms = get_int(*o, "created_ms");
  u.rec.gen = get_int(*o, "gen");
  if (const json::value* a = o->if_contains("attributes"); a != nullptr && a->is_object()) {
    for (const auto& kv : a->get_object()) {
      if (kv.value().is_string()) {
        u.rec.attributes.emplace_back(std::string(kv.key()), std::string(kv.value().get_string()));
      }
    }
  }
  if (u.rec.username.empty() || u.rec.sub.empty() || u.hash.empty()) {
    return core::make_error(core::ErrorCode::kIo, "stored user record lacks username, sub or hash");
  }
  return u;
}

struct StoredKey {
  KeyInfo info;
  std::string private_text;
};

std::string key_json(const StoredKey& k) {
  json::object o;
  o["kid"] = k.info.kid;
  o["alg"] = std::string(alg_name(k.info.alg));
  o["private"] = k.private_text;
  o["created_ms"] = k.info.created_ms;
  o["retired_ms"] = k.info.retired_ms;
  return json::serialize(o);
}

core::Result<StoredKey> parse_key(std::string_view text) {
  json::value holder;
  const json::object* o = parse_object(text, holder);
  if (o == nullptr) {
    return core::make_error(core::ErrorCode::kIo, "stored signing key is not a JSON object");
  }
  StoredKey k;
  k.info.kid = get_string(*o, "kid");
  const auto alg = alg_from_name(get_string(*o, "alg"));
  k.private_text = get_string(*o, "private");
  k.info.created_ms = get_int(*o, "created_ms");
  k.info.retired_ms = get_int(*o, "retired_ms");
  if (k.info.kid.empty() || !alg || k.private_text.empty()) {
    return core::make_error(core::ErrorCode::kIo, "stored signing key lacks kid, alg or key");
  }
  k.info.alg = *alg;
  return k;
}

struct RefreshRecord {
  std::string hash;  // SHA-256 hex of the secret
  std::string client_id;
  std::int64_t gen = 0;
  std::int64_t created_ms = 0;
  std::int64_t expires_ms = 0;
  std::int64_t auth_time = 0;  // seconds
};

std::string refresh_json(const RefreshRecord& r) {
  json::object o;
  o["hash"] = r.hash;
  o["client_id"] = r.client_id;
  o["gen"] = r.gen;
  o["created_ms"] = r.created_ms;
  o["expires_ms"] = r.expires_ms;
  o["auth_time"] = r.auth_time;
  return json::serialize(o);
}

std::optional<RefreshRecord> parse_refresh(std::string_view text) {
  json::value holder;
  const json::object* o = parse_object(text, holder);
  if (o == nullptr) {
    return std::nullopt;
  }
  RefreshRecord r;
  r.hash = get_string(*o, "hash");
  r.client_id = get_string(*o, "client_id");
  r.gen = get_int(*o, "gen");
  r.created_ms = get_int(*o, "created_ms");
  r.expires_ms = get_int(*o, "expires_ms");
  r.auth_time = get_int(*o, "auth_time");
  return r;
}

// Every record of `table` under `prefix`, parsed with `parse` (a Result<T>(string_view)).
template <class Parse>
auto scan_records(store::Store& store, std::string_view table, const std::string& prefix,
                  Parse parse) -> IdpResult<std::vector<typename decltype(parse(""))::value_type>> {
  using T = typename decltype(parse(""))::value_type;
  auto rows = store.scan(table, prefix, std::numeric_limits<std::size_t>::max());
  if (!rows) {
    return tl::unexpected(internal(rows.error()));
  }
  std::vector<T> out;
  out.reserve(rows->size());
  for (const auto& [k, v] : *rows) {
    auto r = parse(v);
    if (!r) {
      return tl::unexpected(internal(r.error()));
    }
    out.push_back(std::move(*r));
  }
  return out;
}

// Hashing: argon2id with the pool's cost.
std::string hash_password(const config::Argon2Config& cost, std::string_view password) {
  std::string out(crypto_pwhash_STRBYTES, '\0');
  if (crypto_pwhash_str_alg(out.data(), password.data(), password.size(), cost.ops_limit,
                            static_cast<std::size_t>(cost.memory),
                            crypto_pwhash_ALG_ARGON2ID13) != 0) {
    return {};  // out of memory
  }
  out.resize(std::strlen(out.c_str()));
  return out;
}

bool verify_password(const std::string& hash, std::string_view password) {
  return crypto_pwhash_str_verify(hash.c_str(), password.data(), password.size()) == 0;
}

}  // namespace

// ---- free functions -----------------------------------------------------------------------------

std::string check_username(std::string_view username) {
  if (username.empty() || username.size() > kMaxUsernameBytes) {
    return "the username must be 1 to " + std::to_string(kMaxUsernameBytes) + " bytes";
  }
  if (!std::all_of(username.begin(), username.end(), username_char)) {
    return "the username may hold only letters, digits and . _ @ + -";
  }
  return {};
}

std::string check_password(const config::PasswordPolicy& policy, std::string_view password) {
  if (password.size() < policy.min_length) {
    return "the password must be at least " + std::to_string(policy.min_length) + " bytes";
  }
  if (password.size() > kMaxPasswordBytes) {
    return "the password must be at most " + std::to_string(kMaxPasswordBytes) + " bytes";
  }
  bool lower = false;
  bool upper = false;
  bool digit = false;
  bool symbol = false;
  for (char c : password) {
    lower = lower || (c >= 'a' && c <= 'z');
    upper = upper || (c >= 'A' && c <= 'Z');
    digit = digit || (c >= '0' && c <= '9');
    symbol = symbol || (c > ' ' && c < 0x7f && !std::isalnum(static_cast<unsigned char>(c)));
  }
  if (policy.require_lowercase && !lower) {
    return "the password needs a lowercase letter";
  }
  if (policy.require_uppercase && !upper) {
    return "the password needs an uppercase letter";
  }
  if (policy.require_digits && !digit) {
    return "the password needs a digit";
  }
  if (policy.require_symbols && !symbol) {
    return "the password needs a symbol";
  }
  return {};
}

std::string user_arn(const config::IdentityConfig& id, std::string_view pool,
                     std::string_view sub) {
  std::string out = "arn:gatehouse:cognito-idp:";
  out += id.region;
  out += ':';
  out += id.account_id;
  out += ":userpool/";
  out += pool;
  out += "/user/";
  out += sub;
  return out;
}

// ---- SignInThrottleState ------------------------------------------------------------------------

std::chrono::milliseconds SignInThrottleState::locked_for(const std::string& user,
                                                          const std::string& ip) {
  const auto now = clock_.now();
  std::lock_guard lock(mu_);
  std::chrono::steady_clock::time_point until{};
  if (auto it = users_.find(user); it != users_.end()) {
    until = std::max(until, it->second.locked_until);
  }
  if (auto it = ips_.find(ip); it != ips_.end()) {
    until = std::max(until, it->second.locked_until);
  }
  return until > now ? std::chrono::ceil<milliseconds>(until - now) : milliseconds(0);
}

void SignInThrottleState::count(const config::SignInThrottle& cfg, Map& m, const std::string& key,
                                std::chrono::steady_clock::time_point now) {
  auto it = m.find(key);
  if (it == m.end()) {
    if (m.size() >= kMaxEntries) {
      std::erase_if(m, [&](const auto& kv) {
        return now - kv.second.last_failure > cfg.reset_after && kv.second.locked_until <= now;
      });
      if (m.size() >= kMaxEntries) {
        return;
      }
    }
    it = m.emplace(key, Entry{}).first;
  }
  Entry& e = it->second;
  if (e.failures > 0 && now - e.last_failure > cfg.reset_after) {
    e.failures = 0;
  }
  e.failures = std::min<std::uint32_t>(e.failures + 1, 1'000'000);
  e.last_failure = now;
  if (e.failures > cfg.free_attempts) {
    // base * 2^(n-1), computed without overflow: stop doubling once past the cap.
    const std::uint32_t n = e.failures - cfg.free_attempts;
    milliseconds delay = cfg.base_delay;
    for (std::uint32_t i = 1; i < n && delay < cfg.max_delay; ++i) {
      delay *= 2;
    }
    e.locked_until = now + std::min(delay, cfg.max_delay);
  }
}

void SignInThrottleState::failed(const config::SignInThrottle& cfg, const std::string& user,
                                 const std::string& ip) {
  const auto now = clock_.now();
  std::lock_guard lock(mu_);
  count(cfg, users_, user, now);
  count(cfg, ips_, ip, now);
}

void SignInThrottleState::succeeded(const std::string& user) {
  std::lock_guard lock(mu_);
  users_.erase(user);
}

// ---- UserPools ----------------------------------------------------------------------------------

struct UserPools::Pool {
  std::string name;
  mutable std::mutex mu;
  config::UserPool cfg;                      // guarded by mu
  bool removed = false;                      // guarded by mu: gone from the config
  std::shared_ptr<const SigningKey> active;  // guarded by mu
  std::shared_ptr<const Jwks> jwks;          // guarded by mu
  std::string jwks_json;                     // guarded by mu
  std::string dummy_hash;                    // guarded by mu; made on first need
  // Serialises read-modify-write of this pool's user records (sign-up, confirm, sign-out) and
  // key rotation within this process.
  std::mutex write_mu;

  config::UserPool config() const {
    std::lock_guard lock(mu);
    return cfg;
  }
};

UserPools::UserPools(const config::Config& config, store::Store& store, const core::Clock& clock)
    : clock_(clock), store_(store), throttle_(clock) {
  // Idempotent and thread-safe. Constructed at start-up only, where exceptions are allowed.
  if (sodium_init() < 0) {
    throw std::runtime_error("libsodium failed to initialise");
  }
  update(config);
}

UserPools::~UserPools() = default;

void UserPools::update(const config::Config& config) {
  std::lock_guard lock(mu_);
  identity_ = config.identity;
  for (auto& p : pools_) {
    std::lock_guard pl(p->mu);
    p->removed = true;
  }
  for (const config::UserPool& c : config.user_pools) {
    auto it = std::find_if(pools_.begin(), pools_.end(),
                           [&](const auto& p) { return p->name == c.name; });
    if (it == pools_.end()) {
      auto p = std::make_unique<Pool>();
      p->name = c.name;
      p->cfg = c;
      pools_.push_back(std::move(p));
      continue;
    }
    std::lock_guard pl((*it)->mu);
    if ((*it)->cfg.argon2.ops_limit != c.argon2.ops_limit ||
        (*it)->cfg.argon2.memory != c.argon2.memory) {
      (*it)->dummy_hash.clear();
    }
    (*it)->cfg = c;
    (*it)->removed = false;
  }
}

UserPools::Pool* UserPools::find(std::string_view name) const {
  std::lock_guard lock(mu_);
  for (const auto& p : pools_) {
    if (p->name == name) {
      std::lock_guard pl(p->mu);
      return p->removed ? nullptr : p.get();
    }
  }
  return nullptr;
}

core::Result<std::int64_t> UserPools::keys_version() { return store_.counter(kKeysVersion); }

core::Result<void> UserPools::load_keys(bool provision) {
  std::vector<Pool*> pools;
  {
    std::lock_guard lock(mu_);
    for (const auto& p : pools_) {
      pools.push_back(p.get());
    }
  }
  for (Pool* p : pools) {
    {
      std::lock_guard pl(p->mu);
      if (p->removed) {
        continue;
      }
    }
    if (auto r = load_pool_keys(*p, provision); !r) {
      return core::make_error(core::ErrorCode::kIo,
                              "user pool '" + p->name + "': " + r.error().message);
    }
  }
  return {};
}

IdpResult<void> UserPools::load_pool_keys(Pool& p, bool provision) {
  std::lock_guard write(p.write_mu);
  const config::UserPool cfg = p.config();
  const std::string prefix = p.name + "/";
  auto scanned = scan_records(store_, kKeys, prefix, parse_key);
  if (!scanned) {
    return tl::unexpected(scanned.error());
  }
  std::vector<StoredKey> keys = std::move(*scanned);
  const std::int64_t now = wall_ms(clock_);
  // The active key: the newest one not retired.
  StoredKey* active = nullptr;
  for (auto& k : keys) {
    if (k.info.retired_ms == 0 &&
        (active == nullptr || k.info.created_ms > active->info.created_ms)) {
      active = &k;
    }
  }
  const Alg want = cfg.signing_alg == "RS256" ? Alg::kRS256 : Alg::kEdDSA;
  store::Batch batch;
  if (provision && (active == nullptr || active->info.alg != want)) {
    auto fresh = SigningKey::generate(want, core::random_hex(8));
    if (!fresh) {
      return tl::unexpected(internal(fresh.error()));
    }
    if (active != nullptr) {
      active->info.retired_ms = now;
      batch.emplace_back(
          store::Put{std::string(kKeys), prefix + active->info.kid, key_json(*active)});
    }
    StoredKey k{KeyInfo{fresh->kid(), want, now, 0}, fresh->private_text()};
    batch.emplace_back(store::Put{std::string(kKeys), prefix + k.info.kid, key_json(k)});
    batch.emplace_back(store::AddCounter{std::string(kKeysVersion), 1});
    keys.push_back(std::move(k));
    active = &keys.back();
  }
  if (active == nullptr) {
    return tl::unexpected(fail(500, "InternalError", "no signing key (not provisioned yet)"));
  }
  // Publish the active key and retired keys whose tokens may still be live; forget older ones.
  const std::int64_t lifetime =
      std::max(cfg.tokens.access.count(), cfg.tokens.id.count()) + kRetiredGraceMs;
  std::string doc = "{\"keys\":[";
  bool first = true;
  std::shared_ptr<const SigningKey> signer;
  for (const auto& k : keys) {
    const bool live = k.info.retired_ms == 0 || k.info.retired_ms + lifetime > now;
    if (!live) {
      batch.emplace_back(store::Delete{std::string(kKeys), prefix + k.info.kid});
      continue;
    }
    auto sk = SigningKey::from_private(k.info.alg, k.info.kid, k.private_text);
    if (!sk) {
      return tl::unexpected(internal(sk.error()));
    }
    doc += first ? "" : ",";
    doc += sk->public_jwk();
    first = false;
    if (&k == active) {
      signer = std::make_shared<const SigningKey>(std::move(*sk));
    }
  }
  doc += "]}";
  auto set = Jwks::parse(doc);
  if (!set) {
    return tl::unexpected(internal(set.error()));
  }
  if (!batch.empty()) {
    if (auto w = store_.write_sync(std::move(batch)); !w) {
      return tl::unexpected(internal(w.error()));
    }
  }
  std::lock_guard pl(p.mu);
  p.active = std::move(signer);
  p.jwks = std::make_shared<const Jwks>(std::move(*set));
  p.jwks_json = std::move(doc);
  return {};
}

std::shared_ptr<const Jwks> UserPools::jwks(std::string_view pool) const {
  Pool* p = find(pool);
  if (p == nullptr) {
    return nullptr;
  }
  std::lock_guard pl(p->mu);
  return p->jwks;
}

std::string UserPools::jwks_json(std::string_view pool) const {
  Pool* p = find(pool);
  if (p == nullptr) {
    return {};
  }
  std::lock_guard pl(p->mu);
  return p->jwks_json;
}

IdpResult<UserRecord> UserPools::sign_up(
    std::string_view pool, std::string_view username, std::string_view password,
    std::vector<std::pair<std::string, std::string>> attributes) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  const config::UserPool cfg = p->config();
  if (auto why = check_username(username); !why.empty()) {
    return tl::unexpected(fail(400, "InvalidParameter", why));
  }
  if (auto why = check_password(cfg.password_policy, password); !why.empty()) {
    return tl::unexpected(fail(400, "InvalidPassword", why));
  }
  if (attributes.size() > kMaxAttributes) {
    return tl::unexpected(
        fail(400, "InvalidParameter", "at most " + std::to_string(kMaxAttributes) + " attributes"));
  }
  for (const auto& [name, value] : attributes) {
    if (name.empty() || name.size() > 64 ||
        !std::all_of(name.begin(), name.end(), attribute_name_char) ||
        std::find(kReservedClaims.begin(), kReservedClaims.end(), name) != kReservedClaims.end()) {
      return tl::unexpected(fail(400, "InvalidParameter",
                                 "attribute names are 1 to 64 of [A-Za-z0-9_:.-] and not a "
                                 "claim the pool sets itself"));
    }
    if (value.size() > kMaxAttributeBytes) {
      return tl::unexpected(
          fail(400, "InvalidParameter",
               "attribute values are at most " + std::to_string(kMaxAttributeBytes) + " bytes"));
    }
  }
  StoredUser u;
  u.rec.username = std::string(username);
  u.rec.sub = uuid4();
  u.rec.confirmed = cfg.confirmation == "auto";
  u.rec.created_ms = wall_ms(clock_);
  u.rec.attributes = std::move(attributes);
  const std::string key = p->name + "/" + u.rec.username;
  // Hash before taking the lock: the slow part must not serialise sign-ups.
  u.hash = hash_password(cfg.argon2, password);
  if (u.hash.empty()) {
    return tl::unexpected(fail(500, "InternalError", "password hashing failed (out of memory)"));
  }
  std::lock_guard write(p->write_mu);
  auto existing = store_.get(kUsers, key);
  if (existing) {
    return tl::unexpected(fail(409, "UsernameExists", "the username is taken"));
  }
  if (existing.error().code != core::ErrorCode::kNotFound) {
    return tl::unexpected(internal(existing.error()));
  }
  store::Batch b;
  b.emplace_back(store::Put{std::string(kUsers), key, user_json(u)});
  if (auto w = store_.write_sync(std::move(b)); !w) {
    return tl::unexpected(internal(w.error()));
  }
  return u.rec;
}

IdpResult<TokenSet> UserPools::sign_in(std::string_view pool, std::string_view username,
                                       std::string_view password, std::string_view client_id,
                                       const std::string& remote_ip) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  const config::UserPool cfg = p->config();
  if (std::find(cfg.clients.begin(), cfg.clients.end(), client_id) == cfg.clients.end()) {
    return tl::unexpected(fail(400, "InvalidClient", "unknown client_id"));
  }
  if (!check_username(username).empty() || password.size() > kMaxPasswordBytes) {
    return tl::unexpected(not_authorized());
  }
  const std::string user_key = p->name + "/" + std::string(username);
  const std::string ip_key = p->name + "/" + remote_ip;
  if (const auto wait = throttle_.locked_for(user_key, ip_key); wait.count() > 0) {
    IdpError e = fail(429, "TooManyFailedAttempts", "too many failed sign-ins; try again later");
    e.retry_after = std::chrono::ceil<std::chrono::seconds>(wait);
    return tl::unexpected(std::move(e));
  }
  auto row = store_.get(kUsers, user_key);
  if (!row && row.error().code != core::ErrorCode::kNotFound) {
    return tl::unexpected(internal(row.error()));
  }
  if (!row) {
    // Spend the same time as a real check, so response timing does not reveal which usernames
    // exist.
    std::string dummy;
    {
      std::lock_guard pl(p->mu);
      dummy = p->dummy_hash;
    }
    if (dummy.empty()) {
      // Made once per pool (and cost), outside the lock: hashing takes a while.
      dummy = hash_password(cfg.argon2, "gatehouse-dummy-password");
      std::lock_guard pl(p->mu);
      p->dummy_hash = dummy;
    }
    (void)verify_password(dummy, password);
    throttle_.failed(cfg.sign_in_throttle, user_key, ip_key);
    return tl::unexpected(not_authorized());
  }
  auto stored = parse_user(*row);
  if (!stored) {
    return tl::unexpected(internal(stored.error()));
  }
  if (!verify_password(stored->hash, password)) {
    throttle_.failed(cfg.sign_in_throttle, user_key, ip_key);
    return tl::unexpected(not_authorized());
  }
  throttle_.succeeded(user_key);
  if (!stored->rec.confirmed) {
    return tl::unexpected(fail(403, "UserNotConfirmed", "the user is not confirmed yet"));
  }
  if (crypto_pwhash_str_needs_rehash(stored->hash.c_str(), cfg.argon2.ops_limit,
                                     static_cast<std::size_t>(cfg.argon2.memory)) != 0) {
    // The pool's cost changed since this hash was made: upgrade it while the password is known.
    std::string fresh = hash_password(cfg.argon2, password);
    std::lock_guard write(p->write_mu);
    auto again = store_.get(kUsers, user_key);
    auto current =
        again ? parse_user(*again) : core::Result<StoredUser>(tl::unexpect, again.error());
    if (!fresh.empty() && current && current->hash == stored->hash) {
      current->hash = std::move(fresh);
      store::Batch b;
      b.emplace_back(store::Put{std::string(kUsers), user_key, user_json(*current)});
      (void)store_.write_sync(std::move(b));  // best effort: the old hash still works
    }
  }
  const std::int64_t auth_time = wall_ms(clock_) / 1000;
  return issue(*p, stored->rec, client_id, auth_time, true);
}

IdpResult<TokenSet> UserPools::issue(Pool& p, const UserRecord& u, std::string_view client_id,
                                     std::int64_t auth_time, bool with_refresh) {
  std::shared_ptr<const SigningKey> signer;
  config::UserPool cfg;
  {
    std::lock_guard pl(p.mu);
    signer = p.active;
    cfg = p.cfg;
  }
  if (!signer) {
    return tl::unexpected(fail(500, "InternalError", "the pool has no signing key yet"));
  }
  const std::int64_t now_ms = wall_ms(clock_);
  const std::int64_t now = now_ms / 1000;
  json::object id;
  id["sub"] = u.sub;
  id["iss"] = cfg.issuer;
  id["aud"] = std::string(client_id);
  id["token_use"] = "id";
  id["auth_time"] = auth_time;
  id["iat"] = now;
  id["exp"] = now + cfg.tokens.id.count() / 1000;
  id["jti"] = core::random_hex(16);
  id["cognito:username"] = u.username;
  for (const auto& [k, v] : u.attributes) {
    id[k] = v;
  }
  json::object access;
  access["sub"] = u.sub;
  access["iss"] = cfg.issuer;
  access["client_id"] = std::string(client_id);
  access["token_use"] = "access";
  access["scope"] = "openid";
  access["auth_time"] = auth_time;
  access["iat"] = now;
  access["exp"] = now + cfg.tokens.access.count() / 1000;
  access["jti"] = core::random_hex(16);
  access["username"] = u.username;
  TokenSet out;
  auto id_token = signer->sign(json::serialize(id));
  auto access_token = signer->sign(json::serialize(access));
  if (!id_token || !access_token) {
    return tl::unexpected(fail(500, "InternalError", "token signing failed"));
  }
  out.id_token = std::move(*id_token);
  out.access_token = std::move(*access_token);
  out.expires_in = cfg.tokens.access.count() / 1000;
  if (!with_refresh) {
    return out;
  }
  // A new refresh token; the user's stale ones (expired, of an older generation, or past the
  // per-user cap) are dropped in the same batch.
  const std::string prefix = p.name + "/" + u.username + "/";
  auto rows = store_.scan(kRefresh, prefix, std::numeric_limits<std::size_t>::max());
  if (!rows) {
    return tl::unexpected(internal(rows.error()));
  }
  store::Batch b;
  std::vector<std::pair<std::int64_t, std::string>> live;  // created_ms, key
  for (const auto& [k, v] : *rows) {
    const auto r = parse_refresh(v);
    if (!r || r->expires_ms <= now_ms || r->gen != u.gen) {
      b.emplace_back(store::Delete{std::string(kRefresh), k});
    } else {
      live.emplace_back(r->created_ms, k);
    }
  }
  std::sort(live.begin(), live.end());
  for (std::size_t i = 0; i + kMaxRefreshPerUser <= live.size(); ++i) {
    b.emplace_back(store::Delete{std::string(kRefresh), live[i].second});
  }
  const std::string rid = core::random_hex(16);
  const std::string secret = core::random_hex(32);
  RefreshRecord rec;
  rec.hash = core::sha256_hex(secret);
  rec.client_id = std::string(client_id);
  rec.gen = u.gen;
  rec.created_ms = now_ms;
  rec.expires_ms = now_ms + cfg.tokens.refresh.count();
  rec.auth_time = auth_time;
  b.emplace_back(store::Put{std::string(kRefresh), prefix + rid, refresh_json(rec)});
  if (auto w = store_.write_sync(std::move(b)); !w) {
    return tl::unexpected(internal(w.error()));
  }
  out.refresh_token = rid + "." + secret + "." + base64url_encode(u.username);
  return out;
}

IdpResult<TokenSet> UserPools::refresh(std::string_view pool, std::string_view token,
                                       std::string_view client_id) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  const auto invalid = [] {
    return tl::unexpected(fail(401, "NotAuthorized", "invalid refresh token"));
  };
  // "<id: 32 hex>.<secret: 64 hex>.<base64url(username)>"
  const std::size_t d1 = token.find('.');
  const std::size_t d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
  if (d1 != 32 || d2 != 32 + 1 + 64 || token.size() > 512) {
    return invalid();
  }
  const std::string_view rid = token.substr(0, d1);
  const std::string_view secret = token.substr(d1 + 1, 64);
  std::string username;
  if (!base64url_decode(token.substr(d2 + 1), username) || !check_username(username).empty() ||
      !std::all_of(rid.begin(), rid.end(),
                   [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); })) {
    return invalid();
  }
  const std::string key = p->name + "/" + username + "/" + std::string(rid);
  auto row = store_.get(kRefresh, key);
  if (!row) {
    if (row.error().code != core::ErrorCode::kNotFound) {
      return tl::unexpected(internal(row.error()));
    }
    return invalid();
  }
  const auto rec = parse_refresh(*row);
  if (!rec || !core::constant_time_equal(core::sha256_hex(secret), rec->hash)) {
    return invalid();
  }
  if (rec->expires_ms <= wall_ms(clock_)) {
    store::Batch b;
    b.emplace_back(store::Delete{std::string(kRefresh), key});
    (void)store_.write_sync(std::move(b));
    return invalid();
  }
  if (!client_id.empty() && client_id != rec->client_id) {
    return invalid();
  }
  auto urow = store_.get(kUsers, p->name + "/" + username);
  if (!urow) {
    return invalid();
  }
  auto u = parse_user(*urow);
  if (!u) {
    return tl::unexpected(internal(u.error()));
  }
  if (u->rec.gen != rec->gen || !u->rec.confirmed) {
    return invalid();  // signed out globally since it was issued
  }
  return issue(*p, u->rec, rec->client_id, rec->auth_time, false);
}

IdpResult<UserRecord> UserPools::end_sessions(Pool& p, const UserRecord& u) {
  // write_mu held by the caller.
  const std::string prefix = p.name + "/" + u.username + "/";
  auto rows = store_.scan(kRefresh, prefix, std::numeric_limits<std::size_t>::max());
  if (!rows) {
    return tl::unexpected(internal(rows.error()));
  }
  auto row = store_.get(kUsers, p.name + "/" + u.username);
  if (!row) {
    return tl::unexpected(row.error().code == core::ErrorCode::kNotFound
                              ? fail(404, "UserNotFound", "no such user")
                              : internal(row.error()));
  }
  auto stored = parse_user(*row);
  if (!stored) {
    return tl::unexpected(internal(stored.error()));
  }
  ++stored->rec.gen;
  store::Batch b;
  for (const auto& [k, v] : *rows) {
    b.emplace_back(store::Delete{std::string(kRefresh), k});
  }
  b.emplace_back(store::Put{std::string(kUsers), p.name + "/" + u.username, user_json(*stored)});
  if (auto w = store_.write_sync(std::move(b)); !w) {
    return tl::unexpected(internal(w.error()));
  }
  return stored->rec;
}

IdpResult<void> UserPools::sign_out(std::string_view pool, std::string_view access_token) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  std::shared_ptr<const Jwks> keys;
  VerifyPolicy policy;
  {
    std::lock_guard pl(p->mu);
    keys = p->jwks;
    policy.issuer = p->cfg.issuer;
    policy.audiences = p->cfg.clients;
  }
  policy.token_use = TokenUse::kAccess;
  Claims claims;
  if (!keys || verify(access_token, *keys, policy, clock_.wall(), claims) != JwtStatus::kOk ||
      !check_username(claims.username).empty()) {
    return tl::unexpected(
        fail(401, "NotAuthorized", "a valid access token of this pool is needed"));
  }
  std::lock_guard write(p->write_mu);
  auto row = store_.get(kUsers, p->name + "/" + claims.username);
  if (!row) {
    return tl::unexpected(fail(401, "NotAuthorized", "the token's user no longer exists"));
  }
  auto u = parse_user(*row);
  if (!u || u->rec.sub != claims.sub) {
    return tl::unexpected(fail(401, "NotAuthorized", "the token's user no longer exists"));
  }
  auto r = end_sessions(*p, u->rec);
  if (!r) {
    return tl::unexpected(r.error());
  }
  return {};
}

IdpResult<UserRecord> UserPools::admin_confirm(std::string_view pool, std::string_view username) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  std::lock_guard write(p->write_mu);
  const std::string key = p->name + "/" + std::string(username);
  auto row =
      check_username(username).empty()
          ? store_.get(kUsers, key)
          : core::Result<std::string>(tl::unexpect, core::Error{core::ErrorCode::kNotFound, ""});
  if (!row) {
    return tl::unexpected(row.error().code == core::ErrorCode::kNotFound
                              ? fail(404, "UserNotFound", "no user '" + std::string(username) + "'")
                              : internal(row.error()));
  }
  auto u = parse_user(*row);
  if (!u) {
    return tl::unexpected(internal(u.error()));
  }
  if (!u->rec.confirmed) {
    u->rec.confirmed = true;
    store::Batch b;
    b.emplace_back(store::Put{std::string(kUsers), key, user_json(*u)});
    if (auto w = store_.write_sync(std::move(b)); !w) {
      return tl::unexpected(internal(w.error()));
    }
  }
  return u->rec;
}

IdpResult<UserRecord> UserPools::admin_sign_out(std::string_view pool, std::string_view username) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  if (!check_username(username).empty()) {
    return tl::unexpected(fail(404, "UserNotFound", "no user '" + std::string(username) + "'"));
  }
  std::lock_guard write(p->write_mu);
  UserRecord u;
  u.username = std::string(username);
  return end_sessions(*p, u);
}

IdpResult<std::vector<UserRecord>> UserPools::list_users(std::string_view pool) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  auto users = scan_records(store_, kUsers, p->name + "/", parse_user);
  if (!users) {
    return tl::unexpected(users.error());
  }
  std::vector<UserRecord> out;
  for (auto& u : *users) {
    out.push_back(std::move(u.rec));
  }
  return out;
}

IdpResult<std::vector<KeyInfo>> UserPools::list_keys(std::string_view pool) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  auto keys = scan_records(store_, kKeys, p->name + "/", parse_key);
  if (!keys) {
    return tl::unexpected(keys.error());
  }
  std::vector<KeyInfo> out;
  for (const auto& k : *keys) {
    out.push_back(k.info);
  }
  // Oldest first, the active key last (keys made in the same millisecond stay in that order).
  std::sort(out.begin(), out.end(), [](const KeyInfo& a, const KeyInfo& b) {
    return std::make_pair(a.retired_ms == 0, a.created_ms) <
           std::make_pair(b.retired_ms == 0, b.created_ms);
  });
  return out;
}

IdpResult<KeyInfo> UserPools::rotate_key(std::string_view pool) {
  Pool* p = find(pool);
  if (p == nullptr) {
    return tl::unexpected(no_pool(pool));
  }
  const config::UserPool cfg = p->config();
  const Alg want = cfg.signing_alg == "RS256" ? Alg::kRS256 : Alg::kEdDSA;
  auto fresh = SigningKey::generate(want, core::random_hex(8));
  if (!fresh) {
    return tl::unexpected(internal(fresh.error()));
  }
  KeyInfo info{fresh->kid(), want, wall_ms(clock_), 0};
  {
    std::lock_guard write(p->write_mu);
    auto rows = store_.scan(kKeys, p->name + "/", std::numeric_limits<std::size_t>::max());
    if (!rows) {
      return tl::unexpected(internal(rows.error()));
    }
    store::Batch b;
    for (const auto& [k, v] : *rows) {
      auto key = parse_key(v);
      if (key && key->info.retired_ms == 0) {
        key->info.retired_ms = info.created_ms;
        b.emplace_back(store::Put{std::string(kKeys), k, key_json(*key)});
      }
    }
    StoredKey k{info, fresh->private_text()};
    b.emplace_back(store::Put{std::string(kKeys), p->name + "/" + k.info.kid, key_json(k)});
    b.emplace_back(store::AddCounter{std::string(kKeysVersion), 1});
    if (auto w = store_.write_sync(std::move(b)); !w) {
      return tl::unexpected(internal(w.error()));
    }
  }
  if (auto r = load_pool_keys(*p, false); !r) {
    return tl::unexpected(r.error());
  }
  return info;
}

}  // namespace gatehouse::identity
