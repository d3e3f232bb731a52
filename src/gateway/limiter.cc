#include "gateway/limiter.h"

#include <spdlog/spdlog.h>
#include <strings.h>

#include <algorithm>
#include <cmath>

#include "policy/policy.h"

namespace gatehouse::gateway {

namespace {

constexpr std::string_view kQuotaTable = "quota";

limits::Nanos steady_ns(const core::Clock& c) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(c.now().time_since_epoch()).count();
}
limits::Nanos wall_ns(const core::Clock& c) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(c.wall().time_since_epoch()).count();
}

core::Result<limits::RateLimit> rate_of(const config::RateConfig& r) {
  return limits::make_rate(r.rate, r.burst);
}

limits::Period period_of(const std::string& p) {
  if (p == "WEEK") {
    return limits::Period::kWeek;
  }
  if (p == "MONTH") {
    return limits::Period::kMonth;
  }
  return limits::Period::kDay;
}

std::uint64_t ceil_seconds(limits::Nanos ns) {
  if (ns <= 0) {
    return 0;
  }
  return static_cast<std::uint64_t>((ns + 999'999'999) / 1'000'000'000);
}

std::size_t hash_ip(std::string_view ip) {
  // FNV-1a: the table index need not be secret (a collision only makes two IPs share a cell).
  std::uint64_t h = 1469598103934665603ULL;
  for (char c : ip) {
    h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  }
  return static_cast<std::size_t>(h ^ (h >> 29));
}

}  // namespace

Limiter::Limiter(store::Store& store, const core::Clock& clock, unsigned workers)
    : store_(store),
      clock_(clock),
      real_clock_(&clock == &core::system_clock()),
      registry_(store, clock),
      client_cells_(std::make_unique<std::array<limits::RateCell, 65536>>()),
      keys_(workers) {
  auto empty = std::make_shared<const KeyTable>();
  for (auto& k : keys_) {
    k.table = empty;
  }
}

Limiter::~Limiter() { stop(); }

limits::RateCell* Limiter::cell(
    std::unordered_map<std::string, std::unique_ptr<limits::RateCell>>& m,
    const std::string& name) {
  auto& p = m[name];
  if (!p) {
    p = std::make_unique<limits::RateCell>();
  }
  return p.get();
}

limits::Gate* Limiter::gate(std::unordered_map<std::string, std::unique_ptr<limits::Gate>>& m,
                            const std::string& name) {
  auto& p = m[name];
  if (!p) {
    p = std::make_unique<limits::Gate>();
  }
  return p.get();
}

