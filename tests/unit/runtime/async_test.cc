// Asynchronous invocations against an in-memory store and a real Runtime running tiny /bin/sh
// exec functions: refusals before anything is queued, retries then a dead letter, replay, and
// hostile queue messages and dead-letter records (what another process or a damaged database
// could leave in the store).
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "runtime/runtime.h"
#include "store/store.h"

namespace gatehouse::runtime {
namespace {

using namespace std::chrono_literals;

config::Config load(std::string_view yaml) {
  auto c = config::load_string(yaml, "async_test.yaml");
  EXPECT_TRUE(c.has_value());
  return c ? *c : config::Config{};
}

Invocation event(std::string function, std::string payload, CallerContext caller) {
  Invocation inv;
  inv.function = std::move(function);
  inv.payload = std::move(payload);
  inv.caller = std::move(caller);
  return inv;
}

// Polls `pred` until it holds or 20 s pass (real processes run here).
template <typename Pred>
bool eventually(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) {
      return true;
    }
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

class AsyncTest : public ::testing::Test {
 protected:
  void open_store() {
    auto s = store::open("sqlite://:memory:", core::system_clock());
    ASSERT_TRUE(s.has_value()) << s.error().message;
    store_ = std::move(*s);
  }
  void start(const config::Config& c) {
    Options o;
    o.drop_privileges_when_root = false;
    auto rt = Runtime::create(c, o);
    ASSERT_TRUE(rt.has_value()) << rt.error().message;
    runtime_ = std::move(*rt);
    auto a = AsyncInvoker::create(*store_, *runtime_, c);
    ASSERT_TRUE(a.has_value()) << a.error().message;
    async_ = std::move(*a);
  }
  void TearDown() override {
    if (runtime_) {
      runtime_->stop();
    }
    async_.reset();
    runtime_.reset();
  }
  core::Result<AcceptedEvent> submit(Invocation inv) {
    std::promise<core::Result<AcceptedEvent>> p;
    auto f = p.get_future();
    async_->submit(std::move(inv),
                   [&p](core::Result<AcceptedEvent> r) { p.set_value(std::move(r)); });
    return f.get();
  }
  std::int64_t depth(std::string_view function) {
    auto n = store_->queue_size("async:" + std::string(function));
    return n ? *n : -1;
  }
  std::vector<DeadLetter> letters(std::string_view function) {
    auto l = list_dead_letters(*store_, function, 100);
    EXPECT_TRUE(l.has_value());
    return l ? *l : std::vector<DeadLetter>{};
  }

  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<AsyncInvoker> async_;
};

TEST_F(AsyncTest, EnqueueRefusesBeforeWritingAnything) {
  open_store();
  const config::Config c = load(R"(
runtime: {max_lineage_depth: 3}
functions:
  - {name: job, runtime: exec, command: [/bin/cat], async: {max_depth: 2}}
  - {name: limits}
)");
  const CallerContext admin = admin_caller(c);
  EXPECT_EQ(enqueue_event(*store_, c, event("nope", "{}", admin)).error().code,
            core::ErrorCode::kNotFound);
  EXPECT_EQ(enqueue_event(*store_, c, event("limits", "{}", admin)).error().code,
            core::ErrorCode::kNotFound);
  CallerContext deep = admin;
  deep.depth = 4;
  EXPECT_EQ(enqueue_event(*store_, c, event("job", "{}", deep)).error().code,
            core::ErrorCode::kRecursiveInvocation);
  // A trigger without an identity policy, and no resource policy: denied, whatever it claims.
  CallerContext trigger;
  trigger.source = SourceKind::kTrigger;
  trigger.source_name = "uploads";
  Invocation forged = event("job", "{}", trigger);
  forged.authorized_at_accept = true;  // only the dispatcher's own runs skip the check
  EXPECT_EQ(enqueue_event(*store_, c, forged).error().code, core::ErrorCode::kForbidden);
  EXPECT_EQ(depth("job"), 0);

  auto a = enqueue_event(*store_, c, event("job", "{}", admin));
  ASSERT_TRUE(a.has_value()) << a.error().message;
  EXPECT_EQ(a->event_id.size(), 32U);
  ASSERT_TRUE(enqueue_event(*store_, c, event("job", "{}", admin)).has_value());
  EXPECT_EQ(enqueue_event(*store_, c, event("job", "{}", admin)).error().code,
            core::ErrorCode::kTooManyRequests);
  EXPECT_EQ(depth("job"), 2);
}

TEST_F(AsyncTest, FailuresAreRetriedThenDeadLetteredAndReplayed) {
  open_store();
  const config::Config c = load(R"(
functions:
  - name: fail
    runtime: exec
    command: [/bin/sh, -c, "cat >/dev/null; echo boom >&2; exit 3"]
    async: {max_retries: 2, backoff_s: 0}
)");
  start(c);
  CallerContext admin = admin_caller(c);
  admin.request_id = "req-1";
  auto a = submit(event("fail", R"({"k":1})", admin));
  ASSERT_TRUE(a.has_value()) << a.error().message;
  ASSERT_TRUE(eventually([&] { return letters("fail").size() == 1; }));
  DeadLetter d = letters("fail")[0];
  EXPECT_EQ(d.event_id, a->event_id);
  EXPECT_EQ(d.reason, "RetriesExhausted");
  EXPECT_EQ(d.error_type, "Runtime.ExitError");
  EXPECT_EQ(d.attempts, 3U);
  EXPECT_EQ(d.replays, 0U);
  EXPECT_EQ(d.payload, R"({"k":1})");
  EXPECT_EQ(d.caller.principal, admin.principal);
  EXPECT_EQ(d.caller.request_id, "req-1");
  EXPECT_EQ(d.caller.source, SourceKind::kDirect);
  EXPECT_TRUE(eventually([&] { return depth("fail") == 0; }));
  const std::string m = async_->metrics_text();
  EXPECT_NE(m.find(R"(gatehouse_async_events_total{function="fail",result="retried"} 2)"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find(R"(gatehouse_async_events_total{function="fail",result="dead_lettered"} 1)"),
            std::string::npos)
      << m;

  // A replay keeps the event id, runs all attempts again, and counts itself.
  auto r = async_->replay("fail", d.event_id);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->event_id, d.event_id);
  ASSERT_TRUE(eventually([&] {
    auto l = letters("fail");
    return l.size() == 1 && l[0].replays == 1;
  }));
  EXPECT_EQ(letters("fail")[0].attempts, 3U);
  EXPECT_EQ(async_->replay("fail", "0123").error().code, core::ErrorCode::kNotFound);
  EXPECT_EQ(async_->replay("nope", d.event_id).error().code, core::ErrorCode::kNotFound);
}

TEST_F(AsyncTest, HostileQueueMessagesAreDroppedAndGoodEventsStillRun) {
  open_store();
  const config::Config c = load(R"(
functions:
  - {name: job, runtime: exec, command: [/bin/cat], async: {max_retries: 0, backoff_s: 0}}
  - {name: other, runtime: exec, command: [/bin/sh, -c, "exit 9"]}
)");
  const std::string deep(100'000, '[');
  const std::string long_id(2000, 'a');
  const std::vector<std::string> hostile{
      "",
      "not json",
      "[]",
      "{}",
      deep,
      R"({"id":"0123abcd","function":"other","payload":"{}"})",  // another function's event
      R"({"id":"../../x","function":"job","payload":"{}"})",
      R"({"id":")" + long_id + R"(","function":"job","payload":"{}"})",
      R"({"id":"ABC","function":"job"})",
      R"({"id":5,"function":"job"})",
  };
  for (const auto& h : hostile) {
    ASSERT_TRUE(store_->write_sync({store::Enqueue{"async:job", h, {}}}).has_value());
  }
  // Decodable but odd: wrong types and out-of-range numbers are read as defaults (payload "",
  // so /bin/cat answers nothing: an invalid response, dead-lettered with no retries).
  ASSERT_TRUE(store_
                  ->write_sync({store::Enqueue{
                      "async:job",
                      R"({"id":"0badc0de","function":"job","payload":7,"attempts":-5,)"
                      R"("replays":1e300,"enqueued_ms":"x","caller":{"source":99,"depth":1e308,)"
                      R"("principal":["x"],"principal_tags":[[1,2],["a"],"b",["k","v"]]}})",
                      {}}})
                  .has_value());
  start(c);
  auto good = submit(event("job", R"({"good":true})", admin_caller(c)));
  ASSERT_TRUE(good.has_value()) << good.error().message;
  ASSERT_TRUE(eventually([&] { return depth("job") == 0; })) << depth("job");
  const std::string m = async_->metrics_text();
  EXPECT_NE(m.find(R"(gatehouse_async_events_total{function="job",result="succeeded"} 1)"),
            std::string::npos)
      << m;
  auto l = letters("job");
  ASSERT_EQ(l.size(), 1U);
  EXPECT_EQ(l[0].event_id, "0badc0de");
  EXPECT_EQ(l[0].caller.source, SourceKind::kWorkflow);  // 99 clamped to the last kind
  EXPECT_EQ(l[0].caller.depth, 1U);
  ASSERT_EQ(l[0].caller.principal_tags.size(), 1U);
  EXPECT_EQ(l[0].caller.principal_tags[0], (std::pair<std::string, std::string>{"k", "v"}));
  EXPECT_TRUE(letters("other").empty());  // the forged "other" event never ran
}

TEST_F(AsyncTest, CorruptDeadLettersAreSkippedAndNotReplayed) {
  open_store();
  const config::Config c =
      load("functions:\n  - {name: job, runtime: exec, command: [/bin/cat]}\n");
  DeadLetter ok;
  ok.event_id = "00ff";
  ok.function = "job";
  ok.payload = "{}";
  ok.caller = admin_caller(c);
  ok.reason = "RetriesExhausted";
  ok.failed_at_ms = 2;
  DeadLetter bad_id = ok;
  bad_id.event_id = "NOT/HEX";
  ASSERT_TRUE(store_
                  ->write_sync({store::Put{"dead_letters", "job/garbage", "{not json"},
                                store::Put{"dead_letters", "job/array", "[1]"},
                                store::Put{"dead_letters", "job/00ff", dead_letter_json(ok)},
                                store::Put{"dead_letters", "job/bad", dead_letter_json(bad_id)},
                                store::Put{"dead_letters", "jobs/00ff", dead_letter_json(ok)}})
                  .has_value());
  auto l = letters("job");
  ASSERT_EQ(l.size(), 2U);  // the two decodable records of "job/", not "jobs/"
  EXPECT_EQ(replay_dead_letter(*store_, c, "job", "garbage").error().code, core::ErrorCode::kIo);
  EXPECT_EQ(replay_dead_letter(*store_, c, "job", "bad").error().code, core::ErrorCode::kIo);
  auto r = replay_dead_letter(*store_, c, "job", "00ff");
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->event_id, "00ff");
  EXPECT_EQ(depth("job"), 1);
  EXPECT_EQ(replay_dead_letter(*store_, c, "job", "00ff").error().code,
            core::ErrorCode::kNotFound);
}

}  // namespace
}  // namespace gatehouse::runtime
