#include "limits/limits.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <latch>
#include <limits>
#include <random>
#include <thread>
#include <vector>

namespace gatehouse::limits {
namespace {

constexpr Nanos kSec = 1'000'000'000;
constexpr Nanos kDay = 86'400 * kSec;

RateLimit rate_of(double rate, std::uint32_t burst) {
  auto r = make_rate(rate, burst);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r.value_or(RateLimit{});
}

QuotaLimit quota_of(std::uint64_t limit, Period period, std::uint32_t offset) {
  auto q = make_quota(limit, period, offset);
  EXPECT_TRUE(q.has_value()) << (q ? "" : q.error().message);
  return q.value_or(QuotaLimit{});
}

// Wall time of a UTC date and time, ns since the epoch.
Nanos utc(int y, unsigned m, unsigned d, int hh = 0, int mm = 0, int ss = 0, Nanos ns = 0) {
  using namespace std::chrono;
  const sys_days day{year{y} / month{m} / std::chrono::day{d}};
  return duration_cast<nanoseconds>(day.time_since_epoch()).count() +
         ((static_cast<Nanos>(hh) * 60 + mm) * 60 + ss) * kSec + ns;
}

// The last nanosecond before a UTC midnight.
Nanos just_before(int y, unsigned m, unsigned d) { return utc(y, m, d) - 1; }

void expect_bounds(const QuotaLimit& q, Nanos t, Nanos start, Nanos end) {
  const PeriodBounds b = period_at(q, t);
  EXPECT_EQ(b.start, start) << "t=" << t;
  EXPECT_EQ(b.end, end) << "t=" << t;
}

// ---- make_rate ------------------------------------------------------------------------------

TEST(MakeRate, RejectsInvalid) {
  EXPECT_FALSE(make_rate(0, 1));
  EXPECT_FALSE(make_rate(-1, 1));
  EXPECT_FALSE(make_rate(std::nan(""), 1));
  EXPECT_FALSE(make_rate(std::numeric_limits<double>::infinity(), 1));
  EXPECT_FALSE(make_rate(1e9 + 1, 1));
  EXPECT_FALSE(make_rate(1, 0));
  EXPECT_FALSE(make_rate(1e-300, 1));  // interval beyond int64
  EXPECT_FALSE(make_rate(1e-9, 5));    // 5e18 ns window
  const auto e = make_rate(0, 1);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, core::ErrorCode::kInvalidArgument);
}

TEST(MakeRate, Derives) {
  RateLimit r = rate_of(1, 5);
  EXPECT_EQ(r.interval, kSec);
  EXPECT_EQ(r.tolerance, 4 * kSec);
  EXPECT_EQ(rate_of(0.5, 1).interval, 2 * kSec);
  EXPECT_EQ(rate_of(0.5, 1).tolerance, 0);
  EXPECT_EQ(rate_of(1000, 1).interval, 1'000'000);
  EXPECT_EQ(rate_of(3, 1).interval, 333'333'333);    // rounded to nearest
  EXPECT_EQ(rate_of(1.5, 1).interval, 666'666'667);  // rounded to nearest
  EXPECT_EQ(rate_of(1e9, 10).interval, 1);
  EXPECT_EQ(rate_of(7e8, 1).interval, 1);  // 1.43 ns rounds to 1
  r = rate_of(1, 4'294'967'295u);
  EXPECT_EQ(r.tolerance, Nanos{4'294'967'294} * kSec);
  EXPECT_TRUE(make_rate(1e-9, 4));  // 4e18 ns < 2^62
}

// ---- GCRA -----------------------------------------------------------------------------------

TEST(Rate, FreshCellAllowsBurstAtOnceThenOnePerInterval) {
  const RateLimit r = rate_of(10, 5);  // T = 100 ms, tau = 400 ms
  const Nanos t = r.interval;
  RateCell cell;
  const Nanos t0 = 1000 * kSec;
  for (std::uint32_t i = 0; i < 5; ++i) {
    const RateState s = try_consume(r, cell, t0);
    ASSERT_TRUE(s.allowed) << i;
    EXPECT_EQ(s.remaining, 4 - i);
    EXPECT_EQ(s.reset, (i + 1) * t);
    EXPECT_EQ(s.retry_after, 0);
  }
  RateState s = try_consume(r, cell, t0);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.retry_after, t);
  EXPECT_EQ(s.remaining, 0u);
  EXPECT_EQ(s.reset, 5 * t);
  EXPECT_EQ(cell.tat.load(), t0 + 5 * t);  // a refusal changes nothing

  s = try_consume(r, cell, t0 + t - 1);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.retry_after, 1);
  EXPECT_EQ(s.reset, 5 * t - (t - 1));

  // Exactly one per interval from here on, and never two.
  for (Nanos k = 1; k <= 100; ++k) {
    const Nanos now = t0 + k * t;
    s = try_consume(r, cell, now);
    ASSERT_TRUE(s.allowed) << k;
    EXPECT_EQ(s.remaining, 0u);
    EXPECT_EQ(s.reset, 5 * t);
    s = try_consume(r, cell, now);
    ASSERT_FALSE(s.allowed) << k;
    EXPECT_EQ(s.retry_after, t);
  }
}

TEST(Rate, RefillsLinearly) {
  const RateLimit r = rate_of(10, 5);
  const Nanos t = r.interval;
  RateCell cell;
  const Nanos t0 = 50 * kSec;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(try_consume(r, cell, t0).allowed);
  }
  // 2.5 intervals later: 2.5 tokens, so two requests and a wait of half an interval.
  const Nanos now = t0 + 5 * t / 2;
  RateState s = try_consume(r, cell, now);
  ASSERT_TRUE(s.allowed);
  EXPECT_EQ(s.remaining, 1u);
  EXPECT_EQ(s.reset, 5 * t / 2 + t);  // backlog 2.5T + T; full again then
  s = try_consume(r, cell, now);
  ASSERT_TRUE(s.allowed);
  EXPECT_EQ(s.remaining, 0u);
  s = try_consume(r, cell, now);
  ASSERT_FALSE(s.allowed);
  EXPECT_EQ(s.retry_after, t / 2);
  // Long idle: full again.
  s = try_consume(r, cell, now + 10 * kSec);
  ASSERT_TRUE(s.allowed);
  EXPECT_EQ(s.remaining, 4u);
  EXPECT_EQ(s.reset, t);
}

TEST(Rate, HalfPerSecond) {
  const RateLimit r = rate_of(0.5, 1);
  RateCell cell;
  const Nanos t0 = 7 * kSec;
  RateState s = try_consume(r, cell, t0);
  ASSERT_TRUE(s.allowed);
  EXPECT_EQ(s.remaining, 0u);
  EXPECT_EQ(s.reset, 2 * kSec);
  s = try_consume(r, cell, t0 + 2 * kSec - 1);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.retry_after, 1);
  s = try_consume(r, cell, t0 + 2 * kSec);
  EXPECT_TRUE(s.allowed);
  s = try_consume(r, cell, t0 + 3 * kSec);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.retry_after, kSec);
}

