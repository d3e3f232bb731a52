#pragma once
// gatehouse::limits — the arithmetic of throttling: GCRA rate cells, quota periods and counters,
// concurrency gates, and an all-or-nothing admission over several layers.
//
// Everything here is lock-free and allocation-free on the decision path: a rate cell is one
// atomic theoretical-arrival time (TAT) updated by compare-and-swap, a quota cell one atomic
// count, a gate one atomic in-flight count. Time is passed in explicitly (nanoseconds of the
// injected core::Clock's steady time, or wall time for quota periods), so tests drive it.
// Steady times must lie in [0, 2^62): a steady clock counts from boot, and the bound keeps
// TAT + interval from overflowing.
//
// Who owns what: cells are owned by whoever keeps the limiter state (the gateway keeps them in
// objects that survive config reloads); a Layer only borrows pointers to them for one decision.

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "core/core.h"

namespace gatehouse::limits {

using Nanos = std::int64_t;  // nanoseconds on the steady clock (for rates) or since the epoch
                             // (for quota periods)

// ---------------------------------------------------------------------------------------------
// Rates: GCRA (generic cell rate algorithm).
//
// A limit of `rate` requests per second with `burst` allows, from an idle cell, `burst` requests
// at once, then one every 1/rate seconds: exactly a token bucket of capacity `burst` refilled at
// `rate` tokens per second (the equivalence is tested against a reference bucket).
// emission interval T = 1e9 / rate ns; tolerance tau = (burst - 1) * T.
// A request at time t is allowed iff t >= TAT - tau; then TAT = max(TAT, t) + T. A fresh cell
// (TAT 0) is idle. At the exact boundary t == TAT - tau the request is allowed, as a bucket
// holding exactly one token allows it.

struct RateLimit {
  double rate = 0;          // requests per second, > 0
  std::uint32_t burst = 1;  // >= 1
  // Derived (make_rate fills them):
  Nanos interval = 0;   // T
  Nanos tolerance = 0;  // tau
};

// The longest burst * T accepted (~146 years): keeps the TAT arithmetic far from overflow.
inline constexpr Nanos kMaxRateWindow = Nanos{1} << 62;

// Validates and derives: T = 1e9 / rate rounded to the nearest ns (so a rate whose interval is
// not a whole number of ns is approximated), tau = (burst - 1) * T. Errors (kInvalidArgument):
// rate <= 0 or not finite, rate > 1e9, burst 0, or burst * T above kMaxRateWindow.
[[nodiscard]] core::Result<RateLimit> make_rate(double rate, std::uint32_t burst);

// One rate-limited thing (a key, a route, a function...). 8 bytes of state; thread-safe.
class RateCell {
 public:
  RateCell() = default;
  RateCell(const RateCell&) = delete;
  RateCell& operator=(const RateCell&) = delete;

