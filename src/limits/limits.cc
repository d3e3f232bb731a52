#include "limits/limits.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

namespace gatehouse::limits {
namespace {

// Every atomic here is a self-contained counter: no other memory is published through it, and
// the only invariant (no over-admission) rests on each cell's modification order, which relaxed
// read-modify-writes already give. So relaxed ordering throughout.
constexpr auto kRelaxed = std::memory_order_relaxed;

constexpr Nanos kNsPerSecond = 1'000'000'000;
constexpr Nanos kNsPerDay = 86'400 * kNsPerSecond;

// ---- rates ----------------------------------------------------------------------------------

// The rate arithmetic on one observed TAT. `backlog` = max(TAT - now, 0) is how far the cell is
// ahead of now; a token bucket would hold (tau + T - backlog) / T tokens.
struct RateEval {
  RateState state;
  Nanos new_tat = 0;  // when allowed
};

RateEval rate_eval(const RateLimit& limit, Nanos tat, Nanos now) noexcept {
  // Guards against a RateLimit that did not come from make_rate (no division by zero).
  const Nanos t = std::max<Nanos>(limit.interval, 1);
  const Nanos tau = std::max<Nanos>(limit.tolerance, 0);
  const Nanos backlog = tat > now ? tat - now : 0;
  RateEval e;
  if (backlog > tau) {
    e.state.retry_after = backlog - tau;
    e.state.reset = backlog;
    return e;
  }
  const Nanos after = backlog + t;
  e.state.allowed = true;
  // (tau + T - after) / T with after = backlog + T; <= tau / T = burst - 1.
  e.state.remaining = static_cast<std::uint32_t>(
      std::min<Nanos>((tau - backlog) / t, std::numeric_limits<std::uint32_t>::max()));
  e.state.reset = after;
  e.new_tat = now + after;
  return e;
}

// Only the decision, without the division: what admit's check pass needs.
bool rate_allows(const RateLimit& limit, Nanos tat, Nanos now) noexcept {
  return tat - now <= std::max<Nanos>(limit.tolerance, 0);
}

// ---- quota periods --------------------------------------------------------------------------

constexpr int kCountBits = 40;
constexpr std::uint64_t kCountMask = kMaxQuota;
constexpr std::uint32_t kSeqMask = (std::uint32_t{1} << 24) - 1;
constexpr std::uint32_t kSeqHalf = std::uint32_t{1} << 23;

// [start, end) in whole days since the epoch.
struct DayRange {
  std::int64_t start = 0;
  std::int64_t end = 0;
};

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
  const std::int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

std::int64_t day_of(Nanos wall) noexcept { return floor_div(wall, kNsPerDay); }

// Saturates: Nanos covers about +-106,751 days around the epoch.
Nanos day_to_ns(std::int64_t day) noexcept {
  if (day > std::numeric_limits<Nanos>::max() / kNsPerDay) {
    return std::numeric_limits<Nanos>::max();
  }
  if (day < std::numeric_limits<Nanos>::min() / kNsPerDay) {
    return std::numeric_limits<Nanos>::min();
  }
  return day * kNsPerDay;
}

DayRange period_days(const QuotaLimit& q, std::int64_t day) noexcept {
  using std::chrono::sys_days;
  const sys_days d{std::chrono::days{day}};
  switch (q.period) {
    case Period::kDay:
      break;
    case Period::kWeek: {
      // c_encoding(): 0 = Sunday, as the offset. The modulo keeps an unvalidated offset sane.
      const unsigned wd = std::chrono::weekday{d}.c_encoding();
      const unsigned back = (wd + 7 - q.offset % 7) % 7;
      const std::int64_t start = day - back;
      return {start, start + 7};
    }
    case Period::kMonth: {
      // Day offset+1 exists in every month because the offset is at most 27.
      const std::chrono::day first{std::min<std::uint32_t>(q.offset, 27) + 1};
      const std::chrono::year_month_day ymd{d};
      std::chrono::year_month ym{ymd.year(), ymd.month()};
      if (ymd.day() < first) {
        ym -= std::chrono::months{1};
      }
      const sys_days start{ym / first};
      const sys_days end{(ym + std::chrono::months{1}) / first};
      return {start.time_since_epoch().count(), end.time_since_epoch().count()};
    }
  }
  return {day, day + 1};
}

PeriodBounds to_bounds(DayRange r) noexcept { return {day_to_ns(r.start), day_to_ns(r.end)}; }

std::uint32_t seq_of_day(std::int64_t day) noexcept {
  return static_cast<std::uint32_t>(static_cast<std::uint64_t>(day) & kSeqMask);
}

// a - b for two 24-bit sequences, exact while the periods are less than 2^23 days apart (always,
// within the range of Nanos).
std::int64_t seq_diff(std::uint32_t a, std::uint32_t b) noexcept {
  const std::uint32_t d = (a - b) & kSeqMask;
  return d >= kSeqHalf ? std::int64_t{d} - (std::int64_t{1} << 24) : std::int64_t{d};
}

std::uint64_t pack(std::uint32_t seq, std::uint64_t used) noexcept {
  return (std::uint64_t{seq} << kCountBits) | (used & kCountMask);
}

std::uint64_t effective_limit(const QuotaLimit& q) noexcept {
  return std::min(q.limit, kCountMask);
}

// What a packed cell means for a request in period `cur`.
struct CellView {
  std::uint32_t seq = 0;  // the sequence a consume writes back
  std::uint64_t used = 0;
  DayRange days;       // the period counted in
  bool exact = false;  // counts exactly `cur`, with a non-zero count
};

CellView view_cell(const QuotaLimit& q, DayRange cur, std::uint64_t state) noexcept {
  const std::uint32_t cur_seq = seq_of_day(cur.start);
  const std::uint64_t used = state & kCountMask;
  if (used == 0) {
    return {cur_seq, 0, cur, false};
  }
  const std::int64_t d = seq_diff(static_cast<std::uint32_t>(state >> kCountBits), cur_seq);
  if (d == 0) {
    return {cur_seq, used, cur, true};
  }
  if (d < 0) {
    return {cur_seq, 0, cur, false};  // an ended period: start over
  }
  // A newer period (skewed or stepped-back wall clock): keep counting in it rather than grant a
  // fresh one. Recomputing its bounds also normalizes a sequence left by an older config whose
  // periods started elsewhere.
  const DayRange newer = period_days(q, cur.start + d);
  return {seq_of_day(newer.start), used, newer, newer.start == cur.start};
}

QuotaState quota_state(const QuotaLimit& q, const CellView& v) noexcept {
  QuotaState s;
  s.reset_at = day_to_ns(v.days.end);
  const std::uint64_t limit = effective_limit(q);
  if (v.used >= limit) {
    s.used = v.used;
    return s;
  }
  s.allowed = true;
  s.used = v.used + 1;
  s.remaining = limit - s.used;
  return s;
}

struct QuotaConsumed {
  QuotaState state;
  std::uint32_t seq = 0;  // the period the request was counted in
};

QuotaConsumed quota_consume_in(const QuotaLimit& q, QuotaCell& cell, DayRange cur) noexcept {
  std::uint64_t state = cell.state.load(kRelaxed);
  for (;;) {
    const CellView v = view_cell(q, cur, state);
    QuotaConsumed c{quota_state(q, v), v.seq};
    if (!c.state.allowed) {
      return c;
    }
    if (cell.state.compare_exchange_weak(state, pack(v.seq, v.used + 1), kRelaxed, kRelaxed)) {
      return c;
    }
  }
}

// Takes one back from period `seq` if the cell still counts it.
void quota_refund_seq(QuotaCell& cell, std::uint32_t seq) noexcept {
  std::uint64_t state = cell.state.load(kRelaxed);
  for (;;) {
    const std::uint64_t used = state & kCountMask;
    if (used == 0 || static_cast<std::uint32_t>(state >> kCountBits) != seq) {
      return;
    }
    if (cell.state.compare_exchange_weak(state, pack(seq, used - 1), kRelaxed, kRelaxed)) {
      return;
    }
  }
}

// ---- admission ------------------------------------------------------------------------------

enum class Shape : std::uint8_t { kNone, kRate, kQuota, kGate };

Shape shape_of(const Layer& l) noexcept {
  if (l.rate != nullptr && l.rate_cell != nullptr) {
    return Shape::kRate;
  }
  if (l.quota != nullptr && l.quota_cell != nullptr) {
    return Shape::kQuota;
  }
  if (l.gate != nullptr) {
    return Shape::kGate;
  }
  return Shape::kNone;
}

Admission refuse(LayerKind kind, Nanos retry_after) noexcept {
  Admission a;
  a.refused_by = kind;
  a.retry_after = retry_after;
  return a;
}

Admission refuse_rate(const Layer& l, const RateState& s) noexcept {
  Admission a = refuse(l.kind, s.retry_after);
  a.has_tightest = true;
  a.tightest = l.kind;
  a.limit = l.rate->burst;
  a.remaining = 0;
  a.reset = s.reset;
  return a;
}

Admission refuse_quota(const Layer& l, const QuotaState& s, Nanos wall_now) noexcept {
  const Nanos until_end = std::max<Nanos>(s.reset_at - wall_now, 0);
  Admission a = refuse(l.kind, until_end);
  a.has_tightest = true;
  a.tightest = l.kind;
  a.limit = effective_limit(*l.quota);
  a.remaining = 0;
  a.reset = until_end;
  return a;
}

void note_tightest(Admission& a, LayerKind kind, std::uint64_t limit, std::uint64_t remaining,
                   Nanos reset) noexcept {
  // Strictly fewer: on a tie the earlier layer stays.
  if (a.has_tightest && remaining >= a.remaining) {
    return;
  }
  a.has_tightest = true;
  a.tightest = kind;
  a.limit = limit;
  a.remaining = remaining;
  a.reset = reset;
}

// Per-layer scratch for one admission, kept on the stack.
struct Scratch {
  std::array<DayRange, kMaxLayers> period;    // quota layers: wall_now's period
  std::array<std::uint32_t, kMaxLayers> seq;  // quota layers: where the consume counted
};

// Gives back what layers [0, n) consumed, newest first.
void undo(std::span<const Layer> layers, std::size_t n, const Scratch& scratch,
          std::uint32_t gates_entered) noexcept {
  while (n > 0) {
    --n;
    const Layer& l = layers[n];
    switch (shape_of(l)) {
      case Shape::kRate:
        refund(*l.rate, *l.rate_cell);
        break;
      case Shape::kQuota:
        quota_refund_seq(*l.quota_cell, scratch.seq[n]);
        break;
      case Shape::kGate:
        if ((gates_entered & (std::uint32_t{1} << n)) != 0) {
          l.gate->leave();
        }
        break;
      case Shape::kNone:
        break;
    }
  }
}

}  // namespace

// ---- rates ----------------------------------------------------------------------------------

core::Result<RateLimit> make_rate(double rate, std::uint32_t burst) {
  // Written so that NaN fails too.
  if (!(rate > 0) || !std::isfinite(rate)) {
    return core::make_error(core::ErrorCode::kInvalidArgument,
                            "rate must be a positive finite number of requests per second");
  }
  if (rate > 1e9) {
    return core::make_error(core::ErrorCode::kInvalidArgument,
                            "rate must be at most 1e9 requests per second");
  }
  if (burst == 0) {
    return core::make_error(core::ErrorCode::kInvalidArgument, "burst must be at least 1");
  }
  const double t = 1e9 / rate;
  // Checked in double first: llround of a value beyond int64 is undefined.
  if (t * static_cast<double>(burst) > static_cast<double>(kMaxRateWindow)) {
    return core::make_error(core::ErrorCode::kInvalidArgument,
                            "burst / rate must be at most 2^62 ns (about 146 years)");
  }
  RateLimit r;
  r.rate = rate;
  r.burst = burst;
  r.interval = std::max<Nanos>(std::llround(t), 1);
  if (r.interval > kMaxRateWindow / burst) {  // rounding can push it over
    return core::make_error(core::ErrorCode::kInvalidArgument,
                            "burst / rate must be at most 2^62 ns (about 146 years)");
  }
  r.tolerance = static_cast<Nanos>(burst - 1) * r.interval;
  return r;
}

RateState peek(const RateLimit& limit, const RateCell& cell, Nanos now) noexcept {
  return rate_eval(limit, cell.tat.load(kRelaxed), now).state;
}

RateState try_consume(const RateLimit& limit, RateCell& cell, Nanos now) noexcept {
  Nanos tat = cell.tat.load(kRelaxed);
  for (;;) {
    const RateEval e = rate_eval(limit, tat, now);
    if (!e.state.allowed) {
      return e.state;
    }
    if (cell.tat.compare_exchange_weak(tat, e.new_tat, kRelaxed, kRelaxed)) {
      return e.state;
    }
  }
}

void refund(const RateLimit& limit, RateCell& cell) noexcept {
  const Nanos t = std::max<Nanos>(limit.interval, 1);
  Nanos tat = cell.tat.load(kRelaxed);
  for (;;) {
    const Nanos next = tat > t ? tat - t : 0;
    if (next == tat) {
      return;
    }
    if (cell.tat.compare_exchange_weak(tat, next, kRelaxed, kRelaxed)) {
      return;
    }
  }
}

// ---- quotas ---------------------------------------------------------------------------------

core::Result<QuotaLimit> make_quota(std::uint64_t limit, Period period, std::uint32_t offset) {
  if (limit == 0) {
    return core::make_error(core::ErrorCode::kInvalidArgument, "quota limit must be at least 1");
  }
  if (limit > kMaxQuota) {
    return core::make_error(core::ErrorCode::kInvalidArgument,
                            "quota limit must be at most " + std::to_string(kMaxQuota));
  }
  switch (period) {
    case Period::kDay:
      if (offset != 0) {
        return core::make_error(core::ErrorCode::kInvalidArgument,
                                "quota offset must be 0 for a DAY period");
      }
      break;
    case Period::kWeek:
      if (offset > 6) {
        return core::make_error(core::ErrorCode::kInvalidArgument,
                                "quota offset must be 0..6 (0 = Sunday) for a WEEK period");
      }
      break;
    case Period::kMonth:
      if (offset > 27) {
        return core::make_error(core::ErrorCode::kInvalidArgument,
                                "quota offset must be 0..27 for a MONTH period");
      }
      break;
    default:
      return core::make_error(core::ErrorCode::kInvalidArgument, "unknown quota period");
  }
  return QuotaLimit{limit, period, offset};
}

PeriodBounds period_at(const QuotaLimit& q, Nanos wall_now) noexcept {
  return to_bounds(period_days(q, day_of(wall_now)));
}

QuotaState quota_peek(const QuotaLimit& q, const QuotaCell& cell, Nanos wall_now) noexcept {
  const DayRange cur = period_days(q, day_of(wall_now));
  return quota_state(q, view_cell(q, cur, cell.state.load(kRelaxed)));
}

QuotaState quota_try_consume(const QuotaLimit& q, QuotaCell& cell, Nanos wall_now) noexcept {
  return quota_consume_in(q, cell, period_days(q, day_of(wall_now))).state;
}

void quota_refund(const QuotaLimit& q, QuotaCell& cell, Nanos wall_now) noexcept {
  quota_refund_seq(cell, seq_of_day(period_days(q, day_of(wall_now)).start));
}

QuotaSnapshot quota_snapshot(const QuotaLimit& q, const QuotaCell& cell, Nanos wall_now) noexcept {
  const DayRange cur = period_days(q, day_of(wall_now));
  const CellView v = view_cell(q, cur, cell.state.load(kRelaxed));
  return {day_to_ns(v.days.start), v.used};
}

void quota_restore(const QuotaLimit& q, QuotaCell& cell, QuotaSnapshot s, Nanos wall_now) noexcept {
  if (s.used == 0) {
    return;
  }
  const std::int64_t snap_day = day_of(s.period_start);
  if (day_to_ns(snap_day) != s.period_start) {
    return;  // not a midnight: no period of ours starts there
  }
  const DayRange snap = period_days(q, snap_day);
  const DayRange cur = period_days(q, day_of(wall_now));
  if (snap.start != snap_day || snap.start < cur.start) {
    return;  // another period shape, or a period that has ended
  }
  const std::uint64_t used = std::min(s.used, kCountMask);
  std::uint64_t state = cell.state.load(kRelaxed);
  for (;;) {
    const CellView v = view_cell(q, cur, state);
    if (v.used != 0 && v.days.start > snap.start) {
      return;  // the cell already counts a later period
    }
    if (v.used != 0 && v.days.start == snap.start && v.used >= used) {
      return;
    }
    if (cell.state.compare_exchange_weak(state, pack(seq_of_day(snap.start), used), kRelaxed,
                                         kRelaxed)) {
      return;
    }
  }
}

// ---- gates ----------------------------------------------------------------------------------

bool Gate::try_enter(std::uint32_t max) noexcept {
  if (max == 0) {
    n_.fetch_add(1, kRelaxed);
    return true;
  }
  std::uint32_t n = n_.load(kRelaxed);
  do {
    if (n >= max) {
      return false;
    }
  } while (!n_.compare_exchange_weak(n, n + 1, kRelaxed, kRelaxed));
  return true;
}

void Gate::leave() noexcept {
  // A CAS rather than fetch_sub: an unmatched leave() must not wrap the count to 4 billion and
  // shut the gate for good.
  std::uint32_t n = n_.load(kRelaxed);
  do {
    if (n == 0) {
      return;
    }
  } while (!n_.compare_exchange_weak(n, n - 1, kRelaxed, kRelaxed));
}

std::uint32_t Gate::in_flight() const noexcept { return n_.load(kRelaxed); }

// ---- admission ------------------------------------------------------------------------------

std::string_view refusal_code(LayerKind kind) noexcept {
  switch (kind) {
    case LayerKind::kAccount:
      return "ThrottledAccount";
    case LayerKind::kStage:
      return "ThrottledStage";
    case LayerKind::kRoute:
      return "ThrottledRoute";
    case LayerKind::kFunction:
      return "ThrottledFunction";
    case LayerKind::kKey:
    case LayerKind::kKeyRoute:
      return "ThrottledKey";
    case LayerKind::kClient:
      return "ThrottledClient";
    case LayerKind::kQuota:
      return "QuotaExceeded";
    case LayerKind::kConcurrency:
      return "ConcurrencyLimit";
  }
  return "Throttled";
}

Admission admit(std::span<const Layer> layers, Nanos steady_now, Nanos wall_now) noexcept {
  // The config builds at most one layer per LayerKind; more would overflow gates_entered.
  if (layers.size() > kMaxLayers) {
    std::abort();
  }
  Scratch scratch;

  // Check pass: the first refusing layer decides, and nothing has been consumed yet.
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    switch (shape_of(l)) {
      case Shape::kRate: {
        if (!rate_allows(*l.rate, l.rate_cell->tat.load(kRelaxed), steady_now)) {
          return refuse_rate(l, peek(*l.rate, *l.rate_cell, steady_now));
        }
        break;
      }
      case Shape::kQuota: {
        scratch.period[i] = period_days(*l.quota, day_of(wall_now));
        const QuotaState s = quota_state(
            *l.quota, view_cell(*l.quota, scratch.period[i], l.quota_cell->state.load(kRelaxed)));
        if (!s.allowed) {
          return refuse_quota(l, s, wall_now);
        }
        break;
      }
      case Shape::kGate:
        if (l.gate_max != 0 && l.gate->in_flight() >= l.gate_max) {
          return refuse(l.kind, 0);
        }
        break;
      case Shape::kNone:
        break;
    }
  }

