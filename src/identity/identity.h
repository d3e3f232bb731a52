#pragma once
// gatehouse::identity — user pools: sign-up, confirmation, sign-in for JWTs (ID, access and
// refresh tokens), refresh, global sign-out, signing keys and their JWKS, and the sign-in
// throttle. docs/identity.md describes the endpoints, tokens and storage.
//
// State lives in the store (tables idp_users, idp_refresh, idp_keys; counter idp_keys_version):
//   idp_users    "<pool>/<username>"       {username, sub, hash (argon2id), confirmed, gen, ...}
//   idp_refresh  "<pool>/<username>/<id>"  {hash (SHA-256 of the secret), gen, expires_ms, ...}
//   idp_keys     "<pool>/<kid>"            {kid, alg, private, created_ms, retired_ms}
// A refresh token is "<id>.<secret>.<base64url(username)>"; only its secret's SHA-256 is stored.
// Global sign-out bumps the user's generation (refresh tokens of older generations stop
// working) and deletes the user's refresh tokens. Access and ID tokens stay valid until they
// expire (keep their lifetimes short).
//
// Everything here blocks (store I/O, argon2id): call it from a thread pool or the CLI, never from
// an I/O thread. UserPools is thread-safe.

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/core.h"
#include "identity/jwt.h"
#include "store/store.h"

namespace gatehouse::identity {

// A refusal of a user pool operation: the HTTP status and a stable wire code (static storage),
// e.g. 400 InvalidPassword, 401 NotAuthorized, 403 UserNotConfirmed, 404 UserPoolNotFound,
// 409 UsernameExists, 429 TooManyFailedAttempts (with retry_after), 500 InternalError.
struct IdpError {
  int status = 500;
  std::string_view code = "InternalError";
  std::string message;
  std::chrono::seconds retry_after{0};  // > 0: send Retry-After
};
template <class T>
using IdpResult = tl::expected<T, IdpError>;

struct TokenSet {
  std::string id_token;
  std::string access_token;
  std::string refresh_token;    // empty on refresh (the refresh token is reused)
  std::int64_t expires_in = 0;  // access token lifetime, seconds
};

struct UserRecord {
  std::string username;
  std::string sub;  // a random UUID (v4 form), the user's stable id
  bool confirmed = false;
  std::int64_t created_ms = 0;
  std::int64_t gen = 0;                                         // bumped by global sign-out
  std::vector<std::pair<std::string, std::string>> attributes;  // put in ID tokens
};

struct KeyInfo {
  std::string kid;
  Alg alg = Alg::kEdDSA;
  std::int64_t created_ms = 0;
  std::int64_t retired_ms = 0;  // 0: the active key (signs new tokens)
};

// Bounds on what clients send.
inline constexpr std::size_t kMaxUsernameBytes = 128;  // [A-Za-z0-9._@+-]
inline constexpr std::size_t kMaxPasswordBytes = 1024;
inline constexpr std::size_t kMaxAttributes = 16;  // names [A-Za-z0-9_:.-]{1,64}
inline constexpr std::size_t kMaxAttributeBytes = 1024;
inline constexpr std::size_t kMaxRefreshPerUser = 100;  // older refresh tokens are dropped

// Checks a username and a password against a pool's policy; empty when acceptable, else why not.
[[nodiscard]] std::string check_username(std::string_view username);
[[nodiscard]] std::string check_password(const config::PasswordPolicy& policy,
                                         std::string_view password);

// The ARN of a user pool's user: arn:gatehouse:cognito-idp:<region>:<account>:userpool/<pool>/
// user/<sub>.
[[nodiscard]] std::string user_arn(const config::IdentityConfig& id, std::string_view pool,
                                   std::string_view sub);

// In-memory failed sign-in counts per user and per client IP (config::SignInThrottle). Thread-
// safe. Bounded: at most kMaxEntries of each kind; past that, stale entries are dropped, and if
// none is stale new keys go untracked (the other kind still applies).
class SignInThrottleState {
 public:
  static constexpr std::size_t kMaxEntries = 100'000;

  explicit SignInThrottleState(const core::Clock& clock) : clock_(clock) {}
  // How long `user` and `ip` stay locked out (the longer of the two); 0 when free to try.
  [[nodiscard]] std::chrono::milliseconds locked_for(const std::string& user,
                                                     const std::string& ip);
  // Counts a failure for both.
  void failed(const config::SignInThrottle& cfg, const std::string& user, const std::string& ip);
  // Clears the user's count (not the IP's: a caller's own account must not reset its guesses).
  void succeeded(const std::string& user);

