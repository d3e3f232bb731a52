#include "gateway/sigv4_stage.h"

#include <spdlog/spdlog.h>

#include "gateway/limiter.h"

namespace gatehouse::gateway {

SigV4Stage::SigV4Stage(store::Store& store, const core::Clock& clock, unsigned workers,
                       Authenticator& next)
    : store_(store), clock_(clock), next_(next), workers_(workers) {
  auto empty = std::make_shared<const auth::CredentialIndex>();
  for (auto& w : workers_) {
    w.index = empty;
    w.verifier = std::make_unique<auth::SigV4Verifier>("us-east-1");
  }
}

SigV4Stage::~SigV4Stage() { stop(); }

core::Result<void> SigV4Stage::start(const config::Config& c,
                                     std::function<void(std::function<void(unsigned)>)> post) {
  post_ = std::move(post);
  kek_path_ = c.credentials.kek_file.empty() ? auth::default_kek_path(c.store.state)
                                             : c.credentials.kek_file;
  account_ = c.credentials.account_id;
  // The region is fixed for the process (a restart changes it): verifiers are per worker and
  // built before the workers run.
  for (auto& w : workers_) {
    w.verifier = std::make_unique<auth::SigV4Verifier>(c.credentials.region);
  }
  auto kek = auth::load_kek(kek_path_, false);
  if (!kek && kek.error().code != core::ErrorCode::kNotFound) {
    return tl::unexpected(kek.error());
  }
  if (kek) {
    std::lock_guard lock(mu_);
    registry_ = std::make_unique<auth::CredentialRegistry>(store_, clock_, *kek, account_);
    auto index = registry_->load_index();
    if (!index) {
      return tl::unexpected(index.error());
    }
    auto v = registry_->version();
    version_ = v ? *v : -1;
    auto idx = *index;
    post_([this, idx](unsigned w) { workers_[w].index = idx; });
    spdlog::info("SigV4: {} access keys loaded", idx->size());
  }
  thread_ = std::thread([this] { run(); });
  return {};
}

void SigV4Stage::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

// Poller thread (mu_ not held).
void SigV4Stage::reload() {
  std::unique_lock lock(mu_);
  if (!registry_) {
    // No KEK at start: the first `credentials create` makes one.
    auto kek = auth::load_kek(kek_path_, false);
    if (!kek) {
      if (kek.error().code != core::ErrorCode::kNotFound) {
        spdlog::error("SigV4: {}", kek.error().message);
      }
      return;
    }
    registry_ = std::make_unique<auth::CredentialRegistry>(store_, clock_, *kek, account_);
  }
  auto v = registry_->version();
  if (!v || *v == version_) {
    return;
  }
  auto index = registry_->load_index();
  if (!index) {
    spdlog::error("SigV4: cannot reload access keys: {}", index.error().message);
    return;
  }
  version_ = *v;
  lock.unlock();
  auto idx = *index;
  post_([this, idx](unsigned w) { workers_[w].index = idx; });
  spdlog::info("SigV4: {} access keys loaded", idx->size());
}

void SigV4Stage::run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; });
    if (stopping_) {
      break;
    }
    lock.unlock();
    reload();
    lock.lock();
  }
}

Verdict SigV4Stage::refuse(core::Error&& e, PerWorker& w, Refusal& out) {
  // The message names what is wrong, never the secret or the signature.
  w.message = std::move(e.message);
  out = Refusal{core::http_status(e.code), core::error_name(e.code), w.message, {}};
  return Verdict::kRefuse;
}

Verdict SigV4Stage::authenticate(RequestContext& ctx, Refusal& out) {
  if (ctx.sigv4) {
    ctx.sigv4->active = false;
  }
  const LimitTable* t = ctx.limits;
  if (t == nullptr || ctx.route_index >= t->routes.size() ||
      t->routes[ctx.route_index].auth != config::RouteAuth::kSigV4) {
    return next_.authenticate(ctx, out);
  }
  // A SigV4 caller holds no API key: the keyless limits apply, not a plan's.
  ctx.api_key = nullptr;
  ctx.key_state = nullptr;
  ctx.plan = nullptr;
  if (!ctx.sigv4) {
    ctx.sigv4 = std::make_shared<SigV4Slot>();  // once per connection
  }
  const http::Request& req = *ctx.request;
  thread_local std::vector<auth::SigV4Header> headers;
  headers.clear();
  for (const http::Header& h : req.headers) {
    headers.push_back(auth::SigV4Header{h.name, h.value});
  }
  const auth::SigV4Request sr{req.method, req.path, req.query, headers,
                              req.content_length > 0 || req.chunked};
  PerWorker& w = workers_[ctx.worker];
  auto r = w.verifier->begin(sr, *w.index, clock_.wall(), ctx.sigv4->state);
  if (!r) {
    return refuse(std::move(r.error()), w, out);
  }
  ctx.sigv4->active = true;
  ctx.principal = Principal{"role", ctx.sigv4->state.principal};
  return Verdict::kContinue;
}

Verdict SigV4Stage::after_body(http::Exchange& ex, RequestContext& ctx, Refusal& out) {
  if (!ctx.sigv4 || !ctx.sigv4->active) {
    return Verdict::kContinue;
  }
  SigV4Slot& s = *ctx.sigv4;
  PerWorker& w = workers_[ctx.worker];
  auto r = w.verifier->finish(s.state, ex.request().body, s.payload);
  if (!r) {
    return refuse(std::move(r.error()), w, out);
  }
  if (s.state.mode == auth::PayloadMode::kStreamingSigned ||
      s.state.mode == auth::PayloadMode::kStreamingUnsignedTrailer) {
    ex.replace_body(s.payload);  // the target gets the payload, not the aws-chunked framing
  }
  return Verdict::kContinue;
}

}  // namespace gatehouse::gateway
