#pragma once
// Private to the gateway: the SigV4 authenticator for routes with `auth: sigv4`.
//
// The gateway's RouteAuthenticator sends sigv4 routes here (and only those: other routes never
// touch this stage). It verifies the signature from the headers before any body byte is read
// (auth::SigV4Verifier::begin) and sets the caller to the access key's role
// (kind "role", id arn:gatehouse:iam::<account_id>:role/<name>), so the authorize stage applies
// that role's identity policies and route policies can name it. Once the body is in, it checks
// the payload (after_body): the body hash, or each aws-chunked chunk, whose decoded payload then
// replaces the body for the target. Credentials (decrypted) live in an immutable
// CredentialIndex per worker, reloaded when the store's version counter moves (polled every
// second, so `gatehouse credentials create/revoke` reach a running server within a second).
//
// Thread safety: authenticate() and after_body() run on worker w and touch only worker w's
// state; start(), stop() and the poller thread touch the members guarded by mu_.

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "auth/auth.h"
#include "config/config.h"
#include "gateway/gateway.h"
#include "http/http.h"
#include "store/store.h"

namespace gatehouse::gateway {

// Per connection (RequestContext::sigv4), reused across its requests.
struct SigV4Slot {
  bool active = false;  // this request is on a sigv4 route and passed begin()
  auth::SigV4State state;
  std::string payload;  // decoded aws-chunked payload
};

// An admin API answer: status, error code (status >= 400) and the JSON body or error message.
struct CredentialsAdminReply {
  int status = 200;
  std::string code;
  std::string body;
};

class SigV4Stage {
 public:
  // `store` and `clock` must outlive the stage.
  SigV4Stage(store::Store& store, const core::Clock& clock, unsigned workers);
  ~SigV4Stage();
  SigV4Stage(const SigV4Stage&) = delete;
  SigV4Stage& operator=(const SigV4Stage&) = delete;

  // Control thread: loads the KEK (a missing KEK means no key was issued yet: an empty index
  // until one is) and the credentials, starts the poller. `post` runs a function on every
  // worker. The account (of the role ARNs) and the region (signatures must be scoped to it) are
  // c.account_id and c.region, fixed until a restart. Errors: kIo (KEK unreadable or too open,
  // a record that does not decrypt).
  [[nodiscard]] core::Result<void> start(const config::Config& c,
                                         std::function<void(std::function<void(unsigned)>)> post);
  void stop();
  // The KEK file in use (credentials.kek_file or its default); set by start().
  [[nodiscard]] const std::string& kek_path() const noexcept { return kek_path_; }
  [[nodiscard]] const std::string& account() const noexcept { return account_; }

  // The admin API for access keys (blocking pool only: store I/O, KEK file):
  //   GET  /credentials                 {"credentials": [record...]} (never a secret)
  //   POST /credentials {"role": NAME}  201 record + "secret" (shown once); NAME must be a role
  //                                     of `config` (400 InvalidArgument otherwise)
  //   POST /credentials/{id}/revoke     200 record (404 NotFound for an unknown id)
  // A record is {"id","role","principal","revoked","created_ms"}. A create or revoke reaches the
  // workers before the reply (no wait for the poller).
  [[nodiscard]] CredentialsAdminReply admin(const std::string& method, const std::string& sub,
                                            const std::string& body, const config::Config& config);

  // Worker, before the body: verifies the request of a sigv4 route (ctx.route) and sets
  // ctx.principal. Refusals carry AWS's codes (SignatureDoesNotMatch, InvalidAccessKeyId,
  // RequestTimeTooSkewed ... with 403 or 400).
  Verdict authenticate(RequestContext& ctx, Refusal& out);
  // Worker, with the complete body: payload checks for a sigv4 request (a no-op otherwise).
  Verdict after_body(http::Exchange& ex, RequestContext& ctx, Refusal& out);

 private:
  void reload();
  void run();

  store::Store& store_;
  const core::Clock& clock_;
  std::string kek_path_;
  std::string account_;

  std::mutex mu_;  // guards the members below (control and poller threads)
  std::unique_ptr<auth::CredentialRegistry> registry_;
  std::int64_t version_ = -1;
  bool stopping_ = false;
  std::condition_variable cv_;
  std::thread thread_;
  std::function<void(std::function<void(unsigned)>)> post_;

  struct alignas(64) PerWorker {
    std::shared_ptr<const auth::CredentialIndex> index;
    std::unique_ptr<auth::SigV4Verifier> verifier;
    std::string message;  // the last refusal's message (Refusal views it)
  };
  std::vector<PerWorker> workers_;

  static Verdict refuse(core::Error&& e, PerWorker& w, Refusal& out);
};

}  // namespace gatehouse::gateway