 private:
  struct Entry {
    std::uint32_t failures = 0;
    std::chrono::steady_clock::time_point last_failure{};
    std::chrono::steady_clock::time_point locked_until{};
  };
  using Map = std::unordered_map<std::string, Entry>;
  void count(const config::SignInThrottle& cfg, Map& m, const std::string& key,
             std::chrono::steady_clock::time_point now);

  const core::Clock& clock_;
  std::mutex mu_;
  Map users_;  // guarded by mu_
  Map ips_;    // guarded by mu_
};

// The user pools of one config. Owned by the gateway (or the CLI); thread-safe.
class UserPools {
 public:
  // `store` and `clock` must outlive this. Loads nothing yet: call load_keys(). Throws
  // std::runtime_error when libsodium cannot initialise (start-up only).
  UserPools(const config::Config& config, store::Store& store, const core::Clock& clock);
  ~UserPools();
  UserPools(const UserPools&) = delete;
  UserPools& operator=(const UserPools&) = delete;

  // Takes a reloaded config's pools (new pools get keys at the next load_keys()).
  void update(const config::Config& config);
  // Reads every pool's signing keys. With `provision` (at start-up), creates the first key of a
  // pool that has none and rotates a pool whose active key is not of its configured
  // signing_alg; without it (a reload after another process rotated), only reads.
  // Errors: kIo, kInternal (key generation).
  [[nodiscard]] core::Result<void> load_keys(bool provision = true);
  // The store's key version (bumped by every rotation, from any process): a server polls it and
  // calls load_keys() when it moves.
  [[nodiscard]] core::Result<std::int64_t> keys_version();

  // The published key set of `pool` (active key and retired keys whose tokens may still be
  // live), as a JWKS document and parsed; nullptr / "" for an unknown pool or before load_keys().
  [[nodiscard]] std::shared_ptr<const Jwks> jwks(std::string_view pool) const;
  [[nodiscard]] std::string jwks_json(std::string_view pool) const;

  [[nodiscard]] IdpResult<UserRecord> sign_up(
      std::string_view pool, std::string_view username, std::string_view password,
      std::vector<std::pair<std::string, std::string>> attributes);
  // Errors: 401 NotAuthorized (unknown user or wrong password: the two are not told apart, and
  // take the same time), 403 UserNotConfirmed, 400 InvalidClient (client_id not in the pool),
  // 429 TooManyFailedAttempts.
  [[nodiscard]] IdpResult<TokenSet> sign_in(std::string_view pool, std::string_view username,
                                            std::string_view password, std::string_view client_id,
                                            const std::string& remote_ip);
  // New ID and access tokens for a refresh token. Errors: 401 NotAuthorized (unknown, expired,
  // revoked by sign-out, or of another client when client_id is given).
  [[nodiscard]] IdpResult<TokenSet> refresh(std::string_view pool, std::string_view refresh_token,
                                            std::string_view client_id);
  // Global sign-out by the user, proven by a valid access token of this pool.
  [[nodiscard]] IdpResult<void> sign_out(std::string_view pool, std::string_view access_token);

  // Admin operations. 404 UserNotFound / UserPoolNotFound.
  [[nodiscard]] IdpResult<UserRecord> admin_confirm(std::string_view pool,
                                                    std::string_view username);
  [[nodiscard]] IdpResult<UserRecord> admin_sign_out(std::string_view pool,
                                                     std::string_view username);
  [[nodiscard]] IdpResult<std::vector<UserRecord>> list_users(std::string_view pool);
  // Makes a new key (of the pool's signing_alg) the active one; the old one is retired but
  // stays published until every token it signed has expired. Returns the new key.
  [[nodiscard]] IdpResult<KeyInfo> rotate_key(std::string_view pool);
  [[nodiscard]] IdpResult<std::vector<KeyInfo>> list_keys(std::string_view pool);

 private:
  struct Pool;
  // The configured pool called `name`, or nullptr. Pool objects live as long as this object
  // (a pool removed by a reload is only marked), so the pointer stays valid.
  Pool* find(std::string_view name) const;
  IdpResult<void> load_pool_keys(Pool& p, bool provision);
  IdpResult<TokenSet> issue(Pool& p, const UserRecord& u, std::string_view client_id,
                            std::int64_t auth_time, bool with_refresh);
  IdpResult<UserRecord> end_sessions(Pool& p, const UserRecord& u);

  const core::Clock& clock_;
  store::Store& store_;
  config::IdentityConfig identity_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Pool>> pools_;  // guarded by mu_ (the Pool objects themselves
                                              // have their own mutex for keys)
  SignInThrottleState throttle_;
};

}  // namespace gatehouse::identity