core::Result<std::shared_ptr<const LimitTable>> Limiter::compile(const config::Config& c) {
  std::lock_guard lock(mu_);
  auto t = std::make_shared<LimitTable>();
  auto rate_layer = [&](const config::RateConfig& rc, limits::RateCell* cell_ptr,
                        RateLayer& out) -> core::Result<void> {
    if (!rc.set) {
      return {};
    }
    auto r = rate_of(rc);
    if (!r) {
      return tl::unexpected(r.error());
    }
    out.limit = *r;
    out.cell = cell_ptr;
    return {};
  };
  if (auto r = rate_layer(c.throttling.account, cell(account_cells_, "account"), t->account); !r) {
    return tl::unexpected(r.error());
  }
  if (c.throttling.concurrency > 0) {
    t->account_gate = GateLayer{gate(account_gates_, "account"), c.throttling.concurrency};
  }
  if (c.throttling.client_ip.set) {
    auto r = rate_of(c.throttling.client_ip);
    if (!r) {
      return tl::unexpected(r.error());
    }
    t->has_client = true;
    t->client = *r;
  }
  for (const auto& s : c.stages) {
    RateLayer l;
    if (auto r = rate_layer(s.throttle, cell(stage_cells_, s.name), l); !r) {
      return tl::unexpected(r.error());
    }
    t->stages.emplace_back(s.name, l);
  }
  std::unordered_map<std::string, std::size_t> route_index;
  for (std::size_t i = 0; i < c.routes.size(); ++i) {
    const auto& rt = c.routes[i];
    route_index[rt.name] = i;
    LimitTable::Route lr;
    lr.api_key = rt.api_key;
    if (auto r = rate_layer(rt.throttle, cell(route_cells_, rt.name), lr.route); !r) {
      return tl::unexpected(r.error());
    }
    if (rt.concurrency > 0) {
      lr.route_gate = GateLayer{gate(route_gates_, rt.name), rt.concurrency};
    }
    if (!rt.target.function.empty()) {
      if (const auto* fn = c.find_function(rt.target.function)) {
        if (auto r = rate_layer(fn->throttle, cell(function_cells_, fn->name), lr.function); !r) {
          return tl::unexpected(r.error());
        }
        if (fn->concurrency > 0) {
          lr.function_gate = GateLayer{gate(function_gates_, fn->name), fn->concurrency};
        }
      }
    }
    t->routes.push_back(lr);
  }
  for (const auto& p : c.plans) {
    CompiledPlan cp;
    cp.name = p.name;
    if (p.throttle.set) {
      auto r = rate_of(p.throttle);
      if (!r) {
        return tl::unexpected(r.error());
      }
      cp.has_throttle = true;
      cp.throttle = *r;
    }
    if (p.quota.set) {
      auto q = limits::make_quota(p.quota.limit, period_of(p.quota.period), p.quota.offset);
      if (!q) {
        return tl::unexpected(q.error());
      }
      cp.has_quota = true;
      cp.quota = *q;
    }
    cp.stages = p.stages;
    if (!p.routes.empty()) {
      cp.route_allowed.assign(c.routes.size(), false);
      for (const auto& name : p.routes) {
        if (auto it = route_index.find(name); it != route_index.end()) {
          cp.route_allowed[it->second] = true;
        }
      }
    }
    if (p.overrides.size() > kMaxOverridesPerPlan) {
      return core::make_error(
          core::ErrorCode::kConfig,
          "plan '" + p.name + "': at most " + std::to_string(kMaxOverridesPerPlan) + " overrides");
    }
    cp.override_slot.assign(c.routes.size(), -1);
    for (const auto& o : p.overrides) {
      auto it = route_index.find(o.route);
      auto r = rate_of(o.throttle);
      if (it == route_index.end() || !r) {
        continue;  // refused by config validation already
      }
      cp.override_slot[it->second] = static_cast<int>(cp.overrides.size());
      cp.overrides.push_back(*r);
    }
    t->plans.emplace(p.name, std::move(cp));
  }
  for (const auto& [name, cp] : t->plans) {
    const std::uint32_t id = plan_id(name);
    if (id >= t->plan_by_id.size()) {
      t->plan_by_id.resize(id + 1, nullptr);
    }
    t->plan_by_id[id] = &cp;
  }
  t->key_header = c.api_keys.header;
  t->key_arn_prefix = policy::api_key_arn(c.account_id, "");
  return std::shared_ptr<const LimitTable>(t);
}

void Limiter::activate(std::shared_ptr<const LimitTable> table) {
  std::lock_guard lock(mu_);
  table_ = std::move(table);
  quota_keys_stale_ = true;
}

KeyState* Limiter::key_state(const std::string& id) {
  auto& p = key_states_[id];
  if (!p) {
    p = std::make_unique<KeyState>();
  }
  return p.get();
}

std::uint32_t Limiter::plan_id(const std::string& name) {
  const auto [it, added] =
      plan_ids_.try_emplace(name, static_cast<std::uint32_t>(plan_ids_.size()));
  return it->second;
}