TEST(Rate, ThousandPerSecond) {
  const RateLimit r = rate_of(1000, 1);
  RateCell cell;
  const Nanos t0 = kSec;
  int allowed = 0;
  // Two attempts per millisecond over one second: exactly one per millisecond passes.
  for (Nanos ms = 0; ms < 1000; ++ms) {
    allowed += try_consume(r, cell, t0 + ms * 1'000'000).allowed ? 1 : 0;
    allowed += try_consume(r, cell, t0 + ms * 1'000'000 + 500'000).allowed ? 1 : 0;
  }
  EXPECT_EQ(allowed, 1000);
}

TEST(Rate, BurstOfOneRefusesUntilInterval) {
  const RateLimit r = rate_of(1, 1);
  RateCell cell;
  EXPECT_TRUE(try_consume(r, cell, 0).allowed);  // a fresh cell is idle even at time 0
  const RateState s = try_consume(r, cell, 0);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.retry_after, kSec);
}

TEST(Rate, PeekMatchesConsumeAndChangesNothing) {
  const RateLimit r = rate_of(4, 3);
  RateCell cell;
  Nanos now = 10 * kSec;
  for (int i = 0; i < 20; ++i) {
    const Nanos before = cell.tat.load();
    const RateState p = peek(r, cell, now);
    EXPECT_EQ(cell.tat.load(), before);
    const RateState c = try_consume(r, cell, now);
    EXPECT_EQ(p.allowed, c.allowed);
    EXPECT_EQ(p.remaining, c.remaining);
    EXPECT_EQ(p.retry_after, c.retry_after);
    EXPECT_EQ(p.reset, c.reset);
    now += r.interval / 3;
  }
}

TEST(Rate, RefundGivesBackOneAndNeverGoesBelowZero) {
  const RateLimit r = rate_of(1, 3);
  RateCell cell;
  const Nanos t0 = 100 * kSec;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(try_consume(r, cell, t0).allowed);
  }
  ASSERT_FALSE(try_consume(r, cell, t0).allowed);
  refund(r, cell);
  EXPECT_EQ(cell.tat.load(), t0 + 2 * kSec);
  const RateState s = try_consume(r, cell, t0);
  EXPECT_TRUE(s.allowed);
  EXPECT_EQ(s.remaining, 0u);

  RateCell idle;
  refund(r, idle);
  EXPECT_EQ(idle.tat.load(), 0);
  idle.tat.store(kSec / 2);
  refund(r, idle);
  EXPECT_EQ(idle.tat.load(), 0);
}

