// libFuzzer target for the IAM policy engine: any bytes must give a Policy or one error with a
// message, never a crash, a hang or an exception; a Policy that parses must evaluate without
// crashing, deterministically, and explain itself. Seeds: tests/fuzz/corpus/policy/.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "policy/compiled.h"
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

// Reference glob matcher for the differential check: a plain dynamic program over the tokens
// ('*', '?', '\\x' literal x, other bytes literal), quadratic but obviously right.
bool reference_glob(std::string_view pattern, std::string_view subject, bool fold) {
  struct Token {
    char kind;  // '*', '?' or 'c'
    char c;
  };
  std::vector<Token> tokens;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '*' || pattern[i] == '?') {
      tokens.push_back({pattern[i], 0});
    } else if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      tokens.push_back({'c', pattern[++i]});
    } else {
      tokens.push_back({'c', pattern[i]});
    }
  }
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; };
  // match[j]: tokens[0..i) match subject[0..j).
  std::vector<char> match(subject.size() + 1, 0);
  match[0] = 1;
  for (const Token& t : tokens) {
    std::vector<char> next(subject.size() + 1, 0);
    for (std::size_t j = 0; j <= subject.size(); ++j) {
      if (t.kind == '*') {
        next[j] = match[j] || (j > 0 && next[j - 1]);
      } else if (j > 0 && match[j - 1]) {
        const char sc = fold ? lower(subject[j - 1]) : subject[j - 1];
        next[j] = t.kind == '?' || t.c == sc;
      }
    }
    match = std::move(next);
  }
  return match[subject.size()] != 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  {
    // Differential: the engine's glob matcher against the reference, on small slices.
    const std::string_view head = text.substr(0, 64);
    const std::string_view pattern = head.substr(0, head.size() / 2);
    const std::string_view subject = head.substr(head.size() / 2);
    const bool fold = (size & 1) != 0;
    if (gatehouse::policy::detail::glob_match(pattern, subject, fold) !=
        reference_glob(pattern, subject, fold)) {
      __builtin_trap();
    }
  }
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