  std::atomic<Nanos> tat{0};
};

// What a rate check says, for responses (Retry-After, RateLimit headers).
struct RateState {
  bool allowed = false;
  Nanos retry_after = 0;        // when refused: how long until one request would be allowed (> 0);
                                // 0 when allowed
  std::uint32_t remaining = 0;  // requests that would still be allowed right now after this one
                                // (0..burst-1; 0 when refused)
  Nanos reset = 0;  // time until the cell is back to full burst (after this request when
                    // allowed, as it stands when refused)
};

// `limit` must come from make_rate (a zero interval is treated as 1 ns).
// Looks without consuming; remaining/reset describe the cell as if this request were consumed.
[[nodiscard]] RateState peek(const RateLimit& limit, const RateCell& cell, Nanos now) noexcept;
// Consumes one request if allowed (CAS loop); refuses without changing the cell otherwise.
[[nodiscard]] RateState try_consume(const RateLimit& limit, RateCell& cell, Nanos now) noexcept;
// Gives back one request consumed by try_consume (used to undo a partial admission): TAT -= T,
// never below 0. A consume from an idle cell followed by its refund leaves the cell idle.
void refund(const RateLimit& limit, RateCell& cell) noexcept;

// ---------------------------------------------------------------------------------------------
// Quotas: a count per period, periods aligned on UTC boundaries.

enum class Period : std::uint8_t { kDay, kWeek, kMonth };

struct QuotaLimit {
  std::uint64_t limit = 0;  // requests per period, >= 1
  Period period = Period::kDay;
  // As API Gateway usage plans: kDay: must be 0. kWeek: 0..6, the weekday a period starts,
  // 0 = Sunday. kMonth: 0..27, the period starts on day (offset + 1) of the month.
  std::uint32_t offset = 0;
};

// The count is stored in 40 bits.
inline constexpr std::uint64_t kMaxQuota = (std::uint64_t{1} << 40) - 1;

// Validates (kInvalidArgument on limit 0, limit > kMaxQuota or an offset out of range).
// Functions below given an unvalidated QuotaLimit clamp its offset into range.
[[nodiscard]] core::Result<QuotaLimit> make_quota(std::uint64_t limit, Period period,
                                                  std::uint32_t offset);

// The period containing wall time `wall_now`: [start, end) in ns since the epoch, UTC
// (periods start at 00:00:00 UTC). An end past the range of Nanos saturates.
struct PeriodBounds {
  Nanos start = 0;
  Nanos end = 0;
};
[[nodiscard]] PeriodBounds period_at(const QuotaLimit& q, Nanos wall_now) noexcept;

// One quota counter. `period_start` says which period `used` counts; a check in a later period
// starts it over. Thread-safe.
class QuotaCell {
 public:
  QuotaCell() = default;
  QuotaCell(const QuotaCell&) = delete;
  QuotaCell& operator=(const QuotaCell&) = delete;

  // Packed as (period sequence, used) so both change in one CAS: high 24 bits hold the period
  // sequence, low 40 bits the count. The sequence is the number of whole days from the epoch to
  // the period's start, modulo 2^24 (~45,900 years, so every two periods within the range of
  // Nanos compare unambiguously by their signed 24-bit difference). A count of 0 carries no
  // period: a fresh cell (state 0) is empty whatever the date.
  //
  // A cell whose period is older than `wall_now`'s starts over. A cell whose period is newer
  // (another worker's wall clock was a little ahead at a boundary, or the clock stepped back)
  // keeps counting in that newer period rather than resetting, so clock skew can cost a few
  // requests of allowance but never grant a fresh period.
  std::atomic<std::uint64_t> state{0};
};

struct QuotaState {
  bool allowed = false;
  std::uint64_t used = 0;       // after this request when allowed (quota_peek: as if consumed);
                                // the current count when refused
  std::uint64_t remaining = 0;  // after this request; 0 when refused
  Nanos reset_at = 0;           // end of the period counted in, ns since the epoch
};

// `q` should come from make_quota. quota_peek looks without consuming (used/remaining as if
// consumed); quota_try_consume counts one request if the period has room, and changes nothing
// otherwise.
[[nodiscard]] QuotaState quota_peek(const QuotaLimit& q, const QuotaCell& cell,
                                    Nanos wall_now) noexcept;
[[nodiscard]] QuotaState quota_try_consume(const QuotaLimit& q, QuotaCell& cell,
                                           Nanos wall_now) noexcept;
// Gives back one request if the cell still counts exactly `wall_now`'s period and is above 0; a
// request counted in a period that has since ended (or in a newer one) is not given back.
void quota_refund(const QuotaLimit& q, QuotaCell& cell, Nanos wall_now) noexcept;
// Current (period start, used) for persistence, and restoring it at startup. A snapshot is
// ignored unless snapshot.period_start is the start of a period of `q` (a snapshot from another
// period length or offset is ignored) that is not older than `wall_now`'s period. Restoring
// into a cell that already counts the same period keeps the larger count; a count above
// kMaxQuota is clamped.
struct QuotaSnapshot {
  Nanos period_start = 0;
  std::uint64_t used = 0;
};
[[nodiscard]] QuotaSnapshot quota_snapshot(const QuotaLimit& q, const QuotaCell& cell,
                                           Nanos wall_now) noexcept;
void quota_restore(const QuotaLimit& q, QuotaCell& cell, QuotaSnapshot s, Nanos wall_now) noexcept;

// ---------------------------------------------------------------------------------------------
// Concurrency gates: at most `max` in flight.

class Gate {
 public:
  Gate() = default;
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  // True and counted if fewer than `max` are in flight (max 0 = unlimited: always true, and
  // still counted so that in_flight() and leave() stay symmetric).
  [[nodiscard]] bool try_enter(std::uint32_t max) noexcept;
  // Leaves once; never goes below 0.
  void leave() noexcept;
  [[nodiscard]] std::uint32_t in_flight() const noexcept;

