// libFuzzer target for the IAM policy engine: any bytes must give a Policy or one error with a
// message, never a crash, a hang or an exception; a Policy that parses must evaluate without
// crashing, deterministically, and explain itself. Seeds: tests/fuzz/corpus/policy/.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "policy/policy.h"

namespace {

namespace policy = gatehouse::policy;

// A few requests that exercise variables, conditions and principals, plus one whose fields are
// cut from the input itself so the matchers see adversarial subjects.
std::vector<policy::Request> requests(std::string_view text) {
  std::vector<policy::Request> out(3);
  out[0].action = "s3:GetObject";
  out[0].resource = "arn:gatehouse:s3:::images/home/alice/photo.jpg";
  out[0].principal.arns = {"arn:gatehouse:iam::000000000000:role/upload",
                           "arn:gatehouse:sts::000000000000:assumed-role/upload/s1"};
  out[0].principal.tags = {{"team", "red"}};
  out[0].context.set("aws:username", "alice");
  out[0].context.set("aws:SourceIp", "10.1.2.3");
  out[0].context.set("aws:CurrentTime", "2024-05-01T12:00:00Z");
  out[0].context.set("aws:EpochTime", "1714564800");
  out[0].context.set("aws:SecureTransport", "true");
  out[0].context.set("aws:TagKeys", std::vector<std::string>{"env", "team"});
  out[1].action = "lambda:InvokeFunction";
  out[1].resource = "arn:aws:lambda:local:000000000000:function:metadata";
  out[1].principal.services = {"states.amazonaws.com"};
  out[1].context.set("aws:SourceIp", "2001:db8::1");
  const std::size_t third = text.size() / 3;
  out[2].action = std::string(text.substr(0, third));
  out[2].resource = std::string(text.substr(third, third));
  out[2].context.set("aws:username", std::string(text.substr(2 * third)));
  out[2].context.set("s3:prefix", std::string(text.substr(third)));
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto parsed = policy::parse_policy(text, "fuzz");
  if (!parsed) {
    if (parsed.error().message.empty()) {
      __builtin_trap();
    }
    return 0;
  }
  const policy::Policy& p = *parsed;
  if (p.statement_count() == 0 || p.statement_count() > policy::kMaxStatements) {
    __builtin_trap();
  }
  const policy::Policy* ids[] = {&p};
  for (const auto& r : requests(text)) {
    // The same document as identity and as resource policy.
    const policy::Decision a = policy::evaluate(r, ids, &p);
    const policy::Decision b = policy::evaluate(r, ids, &p);
    if (a.effect != b.effect || a.statement != b.statement || a.policy != b.policy ||
        a.explain().empty()) {
      __builtin_trap();
    }
    if (a.effect != policy::Effect::kImplicitDeny &&
        (a.policy != &p || a.statement >= p.statement_count() || a.sid != p.sid(a.statement))) {
      __builtin_trap();
    }
    // An explicit deny from the identity side alone stays a deny with the resource policy.
    const policy::Decision only_identity = policy::evaluate(r, ids, nullptr);
    if (only_identity.effect == policy::Effect::kExplicitDeny &&
        a.effect != policy::Effect::kExplicitDeny) {
      __builtin_trap();
    }
  }
  return 0;
}
