// Policy decision latency for a realistic set of 20 statements: a 12-statement identity policy
// (a service role's: S3 prefixes with ${aws:username}, Lambda, DynamoDB, conditions on the
// source address, time, MFA and tags, two Denies) and an 8-statement bucket policy (the
// NotPrincipal lock-down, TLS-only, public prefix, account delegation). Measured two ways:
//
// - the engine alone (policy::evaluate) for an allow decided late, an implicit deny (every
//   statement read), an explicit deny and a request whose match needs variable substitution;
// - the gateway's authorize stage on a route whose resource policy holds the same 20 statements
//   (context fill included), and on a route with no policy, which must cost next to nothing.
//
// Numbers belong in docs/benchmarks.md with the command that produced them; none are recorded
// here.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "gateway/authorizer.h"
#include "policy/policy.h"

namespace {

namespace policy = gatehouse::policy;
namespace gw = gatehouse::gateway;

constexpr const char* kIdentity = R"({
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "ListOwnPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
     "Resource": "arn:aws:s3:::images",
     "Condition": {"StringLike": {"s3:prefix": ["home/${aws:username}/*", "public/*"]}}},
    {"Sid": "ReadWriteOwn", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
     "Resource": "arn:aws:s3:::images/home/${aws:username}/*"},
    {"Sid": "ReadPublic", "Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::images/public/*"},
    {"Sid": "InvokeResize", "Effect": "Allow", "Action": "lambda:InvokeFunction",
     "Resource": ["arn:aws:lambda:us-east-1:123456789012:function:resize",
                  "arn:aws:lambda:us-east-1:123456789012:function:thumb*"]},
    {"Sid": "Tables", "Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query"],
     "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/orders*",
     "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]}}},
    {"Sid": "Queue", "Effect": "Allow", "Action": "sqs:SendMessage",
     "Resource": "arn:aws:sqs:*:123456789012:jobs-*",
     "Condition": {"Bool": {"aws:SecureTransport": "true"}}},
    {"Sid": "OfficeHours", "Effect": "Allow", "Action": "s3:DeleteObject",
     "Resource": "arn:aws:s3:::images/home/${aws:username}/*",
     "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2024-01-01T00:00:00Z"},
                   "NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}},
    {"Sid": "Tagged", "Effect": "Allow", "Action": "s3:PutObjectTagging",
     "Resource": "arn:aws:s3:::images/*",
     "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["env", "team"]},
                   "StringEquals": {"aws:RequestTag/env": ["prod", "dev"]}}},
    {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:*",
     "Resource": "arn:aws:s3:::images/secret/*"},
    {"Sid": "NoIam", "Effect": "Deny", "NotAction": ["s3:*", "lambda:*", "dynamodb:*", "sqs:*", "execute-api:*"],
     "Resource": "*"},
    {"Sid": "TeamRead", "Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::images/teams/${aws:PrincipalTag/team}/*"},
    {"Sid": "Api", "Effect": "Allow", "Action": "execute-api:Invoke",
     "Resource": "arn:gatehouse:execute-api:*:*:orders/*/GET/*",
     "Condition": {"StringEqualsIfExists": {"gatehouse:Header/x-tenant": "acme"}}}
  ]})";