// The reference: a token bucket of `burst` tokens refilled at p/q tokens per second, kept in
// exact integers (1 token = 1e9 * q units, so p units arrive per nanosecond). A request takes a
// token if at least one whole token is there (so the boundary is inclusive, as GCRA's t >= TAT -
// tau).
class ReferenceBucket {
 public:
  ReferenceBucket(std::uint64_t p, std::uint64_t q, std::uint64_t burst, Nanos start)
      : per_ns_(p), cost_(1'000'000'000ULL * q), cap_(burst * cost_), level_(cap_), last_(start) {}

  bool take(Nanos now) {
    const auto elapsed = static_cast<std::uint64_t>(now - last_);
    last_ = now;
    const std::uint64_t missing = cap_ - level_;
    if (elapsed >= (missing + per_ns_ - 1) / per_ns_) {
      level_ = cap_;
    } else {
      level_ += elapsed * per_ns_;
    }
    if (level_ < cost_) {
      return false;
    }
    level_ -= cost_;
    return true;
  }
  // Whole tokens left.
  [[nodiscard]] std::uint64_t tokens() const { return level_ / cost_; }

 private:
  std::uint64_t per_ns_;
  std::uint64_t cost_;
  std::uint64_t cap_;
  std::uint64_t level_;
  Nanos last_;
};

TEST(Rate, RandomizedAgainstReferenceTokenBucket) {
  std::mt19937_64 rng(20261129);
  constexpr std::array<std::uint64_t, 9> kQs = {1, 2, 3, 4, 7, 10, 60, 600, 3600};
  auto pick = [&](std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
  };
  std::uint64_t decisions = 0;
  std::uint64_t allows = 0;
  std::uint64_t exact_boundaries = 0;
  for (int seq = 0; seq < 2000; ++seq) {
    // rate = p / q with p | 1e9, so T = 1e9 * q / p is a whole number of ns and the reference
    // (exact rationals) and GCRA (integer T) describe the same bucket.
    std::uint64_t p = 1;
    for (std::uint64_t i = pick(0, 9); i > 0; --i) {
      p *= 2;
    }
    for (std::uint64_t i = pick(0, 9); i > 0; --i) {
      p *= 5;
    }
    const std::uint64_t q = kQs[pick(0, kQs.size() - 1)];
    const std::uint64_t burst = pick(0, 9) == 0 ? pick(1, 1000) : pick(1, 10);
    const RateLimit r =
        rate_of(static_cast<double>(p) / static_cast<double>(q), static_cast<std::uint32_t>(burst));
    ASSERT_EQ(r.interval, static_cast<Nanos>(1'000'000'000ULL * q / p)) << p << "/" << q;
    const Nanos t = r.interval;

    Nanos now = static_cast<Nanos>(pick(0, 1'000'000'000'000));
    RateCell cell;
    ReferenceBucket ref(p, q, burst, now);
    Nanos last_retry = 0;
    for (int i = 0; i < 200; ++i) {
      Nanos gap = 0;
      switch (pick(0, 11)) {
        case 0:
        case 1:
          gap = 0;
          break;
        case 2:
          gap = static_cast<Nanos>(pick(0, static_cast<std::uint64_t>(t) - 1));
          break;
        case 3:
          gap = t;
          break;
        case 4:
          gap = t - 1;
          break;
        case 5:
          gap = t + 1;
          break;
        case 6:
          gap = static_cast<Nanos>(pick(0, 3 * static_cast<std::uint64_t>(t)));
          break;
        case 7:
          gap = t * static_cast<Nanos>(pick(1, 2 * burst));
          break;
        case 8:  // long idle
          gap = t * static_cast<Nanos>(burst + pick(0, 3)) + static_cast<Nanos>(pick(0, 1000));
          break;
        case 9:  // exactly when the last refusal said to come back
        case 10:
          gap = last_retry;
          ++exact_boundaries;
          break;
        default:
          gap = last_retry > 0 ? last_retry - 1 : 0;
          break;
      }
      now += gap;
      const RateState s = try_consume(r, cell, now);
      const bool want = ref.take(now);
      ASSERT_EQ(s.allowed, want) << "seq " << seq << " arrival " << i << " p/q " << p << "/" << q
                                 << " burst " << burst << " gap " << gap;
      if (s.allowed) {
        ++allows;
        ASSERT_EQ(s.remaining, ref.tokens()) << "seq " << seq << " arrival " << i;
        last_retry = 0;
      } else {
        ASSERT_GT(s.retry_after, 0);
        last_retry = s.retry_after;
      }
      ++decisions;
    }
  }
  EXPECT_EQ(decisions, 2000u * 200u);
  // Both outcomes and the exact boundaries were exercised.
  EXPECT_GT(allows, decisions / 10);
  EXPECT_LT(allows, decisions - decisions / 10);
  EXPECT_GT(exact_boundaries, 10'000u);
}

// ---- quota periods --------------------------------------------------------------------------

TEST(MakeQuota, Validates) {
  EXPECT_FALSE(make_quota(0, Period::kDay, 0));
  EXPECT_FALSE(make_quota(kMaxQuota + 1, Period::kDay, 0));
  EXPECT_TRUE(make_quota(kMaxQuota, Period::kDay, 0));
  EXPECT_FALSE(make_quota(1, Period::kDay, 1));
  EXPECT_TRUE(make_quota(1, Period::kWeek, 6));
  EXPECT_FALSE(make_quota(1, Period::kWeek, 7));
  EXPECT_TRUE(make_quota(1, Period::kMonth, 27));
  EXPECT_FALSE(make_quota(1, Period::kMonth, 28));
  EXPECT_FALSE(make_quota(1, static_cast<Period>(9), 0));
  const auto e = make_quota(1, Period::kMonth, 28);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, core::ErrorCode::kInvalidArgument);
}

TEST(QuotaPeriod, DayBoundary) {
  const QuotaLimit q = quota_of(10, Period::kDay, 0);
  expect_bounds(q, utc(2024, 3, 10, 23, 59, 59, 999'999'999), utc(2024, 3, 10), utc(2024, 3, 11));
  expect_bounds(q, utc(2024, 3, 10, 23, 59, 59, 999'000'000), utc(2024, 3, 10), utc(2024, 3, 11));
  expect_bounds(q, utc(2024, 3, 11), utc(2024, 3, 11), utc(2024, 3, 12));
  expect_bounds(q, 0, 0, kDay);
  expect_bounds(q, -1, -kDay, 0);  // before the epoch
}

TEST(QuotaPeriod, WeekStartingSundayAndMonday) {
  // 2024-01-07 is a Sunday, 2024-01-08 a Monday.
  const QuotaLimit sunday = quota_of(10, Period::kWeek, 0);
  expect_bounds(sunday, just_before(2024, 1, 7), utc(2023, 12, 31), utc(2024, 1, 7));
  expect_bounds(sunday, utc(2024, 1, 7), utc(2024, 1, 7), utc(2024, 1, 14));
  expect_bounds(sunday, utc(2024, 1, 13, 12), utc(2024, 1, 7), utc(2024, 1, 14));

  const QuotaLimit monday = quota_of(10, Period::kWeek, 1);
  expect_bounds(monday, utc(2024, 1, 7), utc(2024, 1, 1), utc(2024, 1, 8));
  expect_bounds(monday, just_before(2024, 1, 8), utc(2024, 1, 1), utc(2024, 1, 8));
  expect_bounds(monday, utc(2024, 1, 8), utc(2024, 1, 8), utc(2024, 1, 15));

  const QuotaLimit saturday = quota_of(10, Period::kWeek, 6);
  expect_bounds(saturday, utc(2024, 1, 5, 23), utc(2023, 12, 30), utc(2024, 1, 6));
  expect_bounds(saturday, utc(2024, 1, 6), utc(2024, 1, 6), utc(2024, 1, 13));
  // 1970-01-01 was a Thursday.
  expect_bounds(sunday, 0, utc(1969, 12, 28), utc(1970, 1, 4));
}

TEST(QuotaPeriod, MonthOffsets) {
  const QuotaLimit m0 = quota_of(10, Period::kMonth, 0);
  // February in a leap year and in a non-leap year.
  expect_bounds(m0, utc(2024, 2, 29, 12), utc(2024, 2, 1), utc(2024, 3, 1));
  expect_bounds(m0, just_before(2024, 3, 1), utc(2024, 2, 1), utc(2024, 3, 1));
  expect_bounds(m0, just_before(2023, 3, 1), utc(2023, 2, 1), utc(2023, 3, 1));
  expect_bounds(m0, utc(2023, 3, 1), utc(2023, 3, 1), utc(2023, 4, 1));
  EXPECT_EQ(period_at(m0, utc(2024, 2, 10)).end - period_at(m0, utc(2024, 2, 10)).start, 29 * kDay);
  EXPECT_EQ(period_at(m0, utc(2023, 2, 10)).end - period_at(m0, utc(2023, 2, 10)).start, 28 * kDay);
  EXPECT_EQ(period_at(m0, utc(2100, 2, 10)).end - period_at(m0, utc(2100, 2, 10)).start,
            28 * kDay);  // 2100 is not a leap year
  // End of December.
  expect_bounds(m0, just_before(2024, 1, 1), utc(2023, 12, 1), utc(2024, 1, 1));
  expect_bounds(m0, utc(2024, 1, 1), utc(2024, 1, 1), utc(2024, 2, 1));

  const QuotaLimit m14 = quota_of(10, Period::kMonth, 14);  // starts on the 15th
  expect_bounds(m14, just_before(2024, 2, 15), utc(2024, 1, 15), utc(2024, 2, 15));
  expect_bounds(m14, utc(2024, 2, 15), utc(2024, 2, 15), utc(2024, 3, 15));
  expect_bounds(m14, utc(2024, 1, 10), utc(2023, 12, 15), utc(2024, 1, 15));  // across the year
  expect_bounds(m14, utc(2023, 12, 31, 23, 59, 59, 999'999'999), utc(2023, 12, 15),
                utc(2024, 1, 15));

  const QuotaLimit m27 = quota_of(10, Period::kMonth, 27);  // starts on the 28th
  expect_bounds(m27, utc(2023, 2, 28), utc(2023, 2, 28), utc(2023, 3, 28));
  expect_bounds(m27, just_before(2023, 2, 28), utc(2023, 1, 28), utc(2023, 2, 28));
  expect_bounds(m27, utc(2024, 2, 29), utc(2024, 2, 28), utc(2024, 3, 28));
  expect_bounds(m27, utc(2024, 3, 1), utc(2024, 2, 28), utc(2024, 3, 28));
}

TEST(QuotaPeriod, RandomizedProperties) {
  using namespace std::chrono;
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<Nanos> when(utc(1970, 1, 1), utc(2200, 1, 1));
  for (int i = 0; i < 20'000; ++i) {
    const auto period = static_cast<Period>(i % 3);
    const std::uint32_t offset = period == Period::kDay    ? 0
                                 : period == Period::kWeek ? static_cast<std::uint32_t>(rng() % 7)
                                                           : static_cast<std::uint32_t>(rng() % 28);
    const QuotaLimit q = quota_of(1, period, offset);
    const Nanos t = when(rng);
    const PeriodBounds b = period_at(q, t);
    ASSERT_LE(b.start, t);
    ASSERT_LT(t, b.end);
    ASSERT_EQ(b.start % kDay, 0);
    ASSERT_EQ(b.end % kDay, 0);
    const sys_days start{days{b.start / kDay}};
    switch (period) {
      case Period::kDay:
        ASSERT_EQ(b.end - b.start, kDay);
        break;
      case Period::kWeek:
        ASSERT_EQ(b.end - b.start, 7 * kDay);
        ASSERT_EQ(weekday{start}.c_encoding(), offset);
        break;
      case Period::kMonth:
        ASSERT_GE(b.end - b.start, 28 * kDay);
        ASSERT_LE(b.end - b.start, 31 * kDay);
        ASSERT_EQ(static_cast<unsigned>(year_month_day{start}.day()), offset + 1);
        break;
    }
    // Periods tile time: the neighbours meet exactly.
    const PeriodBounds at_start = period_at(q, b.start);
    ASSERT_EQ(at_start.start, b.start);
    ASSERT_EQ(at_start.end, b.end);
    ASSERT_EQ(period_at(q, b.start - 1).end, b.start);
    ASSERT_EQ(period_at(q, b.end).start, b.end);
    ASSERT_EQ(period_at(q, b.end - 1).start, b.start);
  }
}

// ---- quota cells ----------------------------------------------------------------------------

TEST(Quota, CountsAndResetsInANewPeriod) {
  const QuotaLimit q = quota_of(3, Period::kDay, 0);
  QuotaCell cell;
  const Nanos day1 = utc(2024, 5, 1, 10);
  for (std::uint64_t i = 1; i <= 3; ++i) {
    const QuotaState s = quota_try_consume(q, cell, day1);
    ASSERT_TRUE(s.allowed);
    EXPECT_EQ(s.used, i);
    EXPECT_EQ(s.remaining, 3 - i);
    EXPECT_EQ(s.reset_at, utc(2024, 5, 2));
  }
  QuotaState s = quota_try_consume(q, cell, day1);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.used, 3u);
  EXPECT_EQ(s.remaining, 0u);
  s = quota_try_consume(q, cell, just_before(2024, 5, 2));
  EXPECT_FALSE(s.allowed);

  s = quota_try_consume(q, cell, utc(2024, 5, 2));
  ASSERT_TRUE(s.allowed);
  EXPECT_EQ(s.used, 1u);
  EXPECT_EQ(s.remaining, 2u);
  EXPECT_EQ(s.reset_at, utc(2024, 5, 3));
  // Far later, a fresh period again.
  s = quota_try_consume(q, cell, utc(2031, 1, 1));
  EXPECT_TRUE(s.allowed);
  EXPECT_EQ(s.used, 1u);
}

TEST(Quota, MonthlyCounterAcrossFebruary) {
  const QuotaLimit q = quota_of(2, Period::kMonth, 0);
  QuotaCell cell;
  ASSERT_TRUE(quota_try_consume(q, cell, utc(2023, 2, 1)).allowed);
  ASSERT_TRUE(quota_try_consume(q, cell, utc(2023, 2, 28, 23)).allowed);
  EXPECT_FALSE(quota_try_consume(q, cell, just_before(2023, 3, 1)).allowed);
  const QuotaState s = quota_try_consume(q, cell, utc(2023, 3, 1));
  EXPECT_TRUE(s.allowed);
  EXPECT_EQ(s.used, 1u);
  EXPECT_EQ(s.reset_at, utc(2023, 4, 1));
}

TEST(Quota, PeekChangesNothing) {
  const QuotaLimit q = quota_of(2, Period::kDay, 0);
  QuotaCell cell;
  const Nanos now = utc(2024, 5, 1);
  QuotaState s = quota_peek(q, cell, now);
  EXPECT_TRUE(s.allowed);
  EXPECT_EQ(s.used, 1u);
  EXPECT_EQ(s.remaining, 1u);
  EXPECT_EQ(cell.state.load(), 0u);
  ASSERT_TRUE(quota_try_consume(q, cell, now).allowed);
  ASSERT_TRUE(quota_try_consume(q, cell, now).allowed);
  const std::uint64_t before = cell.state.load();
  s = quota_peek(q, cell, now);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.used, 2u);
  EXPECT_EQ(cell.state.load(), before);
}

TEST(Quota, RefundOnlyInTheSamePeriod) {
  const QuotaLimit q = quota_of(5, Period::kDay, 0);
  QuotaCell cell;
  const Nanos day1 = utc(2024, 5, 1, 12);
  ASSERT_TRUE(quota_try_consume(q, cell, day1).allowed);
  ASSERT_TRUE(quota_try_consume(q, cell, day1).allowed);
  quota_refund(q, cell, day1);
  EXPECT_EQ(quota_snapshot(q, cell, day1).used, 1u);
  quota_refund(q, cell, day1);
  quota_refund(q, cell, day1);  // never below zero
  EXPECT_EQ(quota_snapshot(q, cell, day1).used, 0u);

  ASSERT_TRUE(quota_try_consume(q, cell, day1).allowed);
  // A refund dated in the next period does not touch the ended one, nor the new one.
  quota_refund(q, cell, utc(2024, 5, 2));
  EXPECT_EQ(quota_snapshot(q, cell, day1).used, 1u);
  ASSERT_TRUE(quota_try_consume(q, cell, utc(2024, 5, 2)).allowed);
  quota_refund(q, cell, day1);  // dated in the ended period: the new period keeps its count
  EXPECT_EQ(quota_snapshot(q, cell, utc(2024, 5, 2)).used, 1u);
}

TEST(Quota, SkewedClockNeverGrantsAFreshPeriod) {
  const QuotaLimit q = quota_of(2, Period::kDay, 0);
  QuotaCell cell;
  ASSERT_TRUE(quota_try_consume(q, cell, utc(2024, 5, 2)).allowed);  // day 2 starts
  // A worker whose wall clock is 1 ns behind still counts in day 2, and does not reset it.
  QuotaState s = quota_try_consume(q, cell, just_before(2024, 5, 2));
  ASSERT_TRUE(s.allowed);
  EXPECT_EQ(s.used, 2u);
  EXPECT_EQ(s.reset_at, utc(2024, 5, 3));
  s = quota_try_consume(q, cell, just_before(2024, 5, 2));
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.reset_at, utc(2024, 5, 3));
  s = quota_try_consume(q, cell, utc(2024, 5, 2, 1));
  EXPECT_FALSE(s.allowed);
  const QuotaSnapshot snap = quota_snapshot(q, cell, just_before(2024, 5, 2));
  EXPECT_EQ(snap.period_start, utc(2024, 5, 2));
  EXPECT_EQ(snap.used, 2u);
}

