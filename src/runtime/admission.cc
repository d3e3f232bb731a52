#include "runtime/admission.h"

namespace gatehouse::runtime::detail {

std::string_view source_prefix(SourceKind k) {
  switch (k) {
    case SourceKind::kRoute:
      return "route:";
    case SourceKind::kTrigger:
      return "trigger:";
    case SourceKind::kWorkflow:
      return "workflow:";
    case SourceKind::kDirect:
      break;
  }
  return "direct:";
}

std::optional<Refusal> refuse(const config::FunctionConfig* f, std::uint32_t max_depth,
                              const Invocation& inv) {
  if (f == nullptr || f->runtime == config::FunctionRuntime::kNone) {
    return Refusal{core::ErrorCode::kNotFound, "ResourceNotFound",
                   "no function '" + inv.function + "' with a runtime"};
  }
  if (inv.caller.depth > max_depth) {
    return Refusal{core::ErrorCode::kRecursiveInvocation, "RecursiveInvocationStopped",
                   "lineage depth " + std::to_string(inv.caller.depth) +
                       " is over runtime.max_lineage_depth " + std::to_string(max_depth)};
  }
  if (inv.authorized_at_accept) {
    return std::nullopt;
  }
  if (const policy::Decision d = authorize_invocation(*f, inv.caller); !d.allowed()) {
    return Refusal{core::ErrorCode::kForbidden, "AccessDenied",
                   "the caller may not invoke '" + inv.function + "' (" + d.explain() + ")"};
  }
  return std::nullopt;
}

}  // namespace gatehouse::runtime::detail