core::Result<std::shared_ptr<const KeyTable>> Limiter::load_keys() {
  auto version = registry_.version();
  if (!version) {
    return tl::unexpected(version.error());
  }
  auto all = registry_.list();
  if (!all) {
    return tl::unexpected(all.error());
  }
  auto quotas = store_.scan(kQuotaTable, "", std::numeric_limits<std::size_t>::max());
  std::unordered_map<std::string_view, std::string_view> persisted;  // key id -> "start:used"
  if (quotas) {
    for (const auto& [id, value] : *quotas) {
      persisted.emplace(id, value);
    }
  }
  auto table = std::make_shared<KeyTable>();
  std::lock_guard lock(mu_);
  const limits::Nanos now = wall_ns(clock_);
  for (auto& k : *all) {
    const bool fresh = key_states_.find(k.id) == key_states_.end();
    KeyState* st = key_state(k.id);
    if (!fresh && st->plan_name != k.plan) {
      // Attached to another plan: its rate cells start full under the new limits (a TAT means
      // nothing under another rate). The quota count stays: what was used this period was used.
      st->plan.tat.store(0, std::memory_order_relaxed);
      for (auto& o : st->overrides) {
        o.tat.store(0, std::memory_order_relaxed);
      }
    }
    st->plan_name = k.plan;
    if (fresh && table_) {
      // Restore the persisted count of the current period (an older period is ignored).
      const auto q = persisted.find(k.id);
      const auto plan = table_->plans.find(k.plan);
      if (q != persisted.end() && plan != table_->plans.end() && plan->second.has_quota) {
        const std::string_view value = q->second;
        const auto colon = value.find(':');
        if (colon != std::string_view::npos) {
          limits::QuotaSnapshot s{std::stoll(std::string(value.substr(0, colon))),
                                  std::stoull(std::string(value.substr(colon + 1)))};
          limits::quota_restore(plan->second.quota, st->quota, s, now);
          st->flushed = s;
        }
      }
    }
    const std::uint32_t tag = plan_id(k.plan) | (k.stages.empty() ? 0 : kKeyHasStages);
    table->add(std::move(k), st, tag);
  }
  keys_version_ = *version;
  quota_keys_stale_ = true;
  return std::shared_ptr<const KeyTable>(table);
}

core::Result<void> Limiter::start(std::chrono::milliseconds flush_interval,
                                  std::function<void(std::function<void(unsigned)>)> post) {
  flush_interval_ = flush_interval;
  post_ = std::move(post);
  auto keys = load_keys();
  if (!keys) {
    return tl::unexpected(keys.error());
  }
  auto k = *keys;
  post_([this, k](unsigned w) { set_keys(w, k); });
  thread_ = std::thread([this] { run(); });
  return {};
}

void Limiter::reload_keys() {
  auto keys = load_keys();
  if (!keys) {
    spdlog::error("API keys: cannot reload: {}", keys.error().message);
    return;
  }
  auto k = *keys;
  post_([this, k](unsigned w) { set_keys(w, k); });
  spdlog::info("API keys: {} loaded", k->size());
}

void Limiter::run() {
  auto next_poll = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, flush_interval_, [this] { return stopping_; });
    if (stopping_) {
      break;
    }
    lock.unlock();
    flush_quotas();
    if (std::chrono::steady_clock::now() >= next_poll) {
      // Keys changed by the CLI or the admin API show up within a second.
      next_poll = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      auto v = registry_.version();
      std::int64_t known;
      {
        std::lock_guard g(mu_);
        known = keys_version_;
      }
      if (v && *v != known) {
        reload_keys();
      }
    }
    lock.lock();
  }
}

void Limiter::flush_quotas() {
  store::Batch batch;
  {
    std::lock_guard lock(mu_);
    if (!table_) {
      return;
    }
    const limits::Nanos now = wall_ns(clock_);
    if (quota_keys_stale_) {
      // Each key's quota is counted against its plan in the latest table; keys on plans without
      // a quota are left out, so a flush costs nothing for them.
      quota_keys_.clear();
      for (auto& [id, st] : key_states_) {
        const auto plan = table_->plans.find(st->plan_name);
        if (plan != table_->plans.end() && plan->second.has_quota) {
          quota_keys_.push_back(QuotaKey{&id, st.get(), &plan->second.quota});
        }
      }
      quota_keys_stale_ = false;
    }
    for (const QuotaKey& q : quota_keys_) {
      KeyState& st = *q.state;
      const auto snap = limits::quota_snapshot(*q.limit, st.quota, now);
      if (snap.used == st.flushed.used && snap.period_start == st.flushed.period_start) {
        continue;
      }
      batch.emplace_back(
          store::Put{std::string(kQuotaTable), *q.id,
                     std::to_string(snap.period_start) + ":" + std::to_string(snap.used)});
      st.flushed = snap;
    }
  }
  if (!batch.empty()) {
    auto r = store_.write_sync(std::move(batch));
    if (!r) {
      spdlog::error("quota flush failed: {}", r.error().message);
    }
  }
}

void Limiter::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) {
      return;
    }
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
    flush_quotas();  // a graceful stop loses no count
  }
}