TEST(Quota, FreshCellAndPreEpochTimes) {
  const QuotaLimit q = quota_of(1, Period::kDay, 0);
  QuotaCell cell;
  // Day 0 has sequence 0, like an empty cell: the count, not the sequence, says it is empty.
  ASSERT_TRUE(quota_try_consume(q, cell, 5).allowed);
  EXPECT_FALSE(quota_try_consume(q, cell, 6).allowed);
  QuotaCell old;
  ASSERT_TRUE(quota_try_consume(q, old, -5).allowed);  // 1969-12-31
  EXPECT_FALSE(quota_try_consume(q, old, -4).allowed);
  EXPECT_TRUE(quota_try_consume(q, old, 0).allowed);  // sequence wrapped from 2^24-1 to 0
}

TEST(Quota, LimitLoweredBelowCount) {
  QuotaLimit q = quota_of(5, Period::kDay, 0);
  QuotaCell cell;
  const Nanos now = utc(2024, 5, 1);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(quota_try_consume(q, cell, now).allowed);
  }
  q = quota_of(2, Period::kDay, 0);
  const QuotaState s = quota_try_consume(q, cell, now);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(s.used, 4u);
  EXPECT_EQ(s.remaining, 0u);
}

TEST(Quota, SnapshotAndRestore) {
  const QuotaLimit q = quota_of(100, Period::kWeek, 1);
  const Nanos now = utc(2024, 1, 10, 12);  // Wednesday; the week started Monday 2024-01-08
  const Nanos week = utc(2024, 1, 8);
  {
    QuotaCell cell;
    EXPECT_EQ(quota_snapshot(q, cell, now).period_start, week);
    EXPECT_EQ(quota_snapshot(q, cell, now).used, 0u);
    for (int i = 0; i < 7; ++i) {
      ASSERT_TRUE(quota_try_consume(q, cell, now).allowed);
    }
    const QuotaSnapshot s = quota_snapshot(q, cell, now);
    EXPECT_EQ(s.period_start, week);
    EXPECT_EQ(s.used, 7u);
    // Read later in the next week, the count has lapsed.
    EXPECT_EQ(quota_snapshot(q, cell, utc(2024, 1, 15)).used, 0u);
    EXPECT_EQ(quota_snapshot(q, cell, utc(2024, 1, 15)).period_start, utc(2024, 1, 15));
  }
  {
    QuotaCell cell;  // a restart in the same week
    quota_restore(q, cell, {week, 7}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).used, 7u);
    const QuotaState s = quota_try_consume(q, cell, now);
    EXPECT_EQ(s.used, 8u);
    // A smaller count for the same period does not lower it; a larger one raises it.
    quota_restore(q, cell, {week, 3}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).used, 8u);
    quota_restore(q, cell, {week, 50}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).used, 50u);
  }
  {
    QuotaCell cell;  // a restart in a later week: the old count is ignored
    quota_restore(q, cell, {week, 7}, utc(2024, 1, 15, 1));
    EXPECT_EQ(cell.state.load(), 0u);
    EXPECT_EQ(quota_snapshot(q, cell, utc(2024, 1, 15, 1)).used, 0u);
  }
  {
    QuotaCell cell;  // not the start of one of this quota's periods (Sunday, midday, ...)
    quota_restore(q, cell, {utc(2024, 1, 7), 7}, now);
    quota_restore(q, cell, {week + 1, 7}, now);
    quota_restore(q, cell, {week + kDay, 7}, now);
    quota_restore(q, cell, {week, 0}, now);
    EXPECT_EQ(cell.state.load(), 0u);
  }
  {
    QuotaCell cell;  // a count above what 40 bits hold is clamped
    quota_restore(q, cell, {week, std::numeric_limits<std::uint64_t>::max()}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).used, kMaxQuota);
    EXPECT_FALSE(quota_try_consume(q, cell, now).allowed);
  }
  {
    QuotaCell cell;  // a cell already counting the next week keeps it
    ASSERT_TRUE(quota_try_consume(q, cell, utc(2024, 1, 15)).allowed);
    quota_restore(q, cell, {week, 9}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).period_start, utc(2024, 1, 15));
    EXPECT_EQ(quota_snapshot(q, cell, now).used, 1u);
  }
  {
    QuotaCell cell;  // a snapshot from a later week (the clock stepped back) is kept
    quota_restore(q, cell, {utc(2024, 1, 15), 9}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).period_start, utc(2024, 1, 15));
    EXPECT_EQ(quota_peek(q, cell, now).used, 10u);
  }
  {
    QuotaCell cell;  // a cell counting an ended week is replaced
    ASSERT_TRUE(quota_try_consume(q, cell, utc(2024, 1, 3)).allowed);
    quota_restore(q, cell, {week, 4}, now);
    EXPECT_EQ(quota_snapshot(q, cell, now).used, 4u);
  }
}

