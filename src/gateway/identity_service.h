#pragma once
// Private to the gateway: the identity part of the request path (docs/identity.md).
//
//   - The JWT authenticator of routes with `auth: jwt`: verifies the bearer token against the
//     route's key set on the worker (no lock, no blocking), then sets the principal and claims.
//   - The user pool endpoints under identity.path_prefix: sign-up and sign-in run argon2id on
//     a bounded hashing pool, refresh and sign-out on the blocking pool; replies are posted back
//     to the worker. The JWKS and OpenID configuration are answered on the worker.
//   - Key sets: one slot per distinct `jwks` source (and one per user pool), loaded by the
//     control thread (files, pools at start) and a refresher thread (pool key rotations seen
//     in the store, files and loopback URLs every identity.jwks_refresh, early on an unknown
//     kid). Each worker holds its own immutable table of them, replaced by posting.
//
// JWT types stay in the .cc: this header is included by gateway.cc only.

#include <functional>
#include <memory>
#include <string>

#include "config/config.h"
#include "core/core.h"
#include "gateway/gateway.h"
#include "http/http.h"
#include "store/store.h"

namespace gatehouse::gateway {

struct CompiledIdentity;  // a snapshot's JWT rules and pool slots (identity_service.cc)

// An admin API reply: status, error code when >= 400, JSON body or the error message.
struct IdentityAdminReply {
  int status = 200;
  std::string code;
  std::string body;
};

class IdentityService {
 public:
  // `store` and `clock` outlive this; `workers` is the number of worker threads.
  IdentityService(store::Store& store, const core::Clock& clock, unsigned workers);
  ~IdentityService();
  IdentityService(const IdentityService&) = delete;
  IdentityService& operator=(const IdentityService&) = delete;

  // Control thread: compiles the jwt blocks of `c` (verification policies, key set slots) and
  // loads their `file` key sets, so a missing or invalid file refuses the config. Errors:
  // kConfig, naming the file and the route's line.
  [[nodiscard]] core::Result<std::shared_ptr<const CompiledIdentity>> compile(
      const config::Config& c);
  // Control thread, once `c`'s snapshot is in force: takes its pools (creating the signing keys
  // of new pools) and publishes the key sets. Errors: kIo (the store).
  [[nodiscard]] core::Result<void> activate(const config::Config& c);
  // Control thread: starts the hashing threads and the refresher. `post` runs a function on
  // every worker.
  void start(std::function<void(std::function<void(unsigned)>)> post);
  // Stops the refresher and joins the hashing threads (work in flight finishes first).
  void stop();

  // Worker: authenticates a request on a route with auth: jwt (401 no or bad token, 403 a valid
  // token this route does not accept, 503 key set not loaded yet).
  Verdict authenticate(const CompiledIdentity& ci, RequestContext& ctx, Refusal& out);

  // Worker: whether `path` is a user pool endpoint of this snapshot.
  [[nodiscard]] static bool owns(const CompiledIdentity& ci, std::string_view path) noexcept;
  // Worker: an endpoint's headers are in. kDone (answered or refused) or kReadBody.
  http::Step on_headers(const CompiledIdentity& ci, http::Exchange& ex);
  // Worker: its body is in. kDone or kPending (the reply is posted back and resumes `ex`).
  http::Step on_request(const CompiledIdentity& ci, http::Exchange& ex);

  // Blocking pool: the admin API under /user-pools (`sub` is the path below the admin prefix).
  // GET /user-pools/P/users, POST /user-pools/P/users/U/confirm|signout, GET /user-pools/P/keys,
  // POST /user-pools/P/keys/rotate. 404 NotFound for any other path.
  IdentityAdminReply admin(const std::string& method, const std::string& sub);

  // Appends this service's metrics (Prometheus text).
  void metrics(std::string& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gatehouse::gateway
