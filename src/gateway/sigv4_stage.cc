#include "gateway/sigv4_stage.h"

#include <spdlog/spdlog.h>

#include <boost/json.hpp>

namespace gatehouse::gateway {

SigV4Stage::SigV4Stage(store::Store& store, const core::Clock& clock, unsigned workers)
    : store_(store), clock_(clock), workers_(workers) {
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
  kek_path_ = auth::kek_path(c.credentials.kek_file, c.store.state);
  account_ = c.account_id;
  // The region is fixed for the process (a restart changes it): verifiers are per worker and
  // built before the workers run.
  for (auto& w : workers_) {
    w.verifier = std::make_unique<auth::SigV4Verifier>(c.region);
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

// Poller thread or admin API (blocking pool); takes mu_.
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
  // Posted under mu_: two reloads (poller, admin API) reach the workers in version order.
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

namespace {

boost::json::object access_key_json(const auth::AccessKey& k, const std::string* secret) {
  boost::json::object o;
  o["id"] = k.id;
  o["role"] = k.role;
  o["principal"] = k.principal;
  o["revoked"] = k.revoked;
  o["created_ms"] = k.created_ms;
  if (secret != nullptr) {
    o["secret"] = *secret;  // shown once
  }
  return o;
}

}  // namespace

CredentialsAdminReply SigV4Stage::admin(const std::string& method, const std::string& sub,
                                        const std::string& body, const config::Config& config) {
  auto fail = [](const core::Error& e) {
    return CredentialsAdminReply{core::http_status(e.code), std::string(core::error_name(e.code)),
                                 e.message};
  };
  const bool create = sub == "/credentials" && method == "POST";
  std::string role;
  if (create) {
    boost::system::error_code ec;
    const auto v = boost::json::parse(body, ec);
    const auto* o = !ec && v.is_object() ? &v.get_object() : nullptr;
    const auto* r = o != nullptr ? o->if_contains("role") : nullptr;
    if (r == nullptr || !r->is_string()) {
      return {400, "BadRequest", "expected {\"role\": string}"};
    }
    role = std::string(r->get_string());
    if (config.find_role(role) == nullptr) {
      return {400, "InvalidArgument", "no role '" + role + "' in roles"};
    }
  }
  // Listing and revoking never decrypt a secret: they work before any KEK exists.
  auto kek = auth::load_kek(kek_path_, create);
  if (!kek && (create || kek.error().code != core::ErrorCode::kNotFound)) {
    return fail(kek.error());
  }
  auth::CredentialRegistry reg(store_, clock_, kek ? *kek : std::array<unsigned char, 32>{},
                               account_);
  if (sub == "/credentials" && method == "GET") {
    auto all = reg.list();
    if (!all) {
      return fail(all.error());
    }
    boost::json::array arr;
    for (const auto& k : *all) {
      arr.emplace_back(access_key_json(k, nullptr));
    }
    return {200, {}, boost::json::serialize(boost::json::object{{"credentials", arr}})};
  }
  if (create) {
    auto created = reg.create(role);
    if (!created) {
      return fail(created.error());
    }
    reload();
    return {201, {}, boost::json::serialize(access_key_json(created->record, &created->secret))};
  }
  constexpr std::string_view kPrefix = "/credentials/";
  constexpr std::string_view kRevoke = "/revoke";
  if (method == "POST" && sub.starts_with(kPrefix) && sub.ends_with(kRevoke) &&
      sub.size() > kPrefix.size() + kRevoke.size()) {
    auto r = reg.revoke(sub.substr(kPrefix.size(), sub.size() - kPrefix.size() - kRevoke.size()));
    if (!r) {
      return fail(r.error());
    }
    reload();
    return {200, {}, boost::json::serialize(access_key_json(*r, nullptr))};
  }
  return {404, "NotFound", "no such admin endpoint"};
}

Verdict SigV4Stage::refuse(core::Error&& e, PerWorker& w, Refusal& out) {
  // The message names what is wrong, never the secret or the signature.
  w.message = std::move(e.message);
  out = Refusal{core::http_status(e.code), core::error_name(e.code), w.message, {}};
  return Verdict::kRefuse;
}

Verdict SigV4Stage::authenticate(RequestContext& ctx, Refusal& out) {
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
