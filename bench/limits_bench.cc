// Limiter decisions: ns per decision for a GCRA cell and for a 4-layer admission, on one and two
// threads, with every thread on the same cells (one hot cache line bounced between cores) or on
// cells of its own.
//
//   BM_TryConsume/<cells>            try_consume, allowed (time advances, huge burst)
//   BM_TryConsumeRefused/<cells>     try_consume on an exhausted cell (a flood's path: no write)
//   BM_Admit/<cells>                 admit() over account rate, key rate, day quota and a
//                                    concurrency gate, then release()
//   BM_PeriodAt/<period>             the calendar arithmetic a quota check does
//
// <cells>: 0 = one shared cell set (same key), 1 = a cell set per thread (distinct keys),
// 2 = 10,000 cell sets chosen round-robin (distinct keys, cache misses).

#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "limits/limits.h"

namespace {

using namespace gatehouse;
using limits::Nanos;

constexpr int kShared = 0;
constexpr int kPerThread = 1;
constexpr int kRoundRobin = 2;
constexpr std::size_t kManyCells = 10'000;
constexpr Nanos kWall = 1'780'000'000LL * 1'000'000'000LL;  // a fixed wall time in 2026

template <class T>
T must(core::Result<T> r) {
  if (!r) {
    std::abort();
  }
  return *r;
}

// Every limit lets everything through unless a benchmark exhausts it on purpose: T = 1 ns and a
// burst of 4e9 means a thread advancing its own clock 2 ns per decision is never refused.
const limits::RateLimit kOpen = must(limits::make_rate(1e9, 4'000'000'000u));
const limits::RateLimit kTight = must(limits::make_rate(1, 1));
const limits::QuotaLimit kQuota =
    must(limits::make_quota(limits::kMaxQuota, limits::Period::kDay, 0));

// One key's state: what the gateway keeps per key / per route.
struct alignas(64) CellSet {
  limits::RateCell account;
  limits::RateCell key;
  limits::QuotaCell quota;
  limits::Gate gate;
};

// Cells live for the whole program; a benchmark resets them in its thread-0 setup.
CellSet g_shared;
std::array<CellSet, 2> g_per_thread;
std::unique_ptr<CellSet[]> g_many = std::make_unique<CellSet[]>(kManyCells);

void reset(CellSet& c) {
  c.account.tat.store(0);
  c.key.tat.store(0);
  c.quota.state.store(0);
}

void reset_all() {
  reset(g_shared);
  for (auto& c : g_per_thread) {
    reset(c);
  }
  for (std::size_t i = 0; i < kManyCells; ++i) {
    reset(g_many[i]);
  }
}

// Picks the cell set for this decision.
class Picker {
 public:
  Picker(int mode, int thread) : mode_(mode), thread_(thread) {
    next_ = static_cast<std::size_t>(thread) * (kManyCells / 2);
  }
  CellSet& next() {
    switch (mode_) {
      case kShared:
        return g_shared;
      case kPerThread:
        return g_per_thread[static_cast<std::size_t>(thread_)];
      default: {
        CellSet& c = g_many[next_];
        next_ = next_ + 1 == kManyCells ? 0 : next_ + 1;
        return c;
      }
    }
  }

 private:
  int mode_;
  int thread_;
  std::size_t next_ = 0;
};

void report(benchmark::State& state, std::int64_t allowed) {
  // The fraction of decisions that allowed, averaged over the threads.
  state.counters["allowed"] =
      benchmark::Counter(static_cast<double>(allowed) / static_cast<double>(state.iterations()),
                         benchmark::Counter::kAvgThreads);
}

void BM_TryConsume(benchmark::State& state) {
  if (state.thread_index() == 0) {
    reset_all();
  }
  Picker pick(static_cast<int>(state.range(0)), state.thread_index());
  Nanos now = 1'000'000'000;
  std::int64_t allowed = 0;
  for (auto _ : state) {
    now += 2;
    const limits::RateState s = limits::try_consume(kOpen, pick.next().key, now);
    allowed += s.allowed ? 1 : 0;
    benchmark::DoNotOptimize(s);
  }
  report(state, allowed);
}

void BM_TryConsumeRefused(benchmark::State& state) {
  if (state.thread_index() == 0) {
    reset_all();
  }
  Picker pick(static_cast<int>(state.range(0)), state.thread_index());
  const Nanos now = 1'000'000'000;
  std::int64_t allowed = 0;
  for (auto _ : state) {
    const limits::RateState s = limits::try_consume(kTight, pick.next().key, now);
    allowed += s.allowed ? 1 : 0;
    benchmark::DoNotOptimize(s);
  }
  report(state, allowed);
}

void BM_Admit(benchmark::State& state) {
  if (state.thread_index() == 0) {
    reset_all();
  }
  Picker pick(static_cast<int>(state.range(0)), state.thread_index());
  Nanos now = 1'000'000'000;
  std::int64_t allowed = 0;
  std::array<limits::Layer, 4> layers{};
  layers[0].kind = limits::LayerKind::kAccount;
  layers[0].rate = &kOpen;
  layers[1].kind = limits::LayerKind::kKey;
  layers[1].rate = &kOpen;
  layers[2].kind = limits::LayerKind::kQuota;
  layers[2].quota = &kQuota;
  layers[3].kind = limits::LayerKind::kConcurrency;
  layers[3].gate_max = 1000;
  for (auto _ : state) {
    now += 2;
    CellSet& c = pick.next();
    layers[0].rate_cell = &c.account;
    layers[1].rate_cell = &c.key;
    layers[2].quota_cell = &c.quota;
    layers[3].gate = &c.gate;
    const limits::Admission a = limits::admit(layers, now, kWall);
    if (a.allowed) {
      ++allowed;
      limits::release(layers, a);
    }
    benchmark::DoNotOptimize(a);
  }
  report(state, allowed);
}

void BM_PeriodAt(benchmark::State& state) {
  const auto period = static_cast<limits::Period>(state.range(0));
  const limits::QuotaLimit q =
      must(limits::make_quota(1, period, period == limits::Period::kDay ? 0 : 3));
  Nanos wall = kWall;
  for (auto _ : state) {
    wall += 3'600'000'000'000LL;  // an hour per call, so the date keeps changing
    benchmark::DoNotOptimize(limits::period_at(q, wall));
  }
}

void cells_args(benchmark::internal::Benchmark* b) {
  b->ArgName("cells");
  for (int mode : {kShared, kPerThread, kRoundRobin}) {
    b->Arg(mode);
  }
  b->Threads(1)->Threads(2)->UseRealTime();
}

BENCHMARK(BM_TryConsume)->Apply(cells_args);
BENCHMARK(BM_TryConsumeRefused)->Apply(cells_args);
BENCHMARK(BM_Admit)->Apply(cells_args);
BENCHMARK(BM_PeriodAt)->ArgName("period")->Arg(0)->Arg(1)->Arg(2);

}  // namespace

BENCHMARK_MAIN();
