#include "runtime/admission.h"

namespace gatehouse::runtime::detail {
namespace {

bool pattern_matches(std::string_view pattern, std::string_view value) {
  if (!pattern.empty() && pattern.back() == '*') {
    pattern.remove_suffix(1);
    return value.starts_with(pattern);
  }
  return pattern == value;
}

}  // namespace

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

bool may_invoke(const config::FunctionConfig& f, const CallerContext& caller) {
  if (caller.source == SourceKind::kDirect && caller.principal == "admin") {
    return true;
  }
  if (!f.invokers_set) {
    return caller.source == SourceKind::kRoute;
  }
  const std::string source = std::string(source_prefix(caller.source)) + caller.source_name;
  const std::string principal = "principal:" + caller.principal;
  for (const std::string& p : f.invokers) {
    if ((caller.source != SourceKind::kDirect && pattern_matches(p, source)) ||
        pattern_matches(p, principal)) {
      return true;
    }
  }
  return false;
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
  if (!may_invoke(*f, inv.caller)) {
    return Refusal{core::ErrorCode::kForbidden, "AccessDenied",
                   "the caller is not among the invokers of '" + inv.function + "'"};
  }
  return std::nullopt;
}

}  // namespace gatehouse::runtime::detail
