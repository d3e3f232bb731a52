// The gateway's limiter with a manual clock: quota periods reset by the clock, refusal headers,
// no consumption on refusal, quota persistence across a restart.

#include "gateway/limiter.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "policy/policy.h"

namespace gatehouse::gateway {
namespace {

using std::chrono::seconds;

config::RateConfig rate(double r, std::uint32_t burst) {
  config::RateConfig c;
  c.set = true;
  c.rate = r;
  c.burst = burst;
  return c;
}

config::Config make_config() {
  config::Config c;
  config::Plan metered;
  metered.name = "metered";
  metered.quota.set = true;
  metered.quota.limit = 3;
  metered.quota.period = "DAY";
  config::Plan slow;
  slow.name = "slow";
  slow.throttle = rate(1, 2);
  c.plans = {metered, slow};
  config::FunctionConfig fn;
  fn.name = "fn";
  fn.throttle = rate(0.001, 1);
  c.functions = {fn};
  config::Route keyed;
  keyed.name = "keyed";
  keyed.methods = {"GET"};
  keyed.path = "/k";
  keyed.api_key = config::ApiKeyMode::kRequired;
  config::Route func = keyed;
  func.name = "func";
  func.path = "/f";
  func.target.function = "fn";
  func.api_key = config::ApiKeyMode::kNone;
  c.routes = {keyed, func};
  return c;
}

class LimiterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("gh-limiter-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    // 2026-03-10 23:59:58 UTC: two seconds before a day boundary.
    clock_.set_wall(std::chrono::sys_days{std::chrono::year{2026} / 3 / 10} +
                    std::chrono::hours(23) + std::chrono::minutes(59) + seconds(58));
    open();
  }
  void TearDown() override {
    limiter_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void open() {
    auto s = store::open("sqlite://" + (dir_ / "gh.db").string(), clock_);
    ASSERT_TRUE(s.has_value()) << s.error().message;
    store_ = std::move(*s);
    limiter_ = std::make_unique<Limiter>(*store_, clock_, 1);
    auto t = limiter_->compile(make_config());
    ASSERT_TRUE(t.has_value()) << t.error().message;
    table_ = *t;
    limiter_->activate(table_);
  }
  void start() {
    ASSERT_TRUE(
        limiter_
            ->start(std::chrono::milliseconds(10), [](std::function<void(unsigned)> fn) { fn(0); })
            .has_value());
  }
  // A graceful stop (the last quota counts are written), then the store and limiter reopened.
  void restart() {
    limiter_->stop();
    limiter_.reset();
    store_.reset();
    open();
    start();
  }
  std::string create_key(const std::string& plan, std::vector<std::string> stages = {}) {
    auth::KeyRegistry reg(*store_, clock_);
    auto k = reg.create("k", plan, std::move(stages));
    EXPECT_TRUE(k.has_value());
    return k->key;
  }

  // One request through authenticate + admit (+ release when admitted).
  Verdict call(std::uint32_t route, const std::string& key, Refusal& out,
               std::string_view stage = {}) {
    http::Header h{"x-api-key", key};
    http::Request req;
    req.headers = std::span<const http::Header>(&h, key.empty() ? 0 : 1);
    RequestContext ctx;
    ctx.request = &req;
    ctx.limits = table_.get();
    ctx.route_index = route;
    ctx.remote_ip = "127.0.0.1";
    ctx.match.stage = stage;
    principal_.clear();
    if (limiter_->authenticate(ctx, out) == Verdict::kRefuse) {
      return Verdict::kRefuse;
    }
    principal_ = ctx.principal_arn;
    const Verdict v = limiter_->admit(ctx, out);
    if (v == Verdict::kContinue) {
      limiter_->release(ctx);
    } else {
      headers_ = std::string(out.extra_headers);
    }
    return v;
  }

  std::filesystem::path dir_;
  core::ManualClock clock_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Limiter> limiter_;
  std::shared_ptr<const LimitTable> table_;
  std::string headers_;
  std::string principal_;
};

TEST_F(LimiterTest, QuotaResetsAtTheUtcDayBoundary) {
  const auto key = create_key("metered");
  start();
  Refusal r;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(call(0, key, r), Verdict::kContinue) << i;
  }
  ASSERT_EQ(call(0, key, r), Verdict::kRefuse);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.code, "QuotaExceeded");
  EXPECT_NE(headers_.find("Retry-After: 2\r\n"), std::string::npos) << headers_;
  EXPECT_NE(headers_.find("RateLimit-Policy: 3;w=86400\r\n"), std::string::npos) << headers_;
  EXPECT_NE(headers_.find("RateLimit: limit=3, remaining=0, reset=2\r\n"), std::string::npos)
      << headers_;
  clock_.advance(seconds(1));
  EXPECT_EQ(call(0, key, r), Verdict::kRefuse);
  clock_.advance(seconds(1));  // 00:00:00 the next day
  EXPECT_EQ(call(0, key, r), Verdict::kContinue);
}