// ---- gates ----------------------------------------------------------------------------------

TEST(Gate, EnterLeave) {
  Gate g;
  EXPECT_TRUE(g.try_enter(2));
  EXPECT_TRUE(g.try_enter(2));
  EXPECT_FALSE(g.try_enter(2));
  EXPECT_EQ(g.in_flight(), 2u);
  g.leave();
  EXPECT_TRUE(g.try_enter(2));
  g.leave();
  g.leave();
  g.leave();  // unmatched: stays at 0
  EXPECT_EQ(g.in_flight(), 0u);
  EXPECT_TRUE(g.try_enter(1));
}

TEST(Gate, ZeroIsUnlimitedButCounted) {
  Gate g;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(g.try_enter(0));
  }
  EXPECT_EQ(g.in_flight(), 1000u);
  EXPECT_FALSE(g.try_enter(1000));
  for (int i = 0; i < 1000; ++i) {
    g.leave();
  }
  EXPECT_EQ(g.in_flight(), 0u);
}

// ---- admission ------------------------------------------------------------------------------

TEST(Admission, RefusalCodes) {
  EXPECT_EQ(refusal_code(LayerKind::kAccount), "ThrottledAccount");
  EXPECT_EQ(refusal_code(LayerKind::kStage), "ThrottledStage");
  EXPECT_EQ(refusal_code(LayerKind::kRoute), "ThrottledRoute");
  EXPECT_EQ(refusal_code(LayerKind::kFunction), "ThrottledFunction");
  EXPECT_EQ(refusal_code(LayerKind::kKey), "ThrottledKey");
  EXPECT_EQ(refusal_code(LayerKind::kKeyRoute), "ThrottledKey");
  EXPECT_EQ(refusal_code(LayerKind::kClient), "ThrottledClient");
  EXPECT_EQ(refusal_code(LayerKind::kQuota), "QuotaExceeded");
  EXPECT_EQ(refusal_code(LayerKind::kConcurrency), "ConcurrencyLimit");
}

