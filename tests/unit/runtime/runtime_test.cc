// The supervisor's decisions with real (tiny) processes: /bin/cat and /bin/sh as exec functions.
#include "runtime/runtime.h"

#include <gtest/gtest.h>

#include <future>
#include <string>

namespace gatehouse::runtime {
namespace {

config::FunctionConfig exec_function(std::string name, std::vector<std::string> command) {
  config::FunctionConfig f;
  f.name = std::move(name);
  f.runtime = config::FunctionRuntime::kExec;
  f.command = std::move(command);
  f.timeout_s = 5;
  return f;
}

InvokeResult call(Runtime& rt, std::string function, std::string payload, CallerContext caller) {
  std::promise<InvokeResult> p;
  auto f = p.get_future();
  rt.invoke(Invocation{std::move(function), std::move(payload), std::move(caller)},
            [&p](InvokeResult r) { p.set_value(std::move(r)); });
  return f.get();
}

// The admin API's caller: no admin.policies, so allowed everything.
CallerContext admin() { return admin_caller(config::Config{}); }

class RuntimeTest : public ::testing::Test {
 protected:
  void start(config::Config c) {
    Options o;
    o.drop_privileges_when_root = false;  // /bin is readable anyway; keep the test simple
    auto r = Runtime::create(c, o);
    ASSERT_TRUE(r.has_value());
    rt_ = std::move(*r);
  }
  std::unique_ptr<Runtime> rt_;
};

TEST_F(RuntimeTest, ExecFunctionReturnsItsStdout) {
  config::Config c;
  c.functions.push_back(exec_function("cat", {"/bin/cat"}));
  start(c);
  const auto r = call(*rt_, "cat", R"({"a":1})", admin());
  ASSERT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.payload, R"({"a":1})");
  EXPECT_TRUE(r.cold_start);
}

TEST_F(RuntimeTest, NonJsonOutputAndNonZeroExitAreFunctionErrors) {
  config::Config c;
  c.functions.push_back(exec_function("text", {"/bin/sh", "-c", "echo not-json"}));
  c.functions.push_back(exec_function("fail", {"/bin/sh", "-c", "exit 3"}));
  start(c);
  auto r = call(*rt_, "text", "{}", admin());
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.code, core::ErrorCode::kFunctionError);
  EXPECT_EQ(r.error_type, "Runtime.InvalidResponse");
  r = call(*rt_, "fail", "{}", admin());
  EXPECT_EQ(r.error_type, "Runtime.ExitError");
  EXPECT_NE(r.message.find("exited with code 3"), std::string::npos);
}

