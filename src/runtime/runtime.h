#pragma once
// gatehouse::runtime — functions as sandboxed OS processes (docs/runtime.md).
//
// A Runtime owns every function process of one gateway: for `lambda` functions a pool of warm
// workers, each speaking the AWS Lambda Runtime API on its own loopback listener; for `exec`
// functions one process per invocation (event JSON on stdin, result JSON on stdout). It bounds
// each function's workers (reserved_concurrency), queues up to max_queue invocations beyond
// them, kills a worker's whole process tree at its deadline, limits memory and tasks (cgroups
// when the host allows, rlimits otherwise), refuses call chains deeper than
// runtime.max_lineage_depth and checks each function's resource policy (`policy`, or `invokers`
// translated into one) against the caller before anything runs (docs/policy.md, "Wiring").
//
// Thread-safety: invoke(), update(), stats_text() and stop() may be called from any thread.
// Everything else runs on the runtime's own thread (one io_context), plus one spawner thread
// that forks. invoke() never blocks: it posts the invocation and returns.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config/config.h"
#include "core/core.h"
#include "policy/policy.h"

namespace gatehouse::runtime {

// Why an invocation happens: the condition keys gatehouse:SourceKind (route | trigger | workflow
// | direct) and gatehouse:Source ("route:NAME", "trigger:NAME", "workflow:NAME", "direct:").
enum class SourceKind : std::uint8_t {
  kDirect,    // the admin API or the CLI
  kRoute,     // a gateway route; source_name is the route name
  kTrigger,   // a bucket notification or other trigger; source_name is its name
  kWorkflow,  // a workflow step; source_name is "workflow-name"; detail is "execution/state"
};

// Who caused an invocation and why; every invocation carries one.
struct CallerContext {
  // The caller's ARN (docs/policy.md, "Principals"): aws:PrincipalArn for the function's
  // policy, and what the function sees (Gatehouse-Principal, the event's requestContext).
  std::string principal = std::string(policy::kAnonymousArn);
  std::vector<std::pair<std::string, std::string>> principal_tags;  // aws:PrincipalTag/<k>
  // The identity policies attached to the caller (its plan's, its role's, the admin's).
  std::vector<config::PolicyPtr> policies;
  // The condition keys its entry point knows (aws:SourceIp, gatehouse:Route, ... as
  // docs/policy.md lists). The runtime adds gatehouse:SourceKind, gatehouse:Source,
  // gatehouse:LineageDepth and, when absent, the time keys.
  policy::Context conditions;
  SourceKind source = SourceKind::kDirect;
  std::string source_name;  // route, trigger or workflow name ("" for kDirect)
  std::string detail;       // workflow "execution/state"; free text otherwise
  std::string request_id;   // the request that caused it (gateway request id)
  std::uint32_t depth = 1;  // lineage depth of this invocation: 1 for a call from outside,
                            // the caller's depth + 1 for a call made by a function
};

struct Invocation {
  std::string function;  // a function with a runtime
  std::string payload;   // the event, JSON text
  CallerContext caller;
};

// The outcome of one invocation.
struct InvokeResult {
  bool ok = false;
  // ok: the function's response bytes (at most 6 MiB). Otherwise a JSON error document
  // {"errorType","errorMessage","stackTrace"} as the Lambda API shapes it.
  std::string payload;
  // !ok: the error-table code the caller answers with:
  //   kFunctionError (502) the function failed: its own error, a crash, an init error, an
  //                        out-of-memory kill, a response over 6 MiB;
  //   kFunctionTimedOut (504) killed at its deadline, or no worker became free in time;
  //   kConcurrencyLimit (429) reserved_concurrency busy and the queue full;
  //   kRecursiveInvocation (508) lineage depth over runtime.max_lineage_depth;
  //   kForbidden (403) AccessDenied: the function's resource policy (or, without one, the
  //                    caller's identity policies, for a caller that is not a route) does
  //                    not allow lambda:InvokeFunction; the message names the deciding
  //                    statement (policy id and Sid);
  //   kNotFound (404) no such function with a runtime; kUnavailable (503) stopping.
  core::ErrorCode code = core::ErrorCode::kInternal;
  std::string error_type;  // !ok: "Task.TimedOut", "Runtime.ExitError", "Runtime.OutOfMemory",
                           // "Runtime.InitError", the function's own errorType, ...
  std::string message;     // !ok: human-readable; may quote the function's errorMessage
  std::string request_id;  // the Lambda request id given to the function ("" if it never ran)
  bool cold_start = false;
};

using InvokeCallback = std::function<void(InvokeResult)>;

// The caller for the admin API and `gatehouse invoke`: principal arn:gatehouse:iam::<account>:
// admin, identity policies admin.policies (allowed everything when there are none), source
// kDirect.
[[nodiscard]] CallerContext admin_caller(const config::Config& config);
// The caller for invocations a function makes while acting as `role` (its FunctionConfig::role):
// principal arn:gatehouse:iam::<account>:role/<role>, the role's identity policies (none when
// the role is not declared). Source and depth are left for the caller to set.
[[nodiscard]] CallerContext role_caller(const config::Config& config, std::string_view role);

// Whether `caller` may invoke `function`, as Runtime::invoke decides it (the one place that
// decides it): lambda:InvokeFunction on function.arn, evaluated over the caller's identity
// policies and the function's resource policy (`policy`, or `invokers` translated into one).
// Without a resource policy, a route may always call (the route's own authorization applied)
// and other callers need an identity policy that allows it. The Decision borrows from the
// policies.
[[nodiscard]] policy::Decision authorize_invocation(const config::FunctionConfig& function,
                                                    const CallerContext& caller);

struct Options {
  // Tests and the CLI may run functions as the current user even when it is root.
  bool drop_privileges_when_root = true;
};

class Runtime {
 public:
  // Detects what the host allows (cgroups, network namespaces) and logs one warning per missing
  // capability; starts the runtime and spawner threads. No process starts before an invocation.
  // Errors: kInternal when the threads cannot start.
  [[nodiscard]] static core::Result<std::unique_ptr<Runtime>> create(const config::Config& config,
                                                                     Options options = {});
  virtual ~Runtime() = default;

  // Queues `inv` and returns at once. `done` is called exactly once, on the runtime's thread
  // (post to your own executor from it); after stop(), at once with kUnavailable.
  virtual void invoke(Invocation inv, InvokeCallback done) = 0;
  // Takes a new config (reload): new invocations use it; workers started from an older
  // definition of a function whose process settings changed are stopped once idle.
  virtual void update(const config::Config& config) = 0;
  // Prometheus text: invocations by function and result, cold starts, workers.
  [[nodiscard]] virtual std::string metrics_text() const = 0;
  // Kills every function process, fails what is queued or running with kUnavailable and joins
  // the threads. Idempotent; the destructor calls it.
  virtual void stop() = 0;
};

}  // namespace gatehouse::runtime