Layer rate_layer(LayerKind kind, const RateLimit& r, RateCell& c) {
  Layer l;
  l.kind = kind;
  l.rate = &r;
  l.rate_cell = &c;
  return l;
}

Layer quota_layer(const QuotaLimit& q, QuotaCell& c) {
  Layer l;
  l.kind = LayerKind::kQuota;
  l.quota = &q;
  l.quota_cell = &c;
  return l;
}

Layer gate_layer(Gate& g, std::uint32_t max) {
  Layer l;
  l.kind = LayerKind::kConcurrency;
  l.gate = &g;
  l.gate_max = max;
  return l;
}

constexpr Nanos kSteady = 5000 * kSec;
const Nanos kWall = utc(2024, 6, 15, 18);  // a Saturday; the day ends in 6 hours
constexpr Nanos kUntilMidnight = Nanos{6} * 3600 * kSec;

TEST(Admission, EmptyAndUnsetLayersAllow) {
  Admission a = admit({}, kSteady, kWall);
  EXPECT_TRUE(a.allowed);
  EXPECT_FALSE(a.has_tightest);
  const std::array<Layer, 2> unset{};
  a = admit(unset, kSteady, kWall);
  EXPECT_TRUE(a.allowed);
  EXPECT_FALSE(a.has_tightest);
  EXPECT_EQ(a.gates_entered, 0u);
}

TEST(Admission, AllAllowConsumesEveryLayerAndFindsTheTightest) {
  const RateLimit account = rate_of(100, 50);
  const RateLimit key = rate_of(10, 20);
  const QuotaLimit quota = quota_of(5, Period::kDay, 0);
  RateCell account_cell;
  RateCell key_cell;
  QuotaCell quota_cell;
  Gate gate;
  const std::array layers{rate_layer(LayerKind::kAccount, account, account_cell),
                          rate_layer(LayerKind::kKey, key, key_cell),
                          quota_layer(quota, quota_cell), gate_layer(gate, 10)};
  const Admission a = admit(layers, kSteady, kWall);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.retry_after, 0);
  EXPECT_EQ(account_cell.tat.load(), kSteady + account.interval);
  EXPECT_EQ(key_cell.tat.load(), kSteady + key.interval);
  EXPECT_EQ(quota_snapshot(quota, quota_cell, kWall).used, 1u);
  EXPECT_EQ(gate.in_flight(), 1u);
  EXPECT_EQ(a.gates_entered, 1u << 3);
  // Remaining: account 49, key 19, quota 4: the quota is tightest.
  ASSERT_TRUE(a.has_tightest);
  EXPECT_EQ(a.tightest, LayerKind::kQuota);
  EXPECT_EQ(a.limit, 5u);
  EXPECT_EQ(a.remaining, 4u);
  EXPECT_EQ(a.reset, kUntilMidnight);
  release(layers, a);
  EXPECT_EQ(gate.in_flight(), 0u);
}

TEST(Admission, TightestIsARateLayerWithItsReset) {
  const RateLimit account = rate_of(100, 50);
  const RateLimit route = rate_of(2, 3);  // T = 500 ms
  const QuotaLimit quota = quota_of(1000, Period::kMonth, 0);
  RateCell account_cell;
  RateCell route_cell;
  QuotaCell quota_cell;
  const std::array layers{rate_layer(LayerKind::kAccount, account, account_cell),
                          quota_layer(quota, quota_cell),
                          rate_layer(LayerKind::kRoute, route, route_cell)};
  Admission a = admit(layers, kSteady, kWall);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.tightest, LayerKind::kRoute);
  EXPECT_EQ(a.limit, 3u);
  EXPECT_EQ(a.remaining, 2u);
  EXPECT_EQ(a.reset, kSec / 2);
  a = admit(layers, kSteady, kWall);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.remaining, 1u);
  EXPECT_EQ(a.reset, kSec);
}

TEST(Admission, TightestTieGoesToTheFirstLayer) {
  const RateLimit r = rate_of(10, 4);
  const QuotaLimit q = quota_of(4, Period::kDay, 0);
  RateCell stage_cell;
  RateCell route_cell;
  QuotaCell quota_cell;
  const std::array layers{quota_layer(q, quota_cell), rate_layer(LayerKind::kStage, r, stage_cell),
                          rate_layer(LayerKind::kRoute, r, route_cell)};
  Admission a = admit(layers, kSteady, kWall);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.tightest, LayerKind::kQuota);
  EXPECT_EQ(a.remaining, 3u);
  const std::array swapped{rate_layer(LayerKind::kStage, r, stage_cell),
                           rate_layer(LayerKind::kRoute, r, route_cell),
                           quota_layer(q, quota_cell)};
  a = admit(swapped, kSteady, kWall);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.tightest, LayerKind::kStage);
  EXPECT_EQ(a.remaining, 2u);
}

TEST(Admission, MostRestrictiveDecidesAndRefusalConsumesNothing) {
  const RateLimit account = rate_of(100, 50);
  const RateLimit key = rate_of(1, 2);
  const QuotaLimit quota = quota_of(100, Period::kDay, 0);
  RateCell account_cell;
  RateCell key_cell;
  QuotaCell quota_cell;
  Gate gate;
  const std::array layers{rate_layer(LayerKind::kAccount, account, account_cell),
                          rate_layer(LayerKind::kKey, key, key_cell),
                          quota_layer(quota, quota_cell), gate_layer(gate, 10)};
  for (int i = 0; i < 2; ++i) {
    const Admission a = admit(layers, kSteady, kWall);
    ASSERT_TRUE(a.allowed);
    release(layers, a);
  }
  const Nanos account_tat = account_cell.tat.load();
  const Nanos key_tat = key_cell.tat.load();
  const std::uint64_t quota_state = quota_cell.state.load();
  for (int i = 0; i < 5; ++i) {
    const Admission a = admit(layers, kSteady + kSec / 4, kWall);
    ASSERT_FALSE(a.allowed);
    EXPECT_EQ(a.refused_by, LayerKind::kKey);
    EXPECT_EQ(refusal_code(a.refused_by), "ThrottledKey");
    EXPECT_EQ(a.retry_after, 3 * kSec / 4);  // the key's GCRA wait
    EXPECT_TRUE(a.has_tightest);
    EXPECT_EQ(a.tightest, LayerKind::kKey);
    EXPECT_EQ(a.limit, 2u);
    EXPECT_EQ(a.remaining, 0u);
    EXPECT_EQ(a.reset, 2 * kSec - kSec / 4);
    EXPECT_EQ(a.gates_entered, 0u);
  }
  EXPECT_EQ(account_cell.tat.load(), account_tat);
  EXPECT_EQ(key_cell.tat.load(), key_tat);
  EXPECT_EQ(quota_cell.state.load(), quota_state);
  EXPECT_EQ(gate.in_flight(), 0u);
  // One interval later the key lets one through again.
  EXPECT_TRUE(admit(layers, kSteady + kSec, kWall).allowed);
}