  // Consume pass. A layer can still refuse here if a concurrent request took its last allowance
  // after the check; then everything taken so far goes back.
  Admission a;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    switch (shape_of(l)) {
      case Shape::kRate: {
        const RateState s = try_consume(*l.rate, *l.rate_cell, steady_now);
        if (!s.allowed) {
          undo(layers, i, scratch, a.gates_entered);
          return refuse_rate(l, s);
        }
        note_tightest(a, l.kind, l.rate->burst, s.remaining, s.reset);
        break;
      }
      case Shape::kQuota: {
        const QuotaConsumed c = quota_consume_in(*l.quota, *l.quota_cell, scratch.period[i]);
        if (!c.state.allowed) {
          undo(layers, i, scratch, a.gates_entered);
          return refuse_quota(l, c.state, wall_now);
        }
        scratch.seq[i] = c.seq;
        note_tightest(a, l.kind, effective_limit(*l.quota), c.state.remaining,
                      std::max<Nanos>(c.state.reset_at - wall_now, 0));
        break;
      }
      case Shape::kGate:
        if (!l.gate->try_enter(l.gate_max)) {
          undo(layers, i, scratch, a.gates_entered);
          return refuse(l.kind, 0);
        }
        a.gates_entered |= std::uint32_t{1} << i;
        break;
      case Shape::kNone:
        break;
    }
  }
  a.allowed = true;
  return a;
}

void release(std::span<const Layer> layers, const Admission& a) noexcept {
  const std::size_t n = std::min(layers.size(), kMaxLayers);
  for (std::size_t i = 0; i < n; ++i) {
    if ((a.gates_entered & (std::uint32_t{1} << i)) != 0 && layers[i].gate != nullptr) {
      layers[i].gate->leave();
    }
  }
}

}  // namespace gatehouse::limits