 private:
  std::atomic<std::uint32_t> n_{0};
};

// ---------------------------------------------------------------------------------------------
// Admission over layers: the most restrictive layer decides, and a request refused by one layer
// consumes nothing from the others.

enum class LayerKind : std::uint8_t {
  kAccount,
  kStage,
  kRoute,
  kFunction,
  kKey,       // the key's plan throttle
  kKeyRoute,  // the plan's per-route override, per key
  kClient,    // client IP, for routes without keys
  kQuota,     // the key's plan quota
  kConcurrency,
};

// The error code a refusal by this layer carries ("ThrottledAccount", ..., "QuotaExceeded",
// "ConcurrencyLimit").
[[nodiscard]] std::string_view refusal_code(LayerKind kind) noexcept;

struct Layer {
  LayerKind kind = LayerKind::kAccount;
  // Exactly one of these groups is set (checked in this order; a layer with none is ignored):
  const RateLimit* rate = nullptr;  // with rate_cell
  RateCell* rate_cell = nullptr;
  const QuotaLimit* quota = nullptr;  // with quota_cell
  QuotaCell* quota_cell = nullptr;
  Gate* gate = nullptr;  // with gate_max
  std::uint32_t gate_max = 0;
};

struct Admission {
  bool allowed = false;
  LayerKind refused_by = LayerKind::kAccount;  // when !allowed
  Nanos retry_after = 0;  // when refused: until the refusing layer would allow (rate: from
                          // GCRA; quota: until the period ends; concurrency: 0 = unknown)
  // The tightest layer, for the RateLimit headers. When allowed: among the rate and quota
  // layers, the one with the fewest remaining after this request (ties: the first in order).
  // When refused by a rate or quota layer: that layer, with remaining 0. When refused by a gate,
  // or when there is no rate or quota layer: has_tightest is false.
  LayerKind tightest = LayerKind::kAccount;
  std::uint64_t limit = 0;  // its burst or quota limit
  std::uint64_t remaining = 0;
  Nanos reset = 0;  // rate: until the cell is full again; quota: until the period ends
  bool has_tightest = false;
  // Gates entered (to leave() on completion): a bit per index into the layers span.
  std::uint32_t gates_entered = 0;
};

// Checks every layer, then consumes from every layer; if a concurrent request took the last
// allowance of a layer between check and consume, what was consumed is refunded and the request
// is refused by that layer. `steady_now` drives rates, `wall_now` quotas.
// At most kMaxLayers layers (the config builds at most one per LayerKind); more is a programming
// error and aborts.
inline constexpr std::size_t kMaxLayers = 32;
[[nodiscard]] Admission admit(std::span<const Layer> layers, Nanos steady_now,
                              Nanos wall_now) noexcept;
// Leaves the gates `admit` entered (call once per allowed Admission; a refused one entered none).
void release(std::span<const Layer> layers, const Admission& a) noexcept;

}  // namespace gatehouse::limits