TEST(Admission, FirstRefusingLayerInOrderDecides) {
  const RateLimit tight = rate_of(1, 1);
  const QuotaLimit quota = quota_of(1, Period::kDay, 0);
  RateCell stage_cell;
  RateCell function_cell;
  QuotaCell quota_cell;
  const std::array layers{rate_layer(LayerKind::kStage, tight, stage_cell),
                          rate_layer(LayerKind::kFunction, tight, function_cell),
                          quota_layer(quota, quota_cell)};
  ASSERT_TRUE(admit(layers, kSteady, kWall).allowed);
  Admission a = admit(layers, kSteady, kWall);
  EXPECT_FALSE(a.allowed);
  EXPECT_EQ(a.refused_by, LayerKind::kStage);
  const std::array reversed{quota_layer(quota, quota_cell),
                            rate_layer(LayerKind::kFunction, tight, function_cell),
                            rate_layer(LayerKind::kStage, tight, stage_cell)};
  a = admit(reversed, kSteady, kWall);
  EXPECT_FALSE(a.allowed);
  EXPECT_EQ(a.refused_by, LayerKind::kQuota);
  EXPECT_EQ(refusal_code(a.refused_by), "QuotaExceeded");
  EXPECT_EQ(a.retry_after, kUntilMidnight);  // until the day ends
  EXPECT_EQ(a.reset, kUntilMidnight);
  EXPECT_EQ(a.limit, 1u);
  EXPECT_EQ(a.remaining, 0u);
}

TEST(Admission, QuotaRefusalLeavesEarlierRateLayersUntouched) {
  const RateLimit client = rate_of(10, 10);
  const QuotaLimit quota = quota_of(2, Period::kMonth, 14);
  RateCell client_cell;
  QuotaCell quota_cell;
  const std::array layers{rate_layer(LayerKind::kClient, client, client_cell),
                          quota_layer(quota, quota_cell)};
  ASSERT_TRUE(admit(layers, kSteady, kWall).allowed);
  ASSERT_TRUE(admit(layers, kSteady, kWall).allowed);
  const Nanos tat = client_cell.tat.load();
  const Admission a = admit(layers, kSteady, kWall);
  EXPECT_FALSE(a.allowed);
  EXPECT_EQ(a.refused_by, LayerKind::kQuota);
  EXPECT_EQ(a.retry_after, utc(2024, 7, 15) - kWall);
  EXPECT_EQ(client_cell.tat.load(), tat);
  // The new period admits again.
  EXPECT_TRUE(admit(layers, kSteady, utc(2024, 7, 15)).allowed);
}

TEST(Admission, ConcurrencyRefusalConsumesNothing) {
  const RateLimit route = rate_of(10, 10);
  const QuotaLimit quota = quota_of(10, Period::kDay, 0);
  RateCell route_cell;
  QuotaCell quota_cell;
  Gate gate;
  const std::array layers{rate_layer(LayerKind::kRoute, route, route_cell),
                          quota_layer(quota, quota_cell), gate_layer(gate, 2)};
  const Admission first = admit(layers, kSteady, kWall);
  const Admission second = admit(layers, kSteady, kWall);
  ASSERT_TRUE(first.allowed);
  ASSERT_TRUE(second.allowed);
  EXPECT_EQ(gate.in_flight(), 2u);
  const Nanos tat = route_cell.tat.load();
  const std::uint64_t qs = quota_cell.state.load();
  const Admission a = admit(layers, kSteady, kWall);
  EXPECT_FALSE(a.allowed);
  EXPECT_EQ(a.refused_by, LayerKind::kConcurrency);
  EXPECT_EQ(refusal_code(a.refused_by), "ConcurrencyLimit");
  EXPECT_EQ(a.retry_after, 0);
  EXPECT_FALSE(a.has_tightest);
  EXPECT_EQ(a.gates_entered, 0u);
  EXPECT_EQ(route_cell.tat.load(), tat);
  EXPECT_EQ(quota_cell.state.load(), qs);
  EXPECT_EQ(gate.in_flight(), 2u);
  release(layers, first);
  EXPECT_EQ(gate.in_flight(), 1u);
  const Admission third = admit(layers, kSteady, kWall);
  EXPECT_TRUE(third.allowed);
  release(layers, second);
  release(layers, third);
  EXPECT_EQ(gate.in_flight(), 0u);
}

TEST(Admission, SeveralGatesAndUnlimitedGate) {
  Gate function_gate;
  Gate account_gate;
  const std::array layers{gate_layer(account_gate, 0), gate_layer(function_gate, 1)};
  const Admission a = admit(layers, kSteady, kWall);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.gates_entered, 0b11u);
  EXPECT_EQ(account_gate.in_flight(), 1u);
  const Admission b = admit(layers, kSteady, kWall);
  EXPECT_FALSE(b.allowed);
  EXPECT_EQ(account_gate.in_flight(), 1u);  // checked before anything was entered
  release(layers, a);
  EXPECT_EQ(account_gate.in_flight(), 0u);
  EXPECT_EQ(function_gate.in_flight(), 0u);
}

// A request that passes the check pass but loses a layer in the consume pass gives back what it
// took. Listing the same cell twice makes that race deterministic: both checks see the last
// allowance, the first consume takes it, the second finds none.
TEST(Admission, LostRaceInConsumePassRefundsEverything) {
  const RateLimit account = rate_of(100, 50);
  const RateLimit key = rate_of(1, 3);
  const QuotaLimit quota = quota_of(100, Period::kWeek, 0);
  RateCell account_cell;
  RateCell key_cell;
  QuotaCell quota_cell;
  Gate gate;
  ASSERT_TRUE(try_consume(key, key_cell, kSteady).allowed);
  ASSERT_TRUE(try_consume(key, key_cell, kSteady).allowed);  // one allowance left
  const Nanos key_tat = key_cell.tat.load();
  const std::array layers{rate_layer(LayerKind::kAccount, account, account_cell),
                          quota_layer(quota, quota_cell), gate_layer(gate, 5),
                          rate_layer(LayerKind::kKey, key, key_cell),
                          rate_layer(LayerKind::kKeyRoute, key, key_cell)};
  const Admission a = admit(layers, kSteady, kWall);
  EXPECT_FALSE(a.allowed);
  EXPECT_EQ(a.refused_by, LayerKind::kKeyRoute);
  EXPECT_EQ(a.retry_after, key.interval);
  EXPECT_EQ(a.gates_entered, 0u);
  EXPECT_EQ(account_cell.tat.load(), kSteady);  // refunded: idle again at kSteady
  EXPECT_EQ(key_cell.tat.load(), key_tat);
  EXPECT_EQ(quota_snapshot(quota, quota_cell, kWall).used, 0u);
  EXPECT_EQ(gate.in_flight(), 0u);

  // The same with a quota cell and a gate listed twice.
  const QuotaLimit one = quota_of(1, Period::kDay, 0);
  QuotaCell one_cell;
  const std::array quotas{rate_layer(LayerKind::kAccount, account, account_cell),
                          quota_layer(one, one_cell), quota_layer(one, one_cell)};
  const Admission b = admit(quotas, kSteady, kWall);
  EXPECT_FALSE(b.allowed);
  EXPECT_EQ(b.refused_by, LayerKind::kQuota);
  EXPECT_EQ(account_cell.tat.load(), kSteady);
  EXPECT_EQ(one_cell.state.load() & kMaxQuota, 0u);

  Gate single;
  const std::array gates{gate_layer(gate, 5), gate_layer(single, 1), gate_layer(single, 1)};
  const Admission c = admit(gates, kSteady, kWall);
  EXPECT_FALSE(c.allowed);
  EXPECT_EQ(c.refused_by, LayerKind::kConcurrency);
  EXPECT_EQ(gate.in_flight(), 0u);
  EXPECT_EQ(single.in_flight(), 0u);
}