TEST_F(LimiterTest, KeyThrottleRetryAfterAndNoConsumptionOnRefusal) {
  const auto key = create_key("slow");
  start();
  Refusal r;
  EXPECT_EQ(call(0, key, r), Verdict::kContinue);
  EXPECT_EQ(call(0, key, r), Verdict::kContinue);
  ASSERT_EQ(call(0, key, r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ThrottledKey");
  EXPECT_NE(headers_.find("Retry-After: 1\r\n"), std::string::npos) << headers_;
  EXPECT_NE(headers_.find("RateLimit-Policy: 2;w=2\r\n"), std::string::npos) << headers_;
  // Refusals consumed nothing: one interval later exactly one request passes.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(call(0, key, r), Verdict::kRefuse);
  }
  clock_.advance(seconds(1));
  EXPECT_EQ(call(0, key, r), Verdict::kContinue);
  EXPECT_EQ(call(0, key, r), Verdict::kRefuse);
}

TEST_F(LimiterTest, MissingAndInvalidKeys) {
  start();
  Refusal r;
  EXPECT_EQ(call(0, "", r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ApiKeyMissing");
  EXPECT_EQ(call(0, "ghk_0123456789abcdef_" + std::string(48, '0'), r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ApiKeyInvalid");
  // The function route takes no key: its own limit applies (burst 1).
  EXPECT_EQ(call(1, "", r), Verdict::kContinue);
  EXPECT_EQ(call(1, "", r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ThrottledFunction");
}

// What authenticate() takes from the key's index slot rather than its record: the plan (by
// plan id, stable across config reloads), whether the key has stages of its own, and the id the
// principal ARN is made of.
TEST_F(LimiterTest, PlanStagesAndPrincipalComeFromTheKeysSlot) {
  const auto any_stage = create_key("slow");
  const auto prod_only = create_key("slow", {"prod"});
  const auto later = create_key("later");  // a plan the config does not have yet
  start();
  Refusal r;
  ASSERT_EQ(call(0, any_stage, r, "dev"), Verdict::kContinue);
  const std::string id = any_stage.substr(4, 16);
  EXPECT_EQ(principal_, policy::api_key_arn(make_config().account_id, id));
  EXPECT_EQ(call(0, prod_only, r, "prod"), Verdict::kContinue);
  EXPECT_EQ(principal_.substr(principal_.size() - 16), prod_only.substr(4, 16));
  EXPECT_EQ(call(0, prod_only, r, "dev"), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ApiKeyNotAuthorized");
  EXPECT_EQ(call(0, later, r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ApiKeyNotAuthorized");
  EXPECT_EQ(r.message, "the key's usage plan does not exist");
  // A reload that adds the plan (and lists the others in another order) serves the key at once,
  // and the other keys keep their plans.
  auto c = make_config();
  config::Plan p;
  p.name = "later";
  p.throttle = rate(1, 1);
  c.plans.insert(c.plans.begin(), p);
  std::swap(c.plans[1], c.plans[2]);
  auto t = limiter_->compile(c);
  ASSERT_TRUE(t.has_value()) << t.error().message;
  table_ = *t;
  limiter_->activate(table_);
  EXPECT_EQ(call(0, later, r), Verdict::kContinue);
  EXPECT_EQ(call(0, later, r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ThrottledKey");
  EXPECT_EQ(call(0, any_stage, r), Verdict::kContinue);  // slow: burst 2, one used above
  EXPECT_EQ(call(0, any_stage, r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "ThrottledKey");
}

TEST_F(LimiterTest, QuotaCountSurvivesARestart) {
  const auto key = create_key("metered");
  start();
  Refusal r;
  ASSERT_EQ(call(0, key, r), Verdict::kContinue);
  ASSERT_EQ(call(0, key, r), Verdict::kContinue);
  restart();
  EXPECT_EQ(call(0, key, r), Verdict::kContinue);
  EXPECT_EQ(call(0, key, r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "QuotaExceeded");
}

// The flusher writes only keys whose plan has a quota; a key moved onto such a plan after start
// is written from then on (its list is rebuilt when the keys change).
TEST_F(LimiterTest, AKeyMovedOntoAQuotaPlanIsFlushed) {
  const auto key = create_key("slow");
  start();
  Refusal r;
  ASSERT_EQ(call(0, key, r), Verdict::kContinue);
  // Let the flusher (every 10 ms here) run with the key still on a plan without a quota.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auth::KeyRegistry reg(*store_, clock_);
  ASSERT_TRUE(reg.attach(key.substr(4, 16), "metered", {}).has_value());
  limiter_->reload_keys();
  ASSERT_EQ(call(0, key, r), Verdict::kContinue);
  ASSERT_EQ(call(0, key, r), Verdict::kContinue);
  restart();
  // Two of metered's three were used before the restart.
  EXPECT_EQ(call(0, key, r), Verdict::kContinue);
  EXPECT_EQ(call(0, key, r), Verdict::kRefuse);
  EXPECT_EQ(r.code, "QuotaExceeded");
}

}  // namespace
}  // namespace gatehouse::gateway
