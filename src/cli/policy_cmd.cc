#include "cli/policy_cmd.h"

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "policy/policy.h"

namespace gatehouse::cli {

namespace {

namespace policy = gatehouse::policy;

constexpr int kExitAllow = 0;
constexpr int kExitDeny = 1;
constexpr int kExitUsage = 2;

// Reads and parses one policy file; prints "FILE: error" and returns nullopt on failure.
std::optional<policy::Policy> load(const std::string& path, policy::PolicyKind kind) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "%s: cannot read the file\n", path.c_str());
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto parsed = policy::parse_policy(text.str(), path, kind);
  if (!parsed) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), parsed.error().message.c_str());
    return std::nullopt;
  }
  return std::move(*parsed);
}

struct SimulateArgs {
  std::vector<std::string> policies;
  std::string resource_policy;
  std::vector<std::string> principals;
  std::vector<std::string> services;
  std::string account = std::string(policy::kDefaultAccount);
  std::string action;
  std::string resource;
  std::vector<std::string> context;
};

int simulate(const SimulateArgs& a) {
  std::vector<policy::Policy> identity;
  for (const auto& path : a.policies) {
    auto p = load(path, policy::PolicyKind::kIdentity);
    if (!p) {
      return kExitUsage;
    }
    identity.push_back(std::move(*p));
  }
  std::optional<policy::Policy> resource;
  if (!a.resource_policy.empty()) {
    resource = load(a.resource_policy, policy::PolicyKind::kResource);
    if (!resource) {
      return kExitUsage;
    }
  }
  policy::Request r;
  r.action = a.action;
  r.resource = a.resource;
  r.account = a.account;
  for (const auto& p : a.principals) {
    if (p != "*" && p != "anonymous") {
      r.principal.arns.push_back(p);
    }
  }
  r.principal.services = a.services;
  for (const auto& kv : a.context) {
    const std::size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::fprintf(stderr, "gatehouse policy simulate: --context wants key=value, got '%s'\n",
                   kv.c_str());
      return kExitUsage;
    }
    r.context.add(kv.substr(0, eq), kv.substr(eq + 1));  // a repeated key is multivalued
  }
  // The time keys the gateway would provide, unless the caller set them.
  // Time keys from the clock, unless --context gave them.
  policy::Context clock_keys;
  policy::set_time_keys(clock_keys, std::chrono::system_clock::now());
  for (std::string_view key : {"aws:EpochTime", "aws:CurrentTime"}) {
    if (r.context.find(key) == nullptr) {
      r.context.set(key, *clock_keys.find(key));
    }
  }
  std::vector<const policy::Policy*> ids;
  ids.reserve(identity.size());
  for (const auto& p : identity) {
    ids.push_back(&p);
  }
  const policy::Decision d = policy::evaluate(r, ids, resource ? &*resource : nullptr);
  std::printf("%s\n", d.explain().c_str());
  return d.allowed() ? kExitAllow : kExitDeny;
}

int validate(const std::vector<std::string>& files, const std::string& kind_name) {
  policy::PolicyKind kind = policy::PolicyKind::kAny;
  if (kind_name == "identity") {
    kind = policy::PolicyKind::kIdentity;
  } else if (kind_name == "resource") {
    kind = policy::PolicyKind::kResource;
  }
  int rc = 0;
  for (const auto& path : files) {
    auto p = load(path, kind);
    if (!p) {
      rc = 1;
      continue;
    }
    std::printf("%s: OK (version %s, %zu statement(s))\n", path.c_str(), p->version().c_str(),
                p->statement_count());
  }
  return rc;
}

}  // namespace

int run_policy_command(int argc, char** argv) {
  CLI::App app{"Validate IAM policies and simulate decisions", "gatehouse policy"};
  app.require_subcommand(1);

  std::vector<std::string> files;
  std::string kind = "any";
  auto* val = app.add_subcommand("validate", "Check policy files; prints each error with its path");
  val->add_option("file", files, "Policy file(s)")->required();
  val->add_option("--kind", kind, "identity, resource or any")
      ->check(CLI::IsMember({"identity", "resource", "any"}))
      ->capture_default_str();

  SimulateArgs s;
  auto* sim = app.add_subcommand("simulate", "Evaluate one request; prints the deciding statement");
  sim->add_option("--policy", s.policies, "Identity policy file (repeat)");
  sim->add_option("--resource-policy", s.resource_policy, "Resource policy file");
  sim->add_option("--principal", s.principals,
                  "Principal ARN (repeat for aliases such as the session ARN; '*' = anonymous)")
      ->required();
  sim->add_option("--service", s.services, "Service principal (repeat)");
  sim->add_option("--account", s.account, "This Gatehouse's account id")->capture_default_str();
  sim->add_option("--action", s.action, "Action, e.g. s3:GetObject")->required();
  sim->add_option("--resource", s.resource, "Resource ARN")->required();
  sim->add_option("--context", s.context,
                  "Condition key=value (repeat; a repeated key is multivalued)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;  // --help exits 0
  }
  if (*val) {
    return validate(files, kind);
  }
  if (s.policies.empty() && s.resource_policy.empty()) {
    std::fprintf(stderr, "gatehouse policy simulate: give --policy and/or --resource-policy\n");
    return kExitUsage;
  }
  return simulate(s);
}

}  // namespace gatehouse::cli