TEST_F(RuntimeTest, RefusalsComeBeforeAnyProcess) {
  // `invokers` is a shorthand the config load translates into a resource policy.
  auto loaded = config::load_string(R"(
runtime: {max_lineage_depth: 2}
functions:
  - name: private
    runtime: exec
    command: [/bin/cat]
    invokers: ["workflow:orders-*", "principal:arn:gatehouse:iam::000000000000:role/ops"]
  - name: open
    runtime: exec
    command: [/bin/cat]
  - name: limits
)",
                                    "test.yaml");
  ASSERT_TRUE(loaded.has_value());
  const config::Config& c = *loaded;
  start(c);

  EXPECT_EQ(call(*rt_, "nope", "{}", admin()).code, core::ErrorCode::kNotFound);
  EXPECT_EQ(call(*rt_, "limits", "{}", admin()).code, core::ErrorCode::kNotFound);

  CallerContext deep = admin();
  deep.depth = 3;
  EXPECT_EQ(call(*rt_, "open", "{}", deep).code, core::ErrorCode::kRecursiveInvocation);

  CallerContext trigger;
  trigger.source = SourceKind::kTrigger;
  trigger.source_name = "uploads";
  const InvokeResult refused = call(*rt_, "private", "{}", trigger);
  EXPECT_EQ(refused.code, core::ErrorCode::kForbidden);
  EXPECT_EQ(refused.error_type, "AccessDenied");
  EXPECT_NE(refused.message.find("implicit deny"), std::string::npos) << refused.message;
  // Without `invokers` or `policy`, only routes (and the admin) may call.
  EXPECT_EQ(call(*rt_, "open", "{}", trigger).code, core::ErrorCode::kForbidden);
  EXPECT_TRUE(call(*rt_, "open", "{}", admin()).ok);
  CallerContext route;
  route.source = SourceKind::kRoute;
  route.source_name = "r";
  EXPECT_TRUE(call(*rt_, "open", "{}", route).ok);
  // The admin's allow-all identity policy reaches a function with invokers, too.
  EXPECT_TRUE(call(*rt_, "private", "{}", admin()).ok);

  CallerContext step;
  step.source = SourceKind::kWorkflow;
  step.source_name = "orders-v2";
  EXPECT_TRUE(call(*rt_, "private", "{}", step).ok);
  step.source_name = "order";  // the wildcard is a suffix, not a substring
  EXPECT_EQ(call(*rt_, "private", "{}", step).code, core::ErrorCode::kForbidden);
  CallerContext ops = role_caller(c, "ops");
  ops.source = SourceKind::kTrigger;
  ops.source_name = "x";
  EXPECT_TRUE(call(*rt_, "private", "{}", ops).ok);
  CallerContext dev = role_caller(c, "dev");
  dev.source = SourceKind::kTrigger;
  dev.source_name = "x";
  EXPECT_EQ(call(*rt_, "private", "{}", dev).code, core::ErrorCode::kForbidden);
}

TEST_F(RuntimeTest, PastReservedConcurrencyAndQueueTheCallIsThrottled) {
  config::Config c;
  auto f = exec_function("slow", {"/bin/sh", "-c", "cat >/dev/null; sleep 1; echo '{}'"});
  f.reserved_concurrency = 1;
  f.max_queue = 1;
  c.functions.push_back(f);
  start(c);
  std::promise<InvokeResult> a;
  std::promise<InvokeResult> b;
  rt_->invoke(Invocation{"slow", "{}", admin()}, [&](InvokeResult r) { a.set_value(r); });
  rt_->invoke(Invocation{"slow", "{}", admin()}, [&](InvokeResult r) { b.set_value(r); });
  // Invocations are handled in order on the runtime thread: the first runs, the second waits.
  const auto third = call(*rt_, "slow", "{}", admin());
  EXPECT_EQ(third.code, core::ErrorCode::kConcurrencyLimit);
  EXPECT_TRUE(a.get_future().get().ok);
  EXPECT_TRUE(b.get_future().get().ok);
}

TEST_F(RuntimeTest, DeadlineKillsTheProcessTree) {
  config::Config c;
  auto f = exec_function("hang", {"/bin/sh", "-c", "sleep 30 & sleep 30"});
  f.timeout_s = 1;
  c.functions.push_back(f);
  start(c);
  const auto r = call(*rt_, "hang", "{}", admin());
  EXPECT_EQ(r.code, core::ErrorCode::kFunctionTimedOut);
  EXPECT_EQ(r.error_type, "Task.TimedOut");
}

TEST_F(RuntimeTest, StopAnswersEverythingInFlight) {
  config::Config c;
  c.functions.push_back(exec_function("hang", {"/bin/sh", "-c", "sleep 30"}));
  start(c);
  std::promise<InvokeResult> p;
  rt_->invoke(Invocation{"hang", "{}", admin()}, [&](InvokeResult r) { p.set_value(r); });
  rt_->stop();
  EXPECT_EQ(p.get_future().get().code, core::ErrorCode::kUnavailable);
  EXPECT_EQ(call(*rt_, "hang", "{}", admin()).code, core::ErrorCode::kUnavailable);
}

}  // namespace
}  // namespace gatehouse::runtime
