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
#include "store/store.h"

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
  // Set only by the asynchronous dispatcher (AsyncInvoker): the caller was authorized
  // (authorize_invocation, with its identity policies and request context) when the event was
  // accepted, as Lambda authorizes an asynchronous Invoke once; the runtime does not decide it
  // again (the stored caller keeps its principal ARN, tags and source, not its policies). The
  // function's existence and the lineage depth are still checked.
  bool authorized_at_accept = false;
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

// ---------------------------------------------------------------------------------------------
// Asynchronous invocations (docs/runtime.md, "Asynchronous invocation").
//
// An accepted event is a message in the durable store queue "async:<function>" before its
// caller hears 202. A dispatcher leases messages, runs them through a Runtime, and acks them
// when done; a failure is retried (functions[].async.max_retries, exponential back-off from
// backoff_s) and then written to the dead-letter table with the last error. Delivery is
// at-least-once: a message leased by a process that dies is leased again when its lease
// expires, so an event may run twice.

// An accepted event: its id (stable across retries and replays) and the store message id.
struct AcceptedEvent {
  std::string event_id;
  std::int64_t message_id = 0;
};

// An event whose attempts are over, as kept in the store table "dead_letters".
struct DeadLetter {
  std::string event_id;
  std::string function;
  std::string payload;  // the event
  CallerContext caller;
  std::string reason;  // RetriesExhausted | EventAgeExceeded | NotRetryable
  std::string error_type;
  std::string error_message;
  std::uint32_t attempts = 0;  // times it ran (or was handed to a process that died)
  std::uint32_t replays = 0;   // times it was replayed before this failure
  std::int64_t enqueued_at_ms = 0;  // wall clock, epoch ms, of its (last) acceptance
  std::int64_t failed_at_ms = 0;
};

// The JSON document of a dead letter (admin API and CLI).
[[nodiscard]] std::string dead_letter_json(const DeadLetter& d);

// Blocking store-level operations, for the CLI (no server needed: a running server's dispatcher
// finds new messages within a second). `config` names the functions and their limits.
// enqueue_event errors: kNotFound (no function with a runtime), kRecursiveInvocation,
// kForbidden (authorize_invocation denies the caller), kTooManyRequests (async.max_depth
// messages queued), kIo.
[[nodiscard]] core::Result<AcceptedEvent> enqueue_event(store::Store& store,
                                                        const config::Config& config,
                                                        Invocation inv);
// At most `limit` dead letters of `function`, oldest failure first. Errors: kIo.
[[nodiscard]] core::Result<std::vector<DeadLetter>> list_dead_letters(store::Store& store,
                                                                      std::string_view function,
                                                                      std::size_t limit);
// Moves a dead letter back into the queue (attempts start again; the event keeps its id) in one
// atomic write. Errors: kNotFound (no such dead letter, or the function has no runtime),
// kTooManyRequests (queue full), kIo.
[[nodiscard]] core::Result<AcceptedEvent> replay_dead_letter(store::Store& store,
                                                             const config::Config& config,
                                                             std::string_view function,
                                                             std::string_view event_id);

// The dispatcher of a running server. Owns one thread; borrows `store` and `runtime`, which
// must outlive it. Thread-safety: every method may be called from any thread.
class AsyncInvoker {
 public:
  // Counts what each function's queue holds and starts the dispatcher thread.
  // Errors: kIo (the store), kInternal (the thread).
  [[nodiscard]] static core::Result<std::unique_ptr<AsyncInvoker>> create(
      store::Store& store, Runtime& runtime, const config::Config& config);
  // Waits for every invocation it started to be answered and recorded: call Runtime::stop()
  // first (after stop()), or this waits for them to finish.
  virtual ~AsyncInvoker() = default;

  // Checks `inv` like enqueue_event, writes it to the store and calls `done` once the message is
  // durable (on the store's writer thread) or refused (on the calling thread). Never blocks.
  virtual void submit(Invocation inv, std::function<void(core::Result<AcceptedEvent>)> done) = 0;
  // replay_dead_letter, counted against the queue bound and dispatched at once. Blocking.
  [[nodiscard]] virtual core::Result<AcceptedEvent> replay(std::string_view function,
                                                           std::string_view event_id) = 0;
  // Takes a new config (reload): retries, back-off and bounds apply to later decisions.
  virtual void update(const config::Config& config) = 0;
  // Prometheus text: events by result, queue depth.
  [[nodiscard]] virtual std::string metrics_text() const = 0;
  // Stops leasing and joins the dispatcher thread; running invocations still complete and are
  // recorded. Idempotent.
  virtual void stop() = 0;
};

}  // namespace gatehouse::runtime
