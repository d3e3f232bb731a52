#pragma once
// Private to the gateway: the SigV4 authenticator for routes with `auth: sigv4`.
//
// It wraps the authenticator in effect (the API-key Limiter by default): routes without
// `auth: sigv4` go to it unchanged. For a sigv4 route it verifies the signature from the
// headers before any body byte is read (auth::SigV4Verifier::begin) and, once the body is in,
// the payload (after_body): the body hash, or each aws-chunked chunk, whose decoded payload
// then replaces the body for the target. Credentials (decrypted) live in an immutable
// CredentialIndex per worker, reloaded when the store's version counter moves (polled every
// second, so `gatehouse credentials create/revoke` reach a running server within a second).

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

class SigV4Stage final : public Authenticator {
 public:
  // `next` handles every route without auth: sigv4; it must outlive this stage.
  SigV4Stage(store::Store& store, const core::Clock& clock, unsigned workers, Authenticator& next);
  ~SigV4Stage() override;
  SigV4Stage(const SigV4Stage&) = delete;
  SigV4Stage& operator=(const SigV4Stage&) = delete;

  // Control thread: loads the KEK (a missing KEK means no key was issued yet: an empty index
  // until one is) and the credentials, starts the poller. `post` runs a function on every
  // worker. Errors: kIo (KEK unreadable or too open, a record that does not decrypt).
  [[nodiscard]] core::Result<void> start(const config::Config& c,
                                         std::function<void(std::function<void(unsigned)>)> post);
  void stop();

  Verdict authenticate(RequestContext& ctx, Refusal& out) override;
  // Worker, with the complete body: payload checks for a sigv4 request (a no-op otherwise).
  Verdict after_body(http::Exchange& ex, RequestContext& ctx, Refusal& out);

 private:
  void reload();
  void run();

  store::Store& store_;
  const core::Clock& clock_;
  Authenticator& next_;
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