Verdict Limiter::authenticate(RequestContext& ctx, Refusal& out) {
  const LimitTable* t = ctx.limits;
  ctx.api_key = nullptr;
  ctx.key_state = nullptr;
  ctx.plan = nullptr;
  if (t == nullptr || ctx.route_index >= t->routes.size()) {
    return Verdict::kContinue;
  }
  const auto mode = t->routes[ctx.route_index].api_key;
  if (mode == config::ApiKeyMode::kNone) {
    return Verdict::kContinue;
  }
  const std::string_view presented = ctx.request->header(t->key_header);
  if (presented.empty()) {
    if (mode == config::ApiKeyMode::kRequired) {
      out = Refusal{403, "ApiKeyMissing", "this route requires an API key", {}};
      return Verdict::kRefuse;
    }
    return Verdict::kContinue;
  }
  const KeyTable* keys = keys_[ctx.worker].table.get();
  const KeyTable::Match m = keys != nullptr ? keys->verify(presented) : KeyTable::Match{};
  if (!m) {
    out = Refusal{403, "ApiKeyInvalid", "unknown or revoked API key", {}};
    return Verdict::kRefuse;
  }
  // Everything below comes from the key's slot and the table: the key's record is read only for
  // a key restricted to stages of its own.
  const std::uint32_t plan_id = m.tag & ~kKeyHasStages;
  const CompiledPlan* p = plan_id < t->plan_by_id.size() ? t->plan_by_id[plan_id] : nullptr;
  if (p == nullptr) {
    out = Refusal{403, "ApiKeyNotAuthorized", "the key's usage plan does not exist", {}};
    return Verdict::kRefuse;
  }
  __builtin_prefetch(m.state);  // the rate and quota cells admit() reads next
  const std::string_view stage = ctx.match.stage;
  auto stage_ok = [&](const std::vector<std::string>& stages) {
    return stages.empty() || stage.empty() ||
           std::find(stages.begin(), stages.end(), stage) != stages.end();
  };
  if (!stage_ok(p->stages) || ((m.tag & kKeyHasStages) != 0 && !stage_ok(m.entry->key.stages)) ||
      (!p->route_allowed.empty() && !p->route_allowed[ctx.route_index])) {
    out =
        Refusal{403, "ApiKeyNotAuthorized", "the key's usage plan does not include this route", {}};
    return Verdict::kRefuse;
  }
  ctx.api_key = &m.entry->key;
  ctx.key_state = m.state;
  ctx.plan = p;
  // The key's principal is named by its id, which is unique and never reused; its name is only
  // a label (aws:username) that another key may share.
  char id[16];
  auth::format_hex_id(m.id, id);
  ctx.principal_arn.assign(t->key_arn_prefix);
  ctx.principal_arn.append(id, sizeof id);
  ctx.principal = Principal{"api_key", ctx.principal_arn};
  return Verdict::kContinue;
}