constexpr const char* kBucket = R"({
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "OnlyUpload", "Effect": "Deny",
     "NotPrincipal": {"AWS": ["arn:aws:iam::123456789012:role/upload",
                              "arn:aws:sts::123456789012:assumed-role/upload/worker"]},
     "Action": "s3:PutObject", "Resource": "arn:aws:s3:::images/uploads/*"},
    {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*",
     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::images/public/*"},
    {"Sid": "Account", "Effect": "Allow", "Principal": {"AWS": "123456789012"},
     "Action": "s3:*", "Resource": "*"},
    {"Sid": "Partners", "Effect": "Allow",
     "Principal": {"AWS": ["arn:aws:iam::123456789012:role/partner-a",
                           "arn:aws:iam::123456789012:role/partner-b"]},
     "Action": ["s3:GetObject", "execute-api:Invoke"], "Resource": "*",
     "Condition": {"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}}},
    {"Sid": "Uploads", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::123456789012:role/upload"},
     "Action": "s3:PutObject", "Resource": "arn:aws:s3:::images/uploads/*"},
    {"Sid": "Referer", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::images/embed/*",
     "Condition": {"StringLike": {"aws:Referer": ["https://*.example.com/*"]}}},
    {"Sid": "Keys", "Effect": "Allow",
     "Principal": {"AWS": "arn:gatehouse:iam::123456789012:apikey/00000000000000aa"},
     "Action": "execute-api:Invoke", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalTag/plan": "gold"}}}
  ]})";

struct Fixture {
  policy::Policy identity;
  policy::Policy bucket;
  std::vector<const policy::Policy*> ids;
  policy::Request request;

  Fixture()
      : identity(
            std::move(*policy::parse_policy(kIdentity, "app-role", policy::PolicyKind::kIdentity))),
        bucket(std::move(*policy::parse_policy(kBucket, "images", policy::PolicyKind::kResource))) {
    ids.push_back(&identity);
    request.account = "123456789012";
    request.principal.arns = {"arn:aws:iam::123456789012:role/app"};
    request.principal.tags = {{"team", "red"}};
    request.context.set("aws:username", "alice");
    request.context.set("aws:SourceIp", "10.1.2.3");
    request.context.set("aws:SecureTransport", "true");
    request.context.set("aws:CurrentTime", "2024-05-01T12:00:00Z");
    request.context.set("aws:MultiFactorAuthAge", "60");
  }
};

void decide(benchmark::State& state, const char* action, const char* resource,
            policy::Effect expected) {
  Fixture f;
  f.request.action = action;
  f.request.resource = resource;
  if (policy::evaluate(f.request, f.ids, &f.bucket).effect != expected) {
    state.SkipWithError("the fixture does not decide as the benchmark expects");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(policy::evaluate(f.request, f.ids, &f.bucket));
  }
}

// Allowed by the identity policy's TeamRead (statement 11 of 12, a variable to substitute).
void BM_AllowLateWithVariable(benchmark::State& state) {
  decide(state, "s3:GetObject", "arn:aws:s3:::images/teams/red/plan.pdf", policy::Effect::kAllow);
}
// Allowed by InvokeResize without variables (statement 4).
void BM_AllowEarly(benchmark::State& state) {
  decide(state, "lambda:InvokeFunction", "arn:aws:lambda:us-east-1:123456789012:function:thumb2",
         policy::Effect::kAllow);
}
// No statement applies: all 20 are read.
void BM_ImplicitDeny(benchmark::State& state) {
  decide(state, "dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/users",
         policy::Effect::kImplicitDeny);
}
// Denied by the bucket's NotPrincipal lock-down.
void BM_ExplicitDeny(benchmark::State& state) {
  decide(state, "s3:PutObject", "arn:aws:s3:::images/uploads/x.png", policy::Effect::kExplicitDeny);
}
BENCHMARK(BM_AllowLateWithVariable);
BENCHMARK(BM_AllowEarly);
BENCHMARK(BM_ImplicitDeny);
BENCHMARK(BM_ExplicitDeny);

// The authorize stage: a route whose resource policy is the 20 statements above (as one
// document), and a route with none.
std::string route_config() {
  // Both documents' statements in one resource policy: identity statements get Principal "*".
  auto stmts = [](std::string doc, bool add_principal) {
    const std::size_t open = doc.find('[');
    std::string body = doc.substr(open + 1, doc.rfind(']') - open - 1);
    if (add_principal) {
      std::string out;
      for (std::size_t at = 0;;) {
        const std::size_t sid = body.find("{\"Sid\"", at);
        if (sid == std::string::npos) {
          out += body.substr(at);
          break;
        }
        out += body.substr(at, sid - at) + "{\"Principal\": \"*\", \"Sid\"";
        at = sid + 6;
      }
      return out;
    }
    return body;
  };
  std::string policy = R"({"Version": "2012-10-17", "Statement": [)" + stmts(kIdentity, true) +
                       "," + stmts(kBucket, false) + "]}";
  std::replace(policy.begin(), policy.end(), '\n', ' ');  // one YAML flow line
  // The gateway has no TLS listener yet (aws:SecureTransport is always false), so on the route
  // TlsOnly would refuse everything at once: it denies a blocked network instead.
  const std::string tls = R"({"Bool": {"aws:SecureTransport": "false"}})";
  policy.replace(policy.find(tls), tls.size(),
                 R"({"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}})");
  return "account_id: \"123456789012\"\n"
         "routes:\n"
         "  - {name: open, method: GET, path: /open, target: {static: {}}}\n"
         "  - name: orders\n"
         "    method: GET\n"
         "    path: /orders/{id}\n"
         "    target: {static: {}}\n"
         "    policy: " +
         policy + "\n";
}

// `route` must be allowed: on the policy route by the Api statement (12th of 20), after which
// the remaining statements are still read for a Deny.
void authorize(benchmark::State& state, std::uint32_t route, std::string_view name,
               std::string_view path) {
  auto config = gatehouse::config::load_string(route_config(), "bench.yaml");
  if (!config) {
    state.SkipWithError(config.error().front().to_string().c_str());
    return;
  }
  const auto table = gw::compile_authz(*config);
  const gatehouse::http::Header header{"x-tenant", "acme"};
  gatehouse::http::Request req;
  req.method = "GET";
  req.path = path;
  req.headers = std::span<const gatehouse::http::Header>(&header, 1);
  gw::RequestContext ctx;
  ctx.request = &req;
  ctx.authz = table.get();
  ctx.route_index = route;
  ctx.route_name = name;
  ctx.remote_ip = "10.1.2.3";
  gw::PolicyAuthorizer authorizer;
  gw::Refusal refusal;
  if (authorizer.authorize(ctx, refusal) != gw::Verdict::kContinue) {
    state.SkipWithError(std::string(refusal.message).c_str());
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(authorizer.authorize(ctx, refusal));
  }
}

void BM_AuthorizeRouteWith20Statements(benchmark::State& state) {
  authorize(state, 1, "orders", "/orders/42");
}
void BM_AuthorizeRouteWithoutPolicy(benchmark::State& state) {
  authorize(state, 0, "open", "/open");
}
BENCHMARK(BM_AuthorizeRouteWith20Statements);
BENCHMARK(BM_AuthorizeRouteWithoutPolicy);

}  // namespace

BENCHMARK_MAIN();
