#pragma once
// gatehouse::runtime — functions as sandboxed OS processes (docs/runtime.md).
//
// A Runtime owns every function process of one gateway: for `lambda` functions a pool of warm
// workers, each speaking the AWS Lambda Runtime API on its own loopback listener; for `exec`
// functions one process per invocation (event JSON on stdin, result JSON on stdout). It bounds
// each function's workers (reserved_concurrency), queues up to max_queue invocations beyond
// them, kills a worker's whole process tree at its deadline, limits memory and tasks (cgroups
// when the host allows, rlimits otherwise), refuses call chains deeper than
// runtime.max_lineage_depth and checks each function's `invokers`.
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

namespace gatehouse::runtime {

// Why an invocation happens. Its name is what a function's `invokers` match against.
enum class SourceKind : std::uint8_t {
  kDirect,    // the admin API or the CLI (always allowed)
  kRoute,     // a gateway route; source_name is the route name
  kTrigger,   // a bucket notification or other trigger; source_name is its name
  kWorkflow,  // a workflow step; source_name is "workflow-name"; detail is "execution/state"
};

// Who caused an invocation and why; every invocation carries one.
struct CallerContext {
  std::string principal = "anonymous";  // e.g. "admin", "api_key:ghk_..", an ARN
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
  //   kForbidden (403) the source is not among the function's invokers;
  //   kNotFound (404) no such function with a runtime; kUnavailable (503) stopping.
  core::ErrorCode code = core::ErrorCode::kInternal;
  std::string error_type;  // !ok: "Task.TimedOut", "Runtime.ExitError", "Runtime.OutOfMemory",
                           // "Runtime.InitError", the function's own errorType, ...
  std::string message;     // !ok: human-readable; may quote the function's errorMessage
  std::string request_id;  // the Lambda request id given to the function ("" if it never ran)
  bool cold_start = false;
};

using InvokeCallback = std::function<void(InvokeResult)>;

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