Verdict Limiter::admit(RequestContext& ctx, Refusal& out) {
  ctx.gate_count = 0;
  const LimitTable* t = ctx.limits;
  if (t == nullptr || ctx.route_index >= t->routes.size()) {
    return Verdict::kContinue;
  }
  const LimitTable::Route& r = t->routes[ctx.route_index];
  std::array<limits::Layer, 12> layers{};
  std::size_t n = 0;
  auto add_rate = [&](limits::LayerKind kind, const RateLayer& l) {
    if (l.cell != nullptr) {
      layers[n++] = limits::Layer{kind, &l.limit, l.cell, nullptr, nullptr, nullptr, 0};
    }
  };
  add_rate(limits::LayerKind::kAccount, t->account);
  if (!ctx.match.stage.empty()) {
    for (const auto& [name, l] : t->stages) {
      if (name == ctx.match.stage) {
        add_rate(limits::LayerKind::kStage, l);
        break;
      }
    }
  }
  add_rate(limits::LayerKind::kRoute, r.route);
  add_rate(limits::LayerKind::kFunction, r.function);
  const CompiledPlan* plan = ctx.key_state != nullptr ? ctx.plan : nullptr;
  if (plan != nullptr) {
    if (plan->has_throttle) {
      layers[n++] = limits::Layer{limits::LayerKind::kKey,
                                  &plan->throttle,
                                  &ctx.key_state->plan,
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  0};
    }
    const int slot = plan->override_slot.empty() ? -1 : plan->override_slot[ctx.route_index];
    if (slot >= 0) {
      layers[n++] = limits::Layer{limits::LayerKind::kKeyRoute,
                                  &plan->overrides[static_cast<std::size_t>(slot)],
                                  &ctx.key_state->overrides[static_cast<std::size_t>(slot)],
                                  nullptr,
                                  nullptr,
                                  nullptr,
                                  0};
    }
  } else if (t->has_client) {
    auto& c = (*client_cells_)[hash_ip(ctx.remote_ip) & (client_cells_->size() - 1)];
    layers[n++] =
        limits::Layer{limits::LayerKind::kClient, &t->client, &c, nullptr, nullptr, nullptr, 0};
  }
  const bool quota = plan != nullptr && plan->has_quota;
  if (quota) {
    layers[n++] = limits::Layer{limits::LayerKind::kQuota, nullptr, nullptr, &plan->quota,
                                &ctx.key_state->quota,     nullptr, 0};
  }
  const std::size_t first_gate = n;
  for (const GateLayer* g : {&t->account_gate, &r.route_gate, &r.function_gate}) {
    if (g->gate != nullptr) {
      layers[n++] = limits::Layer{
          limits::LayerKind::kConcurrency, nullptr, nullptr, nullptr, nullptr, g->gate, g->max};
    }
  }
  if (n == 0) {
    return Verdict::kContinue;
  }
  // Clock reads cost tens of ns each: the request's start time stands for now when the real
  // clock drives the limiter, and wall time is read only for a quota.
  const limits::Nanos steady =
      real_clock_ && ctx.now != std::chrono::steady_clock::time_point{}
          ? std::chrono::duration_cast<std::chrono::nanoseconds>(ctx.now.time_since_epoch()).count()
          : steady_ns(clock_);
  const limits::Admission a = limits::admit(std::span<const limits::Layer>(layers.data(), n),
                                            steady, quota ? wall_ns(clock_) : 0);
  if (a.allowed) {
    for (std::size_t i = first_gate; i < n; ++i) {
      ctx.gates[ctx.gate_count++] = layers[i].gate;
    }
    return Verdict::kContinue;
  }
  // Retry-After and the IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers-07) for
  // the tightest layer, formatted into a per-thread buffer: refusals allocate nothing once warm.
  thread_local std::string headers;
  headers.clear();
  char num[20];
  const std::uint64_t retry = std::max<std::uint64_t>(1, ceil_seconds(a.retry_after));
  headers.append("Retry-After: ");
  headers.append(num, core::format_uint(num, retry));
  headers.append("\r\n");
  if (a.has_tightest) {
    // The policy's window: how long the layer takes to grant `limit` requests from empty.
    limits::Nanos window = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (layers[i].kind != a.tightest) {
        continue;
      }
      if (layers[i].rate != nullptr) {
        window = layers[i].rate->interval * static_cast<limits::Nanos>(layers[i].rate->burst);
      } else if (layers[i].quota != nullptr) {
        const auto b = limits::period_at(*layers[i].quota, wall_ns(clock_));
        window = b.end - b.start;
      }
      break;
    }
    headers.append("RateLimit-Policy: ");
    headers.append(num, core::format_uint(num, a.limit));
    headers.append(";w=");
    headers.append(num, core::format_uint(num, std::max<std::uint64_t>(1, ceil_seconds(window))));
    headers.append("\r\nRateLimit: limit=");
    headers.append(num, core::format_uint(num, a.limit));
    headers.append(", remaining=");
    headers.append(num, core::format_uint(num, a.remaining));
    headers.append(", reset=");
    headers.append(num, core::format_uint(num, ceil_seconds(a.reset)));
    headers.append("\r\n");
  }
  const std::string_view code = limits::refusal_code(a.refused_by);
  std::string_view message = "rate limit exceeded";
  if (a.refused_by == limits::LayerKind::kQuota) {
    message = "usage plan quota exhausted for this period";
  } else if (a.refused_by == limits::LayerKind::kConcurrency) {
    message = "too many requests in flight";
  }
  out = Refusal{429, code, message, headers};
  return Verdict::kRefuse;
}

void Limiter::release(RequestContext& ctx) {
  for (std::uint8_t i = 0; i < ctx.gate_count; ++i) {
    ctx.gates[i]->leave();
  }
  ctx.gate_count = 0;
}

}  // namespace gatehouse::gateway