TEST(AdmissionDeathTest, TooManyLayersAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::array<Layer, kMaxLayers + 1> layers{};
  EXPECT_DEATH((void)admit(layers, kSteady, kWall), "");
}

// ---- threads --------------------------------------------------------------------------------

constexpr int kThreads = 4;

// Runs `body(thread_index)` on kThreads threads released together.
template <class F>
void hammer(F body) {
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      body(t);
    });
  }
  for (auto& th : threads) {
    th.join();
  }
}

TEST(Threads, SharedRateCellAdmitsExactlyBurst) {
  const RateLimit r = rate_of(1, 1000);
  RateCell cell;
  std::atomic<int> allowed{0};
  hammer([&](int) {
    for (int i = 0; i < 1000; ++i) {
      if (try_consume(r, cell, kSteady).allowed) {
        allowed.fetch_add(1);
      }
    }
  });
  EXPECT_EQ(allowed.load(), 1000);
  EXPECT_EQ(cell.tat.load(), kSteady + 1000 * r.interval);
}

TEST(Threads, SharedQuotaCellAdmitsExactlyLimit) {
  const QuotaLimit q = quota_of(777, Period::kMonth, 3);
  QuotaCell cell;
  std::atomic<int> allowed{0};
  hammer([&](int) {
    for (int i = 0; i < 1000; ++i) {
      if (quota_try_consume(q, cell, kWall).allowed) {
        allowed.fetch_add(1);
      }
    }
  });
  EXPECT_EQ(allowed.load(), 777);
  EXPECT_EQ(quota_snapshot(q, cell, kWall).used, 777u);
}

// The binding layer comes last, so requests that lose it in the consume pass must give back
// the earlier layers: at the end every cell shows exactly the admitted requests.
TEST(Threads, AdmitNeverOverAdmitsAndRefundsStayConsistent) {
  for (int round = 0; round < 20; ++round) {
    const RateLimit account = rate_of(1000, 1000);
    const RateLimit key = rate_of(1, 50);
    const QuotaLimit quota = quota_of(1000, Period::kDay, 0);
    RateCell account_cell;
    RateCell key_cell;
    QuotaCell quota_cell;
    Gate gate;
    const std::array layers{rate_layer(LayerKind::kAccount, account, account_cell),
                            quota_layer(quota, quota_cell), gate_layer(gate, 0),
                            rate_layer(LayerKind::kKey, key, key_cell)};
    std::atomic<int> allowed{0};
    hammer([&](int) {
      for (int i = 0; i < 500; ++i) {
        const Admission a = admit(layers, kSteady, kWall);
        if (a.allowed) {
          allowed.fetch_add(1);
          release(layers, a);
        } else {
          EXPECT_EQ(a.refused_by, LayerKind::kKey);
        }
      }
    });
    ASSERT_EQ(allowed.load(), 50);
    EXPECT_EQ(key_cell.tat.load(), kSteady + 50 * key.interval);
    EXPECT_EQ(account_cell.tat.load(), kSteady + 50 * account.interval);
    EXPECT_EQ(quota_snapshot(quota, quota_cell, kWall).used, 50u);
    EXPECT_EQ(gate.in_flight(), 0u);
  }
}

// A gate of 1 released at once: many requests pass its check together and all but one lose it
// in the consume pass (hundreds of refunds per run on 2 cores). Whatever the interleaving, the
// earlier layers must end up counting exactly the admitted requests.
TEST(Threads, LostGateRacesRefundEarlierLayers) {
  for (int round = 0; round < 5; ++round) {
    const RateLimit account = rate_of(1000, 1'000'000);
    const QuotaLimit quota = quota_of(1'000'000, Period::kDay, 0);
    RateCell account_cell;
    QuotaCell quota_cell;
    Gate gate;
    const std::array layers{rate_layer(LayerKind::kAccount, account, account_cell),
                            quota_layer(quota, quota_cell), gate_layer(gate, 1)};
    std::atomic<int> allowed{0};
    hammer([&](int) {
      for (int i = 0; i < 4000; ++i) {
        const Admission a = admit(layers, kSteady, kWall);
        if (a.allowed) {
          allowed.fetch_add(1);
          release(layers, a);
        } else {
          EXPECT_EQ(a.refused_by, LayerKind::kConcurrency);
        }
      }
    });
    const int n = allowed.load();
    EXPECT_GT(n, 0);
    EXPECT_EQ(account_cell.tat.load(), kSteady + n * account.interval);
    EXPECT_EQ(quota_snapshot(quota, quota_cell, kWall).used, static_cast<std::uint64_t>(n));
    EXPECT_EQ(gate.in_flight(), 0u);
  }
}

TEST(Threads, GateBoundsInFlight) {
  const RateLimit r = rate_of(1e9, 1'000'000);
  RateCell cell;
  Gate gate;
  const std::array layers{rate_layer(LayerKind::kFunction, r, cell), gate_layer(gate, 2)};
  std::atomic<std::uint32_t> max_seen{0};
  std::atomic<int> allowed{0};
  hammer([&](int) {
    for (int i = 0; i < 5000; ++i) {
      const Admission a = admit(layers, kSteady, kWall);
      if (!a.allowed) {
        EXPECT_EQ(a.refused_by, LayerKind::kConcurrency);
        continue;
      }
      allowed.fetch_add(1);
      const std::uint32_t n = gate.in_flight();
      std::uint32_t m = max_seen.load();
      while (n > m && !max_seen.compare_exchange_weak(m, n)) {
      }
      release(layers, a);
    }
  });
  EXPECT_LE(max_seen.load(), 2u);
  EXPECT_GE(max_seen.load(), 1u);
  EXPECT_GT(allowed.load(), 0);
  EXPECT_EQ(gate.in_flight(), 0u);
}

}  // namespace
}  // namespace gatehouse::limits
