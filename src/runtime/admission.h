#pragma once
// Private to the runtime: whether an invocation may run at all. Shared by the supervisor and the
// asynchronous queue, which refuses an event before accepting it rather than dead-lettering it.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "core/core.h"
#include "runtime/runtime.h"

namespace gatehouse::runtime::detail {

// "route:", "trigger:", "workflow:" or "direct:".
[[nodiscard]] std::string_view source_prefix(SourceKind k);

struct Refusal {
  core::ErrorCode code = core::ErrorCode::kInternal;
  std::string type;  // the Lambda-style error type
  std::string message;
};

// nullopt when `inv` may run against `f` (null: no such function with a runtime); otherwise
// kNotFound, kRecursiveInvocation (depth over max_depth) or kForbidden (authorize_invocation
// denies it; the message names the deciding statement).
[[nodiscard]] std::optional<Refusal> refuse(const config::FunctionConfig* f,
                                            std::uint32_t max_depth, const Invocation& inv);

}  // namespace gatehouse::runtime::detail
