#pragma once
// Private to the gateway: API-key authentication and the layered throttle (account, stage, route,
// function, key plan, key x route, client IP, quota, concurrency), built on gatehouse::limits.
//
// Limiter cells (GCRA TATs, quota counts, gates) live in objects owned by the Limiter and keyed
// by name, so they survive config reloads; a compiled LimitTable (per config snapshot) and a
// KeyTable (per key-set version) only point at them. Workers read both without locks.

#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "auth/auth.h"
#include "config/config.h"
#include "gateway/gateway.h"
#include "limits/limits.h"
#include "store/store.h"

namespace gatehouse::gateway {

constexpr std::size_t kMaxOverridesPerPlan = 64;

// Per API key, for as long as the process runs.
struct KeyState {
  limits::RateCell plan;
  limits::QuotaCell quota;
  std::array<limits::RateCell, kMaxOverridesPerPlan> overrides;
  // Under Limiter::mu_ (control and flusher threads): the key's plan and what was last written
  // to the store.
  std::string plan_name;
  limits::QuotaSnapshot flushed;
};

struct RateLayer {
  limits::RateLimit limit;
  limits::RateCell* cell = nullptr;  // nullptr: not limited
};

struct GateLayer {
  limits::Gate* gate = nullptr;  // nullptr: unlimited
  std::uint32_t max = 0;
};

struct CompiledPlan {
  std::string name;
  bool has_throttle = false;
  limits::RateLimit throttle;
  bool has_quota = false;
  limits::QuotaLimit quota;
  std::vector<std::string> stages;           // empty = all
  std::vector<bool> route_allowed;           // by route index; empty = all
  std::vector<int> override_slot;            // by route index: -1 or the override's slot
  std::vector<limits::RateLimit> overrides;  // by slot
};

// Compiled from one Config; shared by the Snapshot of that config.
struct LimitTable {
  RateLayer account;
  GateLayer account_gate;
  bool has_client = false;
  limits::RateLimit client;
  std::vector<std::pair<std::string, RateLayer>> stages;  // by stage name
  struct Route {
    config::ApiKeyMode api_key = config::ApiKeyMode::kNone;
    RateLayer route;
    GateLayer route_gate;
    RateLayer function;
    GateLayer function_gate;
  };
  std::vector<Route> routes;  // by route index
  std::map<std::string, CompiledPlan, std::less<>> plans;
  // The same plans by plan id (Limiter::plan_id; nullptr: no such plan in this config). A key
  // carries its plan's id in its KeyTable slot, so the hot path finds the plan without reading
  // the key's record.
  std::vector<const CompiledPlan*> plan_by_id;
  std::string key_header;
  std::string key_arn_prefix;  // arn:gatehouse:iam::<account>:apikey/ (the key id follows)
};

using KeyTable = auth::KeyIndex<KeyState>;
// A KeyTable slot's tag: the key's plan id, and whether the key names stages of its own.
constexpr std::uint32_t kKeyHasStages = 1u << 31;

class Limiter final : public Authenticator, public Throttle {
 public:
  // `install` posts a new key table to every worker (set_keys on each).
  Limiter(store::Store& store, const core::Clock& clock, unsigned workers);
  ~Limiter() override;
  Limiter(const Limiter&) = delete;
  Limiter& operator=(const Limiter&) = delete;

  // Control thread. Errors: kConfig (too many overrides in a plan).
  [[nodiscard]] core::Result<std::shared_ptr<const LimitTable>> compile(const config::Config& c);
  // Control thread: the table of the config now in force (quota flushes and restores use its
  // plans). Called once its snapshot is installed, so a refused reload changes nothing.
  void activate(std::shared_ptr<const LimitTable> table);
  // Control thread: loads keys and quota counters, starts the flusher/poller thread.
  // `post` runs a function on every worker.
  [[nodiscard]] core::Result<void> start(std::chrono::milliseconds flush_interval,
                                         std::function<void(std::function<void(unsigned)>)> post);
  // Flushes quota counters and stops the thread (graceful stop loses nothing).
  void stop();
  // Worker w.
  void set_keys(unsigned w, std::shared_ptr<const KeyTable> keys) {
    keys_[w].table = std::move(keys);
  }
  // Control thread: re-reads the keys now (after an admin change).
  void reload_keys();

  Verdict authenticate(RequestContext& ctx, Refusal& out) override;
  Verdict admit(RequestContext& ctx, Refusal& out) override;
  void release(RequestContext& ctx) override;

 private:
  limits::RateCell* cell(std::unordered_map<std::string, std::unique_ptr<limits::RateCell>>& m,
                         const std::string& name);
  limits::Gate* gate(std::unordered_map<std::string, std::unique_ptr<limits::Gate>>& m,
                     const std::string& name);
  KeyState* key_state(const std::string& id);  // mu_ held
  // A small number for a plan name, the same for as long as the process runs (mu_ held).
  std::uint32_t plan_id(const std::string& name);
  core::Result<std::shared_ptr<const KeyTable>> load_keys();
  void flush_quotas();
  void run();

  store::Store& store_;
  const core::Clock& clock_;
  const bool real_clock_;  // clock_ is core::system_clock(): RequestContext::now may stand in
  auth::KeyRegistry registry_;

  std::mutex mu_;  // guards the maps below and the thread state (control/flusher threads only)
  std::unordered_map<std::string, std::unique_ptr<limits::RateCell>> stage_cells_, route_cells_,
      function_cells_, account_cells_;
  std::unordered_map<std::string, std::unique_ptr<limits::Gate>> route_gates_, function_gates_,
      account_gates_;
  std::unordered_map<std::string, std::unique_ptr<KeyState>> key_states_;
  std::unordered_map<std::string, std::uint32_t> plan_ids_;
  std::shared_ptr<const LimitTable> table_;  // latest compiled, for quota limits when flushing
  // The keys flush_quotas() writes: those whose plan in table_ has a quota. Rebuilt on the next
  // flush after the table or the keys change.
  struct QuotaKey {
    const std::string* id;
    KeyState* state;
    const limits::QuotaLimit* limit;
  };
  std::vector<QuotaKey> quota_keys_;
  bool quota_keys_stale_ = true;
  std::int64_t keys_version_ = -1;
  bool stopping_ = false;
  std::condition_variable cv_;
  std::thread thread_;
  std::chrono::milliseconds flush_interval_{1000};
  std::function<void(std::function<void(unsigned)>)> post_;

  // Client-IP cells: a fixed hashed table (IPs that collide share a cell: conservative).
  std::unique_ptr<std::array<limits::RateCell, 65536>> client_cells_;

  struct alignas(64) PerWorker {
    std::shared_ptr<const KeyTable> table;
  };
  std::vector<PerWorker> keys_;
};

}  // namespace gatehouse::gateway
