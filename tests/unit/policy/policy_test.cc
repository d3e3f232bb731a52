#include "policy/policy.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace gatehouse::policy {
namespace {

using core::ErrorCode;

Policy must_parse(const std::string& json, PolicyKind kind = PolicyKind::kAny,
                  std::string_view id = "p") {
  auto p = parse_policy(json, id, kind);
  EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().message) << "\n" << json;
  if (!p) {
    return std::move(*parse_policy(
        R"({"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*"}})",
        "fallback"));
  }
  return std::move(*p);
}

// The error message of a document that must be refused.
std::string refusal(const std::string& json, PolicyKind kind = PolicyKind::kAny) {
  auto p = parse_policy(json, "p", kind);
  EXPECT_FALSE(p.has_value()) << json;
  return p ? std::string() : p.error().message;
}

std::string allow_stmt(const std::string& extra, const std::string& action = "*",
                       const std::string& resource = "*") {
  return R"({"Effect":"Allow","Action":")" + action + R"(","Resource":")" + resource + "\"" +
         (extra.empty() ? "" : "," + extra) + "}";
}

std::string doc(const std::string& statements, const std::string& version = "2012-10-17") {
  return R"({"Version":")" + version + R"(","Statement":[)" + statements + "]}";
}

Request request(std::string action, std::string resource,
                std::vector<std::string> arns = {"arn:gatehouse:iam::000000000000:role/app"}) {
  Request r;
  r.action = std::move(action);
  r.resource = std::move(resource);
  r.principal.arns = std::move(arns);
  return r;
}

Decision decide(const Request& r, std::initializer_list<const Policy*> identity,
                const Policy* resource = nullptr) {
  std::vector<const Policy*> ids(identity);
  return evaluate(r, ids, resource);
}

bool allowed(const Policy& p, const Request& r) { return decide(r, {&p}).allowed(); }

// A one-statement Allow * on * with the given Condition body, evaluated with `context`.
bool condition_allows(const std::string& condition, const Context& context,
                      const std::string& version = "2012-10-17") {
  const Policy p = must_parse(doc(allow_stmt(R"("Condition":)" + condition), version));
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::b/k");
  r.context = context;
  return allowed(p, r);
}

Context ctx(std::initializer_list<std::pair<std::string, std::vector<std::string>>> kv) {
  Context c;
  for (const auto& [k, v] : kv) {
    c.set(k, v);
  }
  return c;
}

// ---- parsing and validation -------------------------------------------------------------------

TEST(PolicyParse, AcceptsMinimalAndSingleStatementObject) {
  const Policy p = must_parse(
      R"({"Version":"2012-10-17","Id":"x","Statement":{"Sid":"A","Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}})");
  EXPECT_EQ(p.statement_count(), 1U);
  EXPECT_EQ(p.sid(0), "A");
  EXPECT_EQ(p.version(), "2012-10-17");
  EXPECT_EQ(p.id(), "p");
}

TEST(PolicyParse, MissingVersionDefaultsTo2008) {
  const Policy p = must_parse(R"({"Statement":[)" + allow_stmt("") + "]}");
  EXPECT_EQ(p.version(), "2008-10-17");
}

TEST(PolicyParse, RefusesWithJsonPaths) {
  EXPECT_EQ(refusal(R"({"Version":"2012-10-18","Statement":[]})"),
            R"(Version: must be "2012-10-17" or "2008-10-17")");
  EXPECT_EQ(refusal(doc("")), "Statement: must hold at least one statement");
  EXPECT_EQ(refusal(R"({"Version":"2012-10-17"})"), "Statement: missing");
  EXPECT_EQ(refusal(R"({"Version":"2012-10-17","Statement":"x"})"),
            "Statement: expected an object or an array of objects");
  EXPECT_EQ(refusal(R"([1,2])"), "a policy must be a JSON object");
  EXPECT_EQ(refusal(R"({"Version":"2012-10-17","Extra":1,"Statement":[]})"),
            "Extra: unknown key (expected Version, Id or Statement)");
  EXPECT_EQ(refusal(doc(allow_stmt("") + R"(,{"Effect":"Permit","Action":"*","Resource":"*"})")),
            R"(Statement[1].Effect: must be "Allow" or "Deny")");
  EXPECT_EQ(refusal(doc(R"({"Action":"*","Resource":"*"})")), "Statement[0].Effect: missing");
  EXPECT_NE(refusal(doc(allow_stmt(R"("Efect":"Allow")"))).find("Statement[0].Efect: unknown key"),
            std::string::npos);
  EXPECT_EQ(refusal(doc(R"({"Effect":"Allow","Resource":"*"})")),
            "Statement[0].Action: missing (a statement needs Action or NotAction)");
  EXPECT_EQ(refusal(doc(R"({"Effect":"Allow","Action":"*","NotAction":"s3:*","Resource":"*"})")),
            "Statement[0].NotAction: Action and NotAction are exclusive");
  EXPECT_EQ(refusal(doc(R"({"Effect":"Allow","Action":"*"})")),
            "Statement[0].Resource: missing (a statement needs Resource or NotResource)");
  EXPECT_EQ(
      refusal(doc(allow_stmt("", "s3"))),
      R"(Statement[0].Action: expected "*" or "service:action" (e.g. "s3:GetObject", "s3:Get*"))");
  EXPECT_EQ(refusal(doc(R"({"Effect":"Allow","Action":["s3:GetObject",7],"Resource":"*"})")),
            "Statement[0].Action[1]: expected a string");
  EXPECT_EQ(refusal(doc(R"({"Effect":"Allow","Action":[],"Resource":"*"})")),
            "Statement[0].Action: must not be an empty array");
  EXPECT_EQ(refusal(doc(allow_stmt("", "*", "bucket/key"))),
            "Statement[0].Resource: expected \"*\" or an ARN "
            "(arn:partition:service:region:account:resource)");
  EXPECT_NE(refusal(doc(allow_stmt("", "*", "arn:s3"))).find("expected \"*\" or an ARN"),
            std::string::npos);
  EXPECT_EQ(refusal(doc(R"({"Effect":"Allow","Action":"*","Resource":{"a":1}})")),
            "Statement[0].Resource: expected a string or an array of strings");
  EXPECT_EQ(refusal(doc(R"({"Sid":"A",)" + allow_stmt("").substr(1) + R"(,{"Sid":"A",)" +
                        allow_stmt("").substr(1))),
            R"(Statement[1].Sid: duplicate Sid "A")");
  EXPECT_EQ(refusal(doc(allow_stmt(R"("Sid":5)"))),
            "Statement[0].Sid: expected a string of at most 128 bytes");
  EXPECT_EQ(refusal(doc("7")), "Statement[0]: a statement must be an object");
}

TEST(PolicyParse, RefusesBadConditions) {
  auto cond = [](const std::string& c) { return refusal(doc(allow_stmt(R"("Condition":)" + c))); };
  EXPECT_EQ(cond(R"({"StringEquals":{"aws:username":{"x":1}}})"),
            "Statement[0].Condition.StringEquals.aws:username: expected a value or an array of "
            "values");
  EXPECT_EQ(cond(R"({"StringEquals":{"aws:username":null}})"),
            "Statement[0].Condition.StringEquals.aws:username: expected a value or an array of "
            "values");
  EXPECT_EQ(cond(R"({"StringEqualz":{"k":"v"}})"),
            "Statement[0].Condition.StringEqualz: unknown condition operator");
  EXPECT_EQ(cond(R"({"ForSomeValues:StringEquals":{"k":"v"}})"),
            "Statement[0].Condition.ForSomeValues:StringEquals: unknown condition operator");
  EXPECT_EQ(cond(R"({"NumericLessThan":{"s3:max-keys":"ten"}})"),
            "Statement[0].Condition.NumericLessThan.s3:max-keys: expected a number");
  EXPECT_EQ(cond(R"({"DateGreaterThan":{"aws:CurrentTime":["2020-01-01","2020-13-01"]}})"),
            "Statement[0].Condition.DateGreaterThan.aws:CurrentTime[1]: expected an ISO 8601 "
            "date or epoch seconds");
  EXPECT_EQ(cond(R"({"IpAddress":{"aws:SourceIp":"10.0.0.0/33"}})"),
            "Statement[0].Condition.IpAddress.aws:SourceIp: expected an IPv4 or IPv6 address or "
            "CIDR block");
  EXPECT_EQ(cond(R"({"Bool":{"aws:SecureTransport":"yes"}})"),
            "Statement[0].Condition.Bool.aws:SecureTransport: expected true or false");
  EXPECT_EQ(cond(R"({"BinaryEquals":{"k":"not base64!"}})"),
            "Statement[0].Condition.BinaryEquals.k: expected base64");
  EXPECT_EQ(cond(R"({"NullIfExists":{"k":"true"}})"),
            "Statement[0].Condition.NullIfExists: Null takes no IfExists suffix and no set "
            "prefix");
  EXPECT_EQ(cond(R"({"StringEquals":{}})"),
            "Statement[0].Condition.StringEquals: expected an object of condition keys and values");
  EXPECT_EQ(cond(R"("x")"), "Statement[0].Condition: expected an object of condition operators");
  EXPECT_EQ(cond(R"({"StringEquals":{"k":"${aws:username"}})"),
            "Statement[0].Condition.StringEquals.k: unterminated policy variable (\"${\" without "
            "\"}\")");
  EXPECT_EQ(cond(R"({"StringEquals":{"k":"${}"}})"),
            "Statement[0].Condition.StringEquals.k: malformed policy variable \"${}\"");
  EXPECT_EQ(cond(R"({"StringEquals":{"k":"${a, nodefault}"}})"),
            "Statement[0].Condition.StringEquals.k: malformed policy variable default (expected "
            "${key, 'default'})");
}

TEST(PolicyParse, PrincipalRules) {
  const std::string s = R"({"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"})";
  EXPECT_EQ(refusal(doc(s), PolicyKind::kIdentity),
            "Statement[0].Principal: an identity policy may not name a principal");
  EXPECT_EQ(refusal(doc(allow_stmt("")), PolicyKind::kResource),
            "Statement[0].Principal: missing (a statement needs Principal or NotPrincipal)");
  must_parse(doc(s), PolicyKind::kResource);
  auto principal = [](const std::string& p) {
    return refusal(doc(allow_stmt(R"("Principal":)" + p)));
  };
  EXPECT_EQ(principal(R"("someone")"),
            R"(Statement[0].Principal: expected "*" or an object such as {"AWS": "arn:..."})");
  EXPECT_EQ(principal(R"({"AWS":"arn:aws:iam::123456789012:role/*"})"),
            "Statement[0].Principal.AWS: wildcards are not allowed in a principal ARN (use \"*\" "
            "and a Condition on aws:PrincipalArn)");
  EXPECT_EQ(principal(R"({"AWS":["arn:aws:iam::1:role/a","bob"]})"),
            R"(Statement[0].Principal.AWS[1]: expected "*", a 12-digit account id or an ARN)");
  EXPECT_EQ(principal(R"({"CanonicalUser":"x"})"),
            "Statement[0].Principal.CanonicalUser: unknown principal type (expected AWS, Service "
            "or Federated)");
  EXPECT_EQ(principal(R"({"Service":"*"})"),
            "Statement[0].Principal.Service: expected a name without wildcards");
  EXPECT_EQ(principal(R"({})"),
            "Statement[0].Principal: expected \"*\" or an object with AWS, Service or Federated");
}

TEST(PolicyParse, HostileInput) {
  // Too big.
  const std::string big(kMaxPolicyBytes + 1, ' ');
  auto p = parse_policy(big, "p");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, ErrorCode::kPayloadTooLarge);
  // Not JSON.
  p = parse_policy("{\"Version\":", "p");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, ErrorCode::kBadRequest);
  EXPECT_NE(p.error().message.find("not valid JSON"), std::string::npos);
  p = parse_policy("{} x", "p");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, ErrorCode::kBadRequest);
  // Deep nesting: refused with the path where it went too deep.
  std::string deep = R"({"Version":"2012-10-17","Statement":[{"Condition":)";
  for (int i = 0; i < 20; ++i) {
    deep += R"({"a":)";
  }
  deep += "1" + std::string(20, '}') + "}]}";
  EXPECT_EQ(refusal(deep), "Statement[0].Condition.a.a.a.a.a: nested deeper than 8 levels");
  const std::string arrays = std::string(5000, '[') + std::string(5000, ']');
  EXPECT_EQ(refusal(arrays), "[0][0][0][0][0][0][0][0]: nested deeper than 8 levels");
  // Duplicate keys, which Boost.JSON's DOM would silently collapse.
  EXPECT_EQ(
      refusal(
          R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Effect":"Deny","Action":"*","Resource":"*"}]})"),
      "Statement[0].Effect: duplicate key");
  EXPECT_EQ(refusal(doc(allow_stmt(R"("Condition":{"StringEquals":{"k":"a","k":"b"}})"))),
            "Statement[0].Condition.StringEquals.k: duplicate key");
  // Huge arrays.
  std::string actions = R"({"Effect":"Allow","Resource":"*","Action":[)";
  for (std::size_t i = 0; i <= kMaxValues; ++i) {
    actions += std::string(i ? "," : "") + "\"s3:A\"";
  }
  EXPECT_EQ(refusal(doc(actions + "]}")), "Statement[0].Action: more than 500 values");
  std::string many;
  for (std::size_t i = 0; i <= kMaxStatements; ++i) {
    many += std::string(i ? "," : "") + R"({"Effect":"Deny","Action":"*","Resource":"*"})";
  }
  EXPECT_EQ(refusal(doc(many)), "Statement: more than 100 statements");
  std::string conds = R"({"StringEquals":{)";
  for (std::size_t i = 0; i <= kMaxConditions; ++i) {
    conds += std::string(i ? "," : "") + "\"k" + std::to_string(i) + "\":\"v\"";
  }
  EXPECT_EQ(refusal(doc(allow_stmt(R"("Condition":)" + conds + "}}"))),
            "Statement[0].Condition.StringEquals.k64: more than 64 conditions in one statement");
  const std::string long_action = "s3:" + std::string(kMaxStringBytes, 'a');
  EXPECT_EQ(refusal(doc(allow_stmt("", long_action))),
            "Statement[0].Action: longer than 2048 bytes");
  // Wrong types everywhere.
  EXPECT_EQ(refusal(R"({"Version":2012,"Statement":[]})"),
            R"(Version: must be "2012-10-17" or "2008-10-17")");
  EXPECT_EQ(refusal(doc(R"({"Effect":true,"Action":"*","Resource":"*"})")),
            R"(Statement[0].Effect: must be "Allow" or "Deny")");
  EXPECT_EQ(refusal(R"({"Version":"2012-10-17","Id":[],"Statement":[]})"),
            "Id: expected a string of at most 2048 bytes");
}

// ---- matching ---------------------------------------------------------------------------------

TEST(PolicyMatch, ActionsCaseInsensitiveWithWildcards) {
  const Policy p =
      must_parse(doc(allow_stmt("", "S3:Get*") + "," + allow_stmt("", "lambda:Invoke?unction")));
  EXPECT_TRUE(allowed(p, request("s3:getobject", "arn:gatehouse:s3:::b/k")));
  EXPECT_TRUE(allowed(p, request("S3:GETOBJECTACL", "arn:gatehouse:s3:::b/k")));
  EXPECT_TRUE(allowed(p, request("s3:Get", "arn:gatehouse:s3:::b/k")));
  EXPECT_FALSE(allowed(p, request("s3:PutObject", "arn:gatehouse:s3:::b/k")));
  EXPECT_FALSE(allowed(p, request("s3x:GetObject", "arn:gatehouse:s3:::b/k")));
  EXPECT_TRUE(allowed(p, request("lambda:InvokeFunction", "arn:x:y:z::a")));
  EXPECT_TRUE(allowed(p, request("LAMBDA:invokeFUNCTION", "arn:x:y:z::a")));
  EXPECT_FALSE(allowed(p, request("lambda:InvokeFunctio", "arn:x:y:z::a")));
  EXPECT_TRUE(allowed(p, request("lambda:InvokeXunction", "arn:x:y:z::a")));
  EXPECT_FALSE(allowed(p, request("lambda:InvokeFFunction", "arn:x:y:z::a")));
}

TEST(PolicyMatch, ResourcesCaseSensitiveStarSpansSlashAndColon) {
  const Policy p = must_parse(doc(allow_stmt("", "*", "arn:aws:s3:::bucket/home/*") + "," +
                                  allow_stmt("", "*", "arn:gatehouse:lambda:*:fn-?") + "," +
                                  allow_stmt("", "*", "arn:gatehouse:states:*")));
  EXPECT_TRUE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::bucket/home/a/b/c.jpg")));
  EXPECT_TRUE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::bucket/home/")));
  // AWS-shaped request ARNs are read as gatehouse ones.
  EXPECT_TRUE(allowed(p, request("s3:GetObject", "arn:aws:s3:::bucket/home/x")));
  EXPECT_FALSE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::Bucket/home/x")));
  EXPECT_FALSE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::bucket/HOME/x")));
  EXPECT_FALSE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::bucket/home")));
  // '*' crosses ':' (region, account, "function:") and '?' is exactly one character.
  EXPECT_TRUE(allowed(p, request("x:y", "arn:gatehouse:lambda:local:000000000000:function:fn-a")));
  EXPECT_FALSE(allowed(p, request("x:y", "arn:gatehouse:lambda:local:0:function:fn-ab")));
  EXPECT_FALSE(allowed(p, request("x:y", "arn:gatehouse:lambda:local:0:function:fn-")));
  EXPECT_TRUE(allowed(p, request("x:y", "arn:gatehouse:states:local:0:stateMachine:wf")));
  const Policy star = must_parse(doc(allow_stmt("", "*", "*")));
  EXPECT_TRUE(allowed(star, request("x:y", "")));
  const Policy multi = must_parse(doc(allow_stmt("", "*", "arn:gatehouse:s3:::*a*b*c")));
  EXPECT_TRUE(allowed(multi, request("x:y", "arn:gatehouse:s3:::aXbXbc")));
  EXPECT_FALSE(allowed(multi, request("x:y", "arn:gatehouse:s3:::aXbXcb")));
}

TEST(PolicyMatch, NotActionNotResource) {
  const Policy p = must_parse(doc(
      R"({"Effect":"Allow","NotAction":"iam:*","NotResource":["arn:aws:s3:::secret","arn:aws:s3:::secret/*"]})"));
  EXPECT_TRUE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::public/x")));
  EXPECT_FALSE(allowed(p, request("IAM:CreateRole", "arn:gatehouse:s3:::public/x")));
  EXPECT_FALSE(allowed(p, request("s3:GetObject", "arn:gatehouse:s3:::secret/x")));
  EXPECT_FALSE(allowed(p, request("s3:ListBucket", "arn:gatehouse:s3:::secret")));
}

// ---- conditions -------------------------------------------------------------------------------

TEST(PolicyCondition, StringOperators) {
  const Context alice = ctx({{"aws:username", {"alice"}}});
  EXPECT_TRUE(condition_allows(R"({"StringEquals":{"aws:username":["bob","alice"]}})", alice));
  EXPECT_FALSE(condition_allows(R"({"StringEquals":{"aws:username":"Alice"}})", alice));
  // Keys are case-insensitive, on both sides.
  EXPECT_TRUE(condition_allows(R"({"StringEquals":{"AWS:UserName":"alice"}})", alice));
  EXPECT_TRUE(condition_allows(R"({"StringEquals":{"aws:username":"alice"}})",
                               ctx({{"Aws:Username", {"alice"}}})));
  EXPECT_TRUE(condition_allows(R"({"StringNotEquals":{"aws:username":["bob","carol"]}})", alice));
  EXPECT_FALSE(condition_allows(R"({"StringNotEquals":{"aws:username":["bob","alice"]}})", alice));
  EXPECT_TRUE(condition_allows(R"({"StringEqualsIgnoreCase":{"aws:username":"ALICE"}})", alice));
  EXPECT_FALSE(
      condition_allows(R"({"StringNotEqualsIgnoreCase":{"aws:username":"ALICE"}})", alice));
  EXPECT_TRUE(condition_allows(R"({"StringLike":{"aws:username":"a*e"}})", alice));
  EXPECT_TRUE(condition_allows(R"({"StringLike":{"aws:username":"al?ce"}})", alice));
  EXPECT_FALSE(condition_allows(R"({"StringLike":{"aws:username":"A*"}})", alice));
  EXPECT_TRUE(condition_allows(R"({"StringNotLike":{"aws:username":"b*"}})", alice));
  EXPECT_FALSE(condition_allows(R"({"StringNotLike":{"aws:username":"a*"}})", alice));
  // Numbers and booleans in the policy compare as their text.
  EXPECT_TRUE(
      condition_allows(R"({"StringEquals":{"s3:max-keys":10}})", ctx({{"s3:max-keys", {"10"}}})));
}

TEST(PolicyCondition, MissingKeyAndIfExists) {
  const Context none;
  EXPECT_FALSE(condition_allows(R"({"StringEquals":{"aws:username":"alice"}})", none));
  // Negated operators are satisfied by a missing key (IAM's documented rule).
  EXPECT_TRUE(condition_allows(R"({"StringNotEquals":{"aws:username":"alice"}})", none));
  EXPECT_TRUE(condition_allows(R"({"StringNotLike":{"aws:username":"a*"}})", none));
  EXPECT_TRUE(condition_allows(R"({"StringEqualsIfExists":{"aws:username":"alice"}})", none));
  EXPECT_FALSE(condition_allows(R"({"StringEqualsIfExists":{"aws:username":"alice"}})",
                                ctx({{"aws:username", {"bob"}}})));
  EXPECT_TRUE(condition_allows(R"({"NumericLessThanIfExists":{"s3:max-keys":"10"}})", none));
  EXPECT_FALSE(condition_allows(R"({"NumericLessThan":{"s3:max-keys":"10"}})", none));
  EXPECT_TRUE(condition_allows(R"({"BoolIfExists":{"aws:MultiFactorAuthPresent":"true"}})", none));
  EXPECT_TRUE(condition_allows(R"({"IpAddressIfExists":{"aws:SourceIp":"10.0.0.0/8"}})", none));
  EXPECT_FALSE(condition_allows(R"({"IpAddressIfExists":{"aws:SourceIp":"10.0.0.0/8"}})",
                                ctx({{"aws:SourceIp", {"192.0.2.1"}}})));
}

TEST(PolicyCondition, NumericOperators) {
  const Context n = ctx({{"s3:max-keys", {"10"}}});
  EXPECT_TRUE(condition_allows(R"({"NumericEquals":{"s3:max-keys":"10"}})", n));
  EXPECT_TRUE(condition_allows(R"({"NumericEquals":{"s3:max-keys":10.0}})", n));
  EXPECT_FALSE(condition_allows(R"({"NumericNotEquals":{"s3:max-keys":10}})", n));
  EXPECT_TRUE(condition_allows(R"({"NumericNotEquals":{"s3:max-keys":11}})", n));
  EXPECT_TRUE(condition_allows(R"({"NumericLessThan":{"s3:max-keys":11}})", n));
  EXPECT_FALSE(condition_allows(R"({"NumericLessThan":{"s3:max-keys":10}})", n));
  EXPECT_TRUE(condition_allows(R"({"NumericLessThanEquals":{"s3:max-keys":10}})", n));
  EXPECT_TRUE(condition_allows(R"({"NumericGreaterThan":{"s3:max-keys":9.5}})", n));
  EXPECT_FALSE(condition_allows(R"({"NumericGreaterThan":{"s3:max-keys":10}})", n));
  EXPECT_TRUE(condition_allows(R"({"NumericGreaterThanEquals":{"s3:max-keys":"1e1"}})", n));
  // A request value that is not a number matches nothing.
  EXPECT_FALSE(
      condition_allows(R"({"NumericEquals":{"s3:max-keys":10}})", ctx({{"s3:max-keys", {"ten"}}})));
}

TEST(PolicyCondition, DateOperators) {
  const Context t = ctx({{"aws:CurrentTime", {"2024-05-01T12:00:00Z"}}});
  EXPECT_TRUE(
      condition_allows(R"({"DateEquals":{"aws:CurrentTime":"2024-05-01T14:00:00+02:00"}})", t));
  EXPECT_TRUE(condition_allows(R"({"DateEquals":{"aws:CurrentTime":"1714564800"}})", t));
  EXPECT_FALSE(condition_allows(R"({"DateNotEquals":{"aws:CurrentTime":"1714564800"}})", t));
  EXPECT_TRUE(condition_allows(R"({"DateLessThan":{"aws:CurrentTime":"2024-05-02"}})", t));
  EXPECT_FALSE(
      condition_allows(R"({"DateLessThan":{"aws:CurrentTime":"2024-05-01T12:00:00Z"}})", t));
  EXPECT_TRUE(
      condition_allows(R"({"DateLessThanEquals":{"aws:CurrentTime":"2024-05-01T12:00:00Z"}})", t));
  EXPECT_TRUE(
      condition_allows(R"({"DateGreaterThan":{"aws:CurrentTime":"2024-05-01T11:59:59.999Z"}})", t));
  EXPECT_TRUE(condition_allows(R"({"DateGreaterThanEquals":{"aws:CurrentTime":1714564800}})", t));
  EXPECT_FALSE(
      condition_allows(R"({"DateGreaterThan":{"aws:CurrentTime":"2024-05-01T12:00:00.001Z"}})", t));
  // Epoch seconds in the request work too (aws:EpochTime).
  EXPECT_TRUE(condition_allows(R"({"DateLessThan":{"aws:EpochTime":"2030-01-01T00:00:00Z"}})",
                               ctx({{"aws:EpochTime", {"1714564800"}}})));
  EXPECT_TRUE(
      condition_allows(R"({"DateGreaterThan":{"aws:CurrentTime":"2024-02-29T00:00:00Z"}})", t));
}

TEST(PolicyCondition, BoolBinaryNull) {
  const Context secure = ctx({{"aws:SecureTransport", {"true"}}});
  EXPECT_TRUE(condition_allows(R"({"Bool":{"aws:SecureTransport":"true"}})", secure));
  EXPECT_TRUE(condition_allows(R"({"Bool":{"aws:SecureTransport":true}})", secure));
  EXPECT_FALSE(condition_allows(R"({"Bool":{"aws:SecureTransport":false}})", secure));
  EXPECT_FALSE(condition_allows(R"({"Bool":{"aws:SecureTransport":"false"}})", Context{}));
  EXPECT_TRUE(condition_allows(R"({"BinaryEquals":{"k":"QmluYXJ5"}})", ctx({{"k", {"QmluYXJ5"}}})));
  EXPECT_FALSE(
      condition_allows(R"({"BinaryEquals":{"k":"QmluYXJ5"}})", ctx({{"k", {"QmluYXJz"}}})));
  EXPECT_TRUE(condition_allows(R"({"Null":{"aws:TokenIssueTime":"true"}})", Context{}));
  EXPECT_FALSE(condition_allows(R"({"Null":{"aws:TokenIssueTime":"true"}})",
                                ctx({{"aws:TokenIssueTime", {"x"}}})));
  EXPECT_TRUE(condition_allows(R"({"Null":{"aws:TokenIssueTime":false}})",
                               ctx({{"aws:TokenIssueTime", {"x"}}})));
  EXPECT_FALSE(condition_allows(R"({"Null":{"aws:TokenIssueTime":false}})", Context{}));
}

TEST(PolicyCondition, IpAddress) {
  auto from = [](const std::string& ip) { return ctx({{"aws:SourceIp", {ip}}}); };
  const std::string nets =
      R"({"IpAddress":{"aws:SourceIp":["10.0.0.0/8","2001:db8::/32","192.0.2.7"]}})";
  EXPECT_TRUE(condition_allows(nets, from("10.1.2.3")));
  EXPECT_FALSE(condition_allows(nets, from("11.0.0.1")));
  EXPECT_TRUE(condition_allows(nets, from("2001:db8:1::5")));
  EXPECT_FALSE(condition_allows(nets, from("2001:db9::5")));
  EXPECT_TRUE(condition_allows(nets, from("192.0.2.7")));
  EXPECT_FALSE(condition_allows(nets, from("192.0.2.8")));
  EXPECT_TRUE(condition_allows(nets, from("::ffff:10.9.9.9")));  // IPv4-mapped
  EXPECT_FALSE(condition_allows(nets, from("not-an-ip")));
  EXPECT_TRUE(condition_allows(R"({"IpAddress":{"aws:SourceIp":"172.16.0.0/12"}})",
                               from("172.31.255.255")));
  EXPECT_FALSE(
      condition_allows(R"({"IpAddress":{"aws:SourceIp":"172.16.0.0/12"}})", from("172.32.0.0")));
  EXPECT_TRUE(
      condition_allows(R"({"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}})", from("192.0.2.1")));
  EXPECT_FALSE(
      condition_allows(R"({"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}})", from("10.0.0.1")));
  EXPECT_TRUE(condition_allows(R"({"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}})", from("8.8.8.8")));
  EXPECT_FALSE(condition_allows(R"({"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}})", from("::1")));
}

TEST(PolicyCondition, ArnOperatorsAreComponentWise) {
  auto src = [](const std::string& arn) { return ctx({{"aws:SourceArn", {arn}}}); };
  const std::string like = R"({"ArnLike":{"aws:SourceArn":"arn:aws:s3:::uploads*"}})";
  EXPECT_TRUE(condition_allows(like, src("arn:gatehouse:s3:::uploads")));
  EXPECT_TRUE(condition_allows(like, src("arn:aws:s3:::uploads-2")));
  EXPECT_FALSE(condition_allows(like, src("arn:gatehouse:s3:us-east-1::uploads")));
  // '*' in one component cannot swallow the next one.
  const std::string region =
      R"({"ArnLike":{"aws:SourceArn":"arn:gatehouse:lambda:*:000000000000:function:f"}})";
  EXPECT_TRUE(condition_allows(region, src("arn:gatehouse:lambda:local:000000000000:function:f")));
  EXPECT_FALSE(
      condition_allows(region, src("arn:gatehouse:lambda:local:x:000000000000:function:f")));
  EXPECT_TRUE(condition_allows(R"({"ArnEquals":{"aws:SourceArn":"arn:aws:sqs:r:1:q"}})",
                               src("arn:gatehouse:sqs:r:1:q")));
  EXPECT_FALSE(condition_allows(R"({"ArnEquals":{"aws:SourceArn":"arn:aws:sqs:r:1:q"}})",
                                src("arn:gatehouse:sqs:r:1:Q")));
  EXPECT_FALSE(condition_allows(R"({"ArnNotEquals":{"aws:SourceArn":"arn:aws:sqs:r:1:q"}})",
                                src("arn:gatehouse:sqs:r:1:q")));
  EXPECT_TRUE(condition_allows(R"({"ArnNotLike":{"aws:SourceArn":"arn:aws:sqs:*:*:q*"}})",
                               src("arn:gatehouse:sns:r:1:q")));
  EXPECT_FALSE(condition_allows(like, src("not-an-arn")));
  EXPECT_TRUE(condition_allows(R"({"ArnLike":{"aws:SourceArn":"*"}})", src("anything")));
}

TEST(PolicyCondition, SetPrefixes) {
  const Context tags = ctx({{"aws:TagKeys", {"env", "team"}}});
  const Context none;
  const Context empty = ctx({{"aws:TagKeys", {}}});
  const std::string all = R"({"ForAllValues:StringEquals":{"aws:TagKeys":["env","team","cost"]}})";
  EXPECT_TRUE(condition_allows(all, tags));
  EXPECT_FALSE(condition_allows(all, ctx({{"aws:TagKeys", {"env", "owner"}}})));
  EXPECT_TRUE(condition_allows(all, none));   // vacuously true on a missing key
  EXPECT_TRUE(condition_allows(all, empty));  // and on an empty set
  const std::string any = R"({"ForAnyValue:StringEquals":{"aws:TagKeys":["team","x"]}})";
  EXPECT_TRUE(condition_allows(any, tags));
  EXPECT_FALSE(condition_allows(any, ctx({{"aws:TagKeys", {"env"}}})));
  EXPECT_FALSE(condition_allows(any, none));
  EXPECT_FALSE(condition_allows(any, empty));
  // Negated operators apply per request value: ForAllValues:StringNotEquals = no request value
  // is listed; ForAnyValue:StringNotEquals = some request value is not listed.
  const std::string all_not = R"({"ForAllValues:StringNotEquals":{"aws:TagKeys":["secret"]}})";
  EXPECT_TRUE(condition_allows(all_not, tags));
  EXPECT_FALSE(condition_allows(all_not, ctx({{"aws:TagKeys", {"env", "secret"}}})));
  EXPECT_TRUE(condition_allows(all_not, none));
  const std::string any_not = R"({"ForAnyValue:StringNotEquals":{"aws:TagKeys":["env"]}})";
  EXPECT_TRUE(condition_allows(any_not, tags));
  EXPECT_FALSE(condition_allows(any_not, ctx({{"aws:TagKeys", {"env"}}})));
  EXPECT_FALSE(condition_allows(any_not, none));
  EXPECT_TRUE(condition_allows(R"({"ForAnyValue:StringLike":{"aws:TagKeys":"te*"}})", tags));
  EXPECT_TRUE(
      condition_allows(R"({"ForAllValues:StringLikeIfExists":{"aws:TagKeys":"*e*"}})", tags));
  // Without a prefix on a multivalued key: positive = some value matches, negated = none does.
  EXPECT_TRUE(condition_allows(R"({"StringEquals":{"aws:TagKeys":"team"}})", tags));
  EXPECT_FALSE(condition_allows(R"({"StringNotEquals":{"aws:TagKeys":"team"}})", tags));
}

TEST(PolicyCondition, KeysAndOperatorsAreAndedValuesOred) {
  const std::string c =
      R"({"StringEquals":{"aws:username":["alice","bob"],"gatehouse:Route":"upload"},"Bool":{"aws:SecureTransport":"true"}})";
  EXPECT_TRUE(condition_allows(c, ctx({{"aws:username", {"bob"}},
                                       {"gatehouse:Route", {"upload"}},
                                       {"aws:SecureTransport", {"true"}}})));
  EXPECT_FALSE(condition_allows(c, ctx({{"aws:username", {"bob"}},
                                        {"gatehouse:Route", {"upload"}},
                                        {"aws:SecureTransport", {"false"}}})));
  EXPECT_FALSE(condition_allows(c, ctx({{"aws:username", {"bob"}},
                                        {"gatehouse:Route", {"other"}},
                                        {"aws:SecureTransport", {"true"}}})));
}

// ---- policy variables -------------------------------------------------------------------------

TEST(PolicyVariables, ResolveInResourceAndCondition) {
  const Policy p = must_parse(
      doc(allow_stmt(R"("Condition":{"StringEquals":{"s3:prefix":"home/${aws:username}/"}})",
                     "s3:*", "arn:aws:s3:::bucket/home/${aws:username}/*")));
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::bucket/home/alice/photo.jpg");
  r.context.set("aws:username", "alice");
  r.context.set("s3:prefix", "home/alice/");
  EXPECT_TRUE(allowed(p, r));
  r.resource = "arn:gatehouse:s3:::bucket/home/bob/photo.jpg";
  EXPECT_FALSE(allowed(p, r));
  // Unresolvable: the statement does not match.
  Request anon = request("s3:GetObject", "arn:gatehouse:s3:::bucket/home//x");
  anon.context.set("s3:prefix", "home//");
  EXPECT_FALSE(allowed(p, anon));
}

TEST(PolicyVariables, ValuesAreLiteralNotWildcards) {
  const Policy p = must_parse(doc(allow_stmt("", "*", "arn:aws:s3:::b/${aws:username}/*")));
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::b/alice/x");
  r.context.set("aws:username", "*");  // a user called "*" gets only the folder named "*"
  EXPECT_FALSE(allowed(p, r));
  r.resource = "arn:gatehouse:s3:::b/*/x";
  EXPECT_TRUE(allowed(p, r));
}

TEST(PolicyVariables, DefaultsEscapesAndDerivedKeys) {
  const Policy p = must_parse(
      doc(allow_stmt("", "*", "arn:aws:s3:::b/${aws:PrincipalTag/team, 'shared'}/*") + "," +
          allow_stmt(R"("Condition":{"StringEquals":{"k":"a${*}b${?}c${$}"}})", "x:esc") + "," +
          allow_stmt(R"("Condition":{"StringLike":{"k":"${*}*"}})", "x:like") + "," +
          allow_stmt(R"("Condition":{"StringEquals":{"k":"${aws:PrincipalArn}"}})", "x:arn") + "," +
          allow_stmt("", "x:sub", "arn:aws:s3:::b/${cognito-identity.amazonaws.com:sub}")));
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::b/shared/x");
  EXPECT_TRUE(allowed(p, r));
  r.principal.tags = {{"Team", "red"}};
  EXPECT_FALSE(allowed(p, r));
  r.resource = "arn:gatehouse:s3:::b/red/x";
  EXPECT_TRUE(allowed(p, r));

  Request esc = request("x:esc", "arn:a:b:c:d:e");
  esc.context.set("k", "a*b?c$");
  EXPECT_TRUE(allowed(p, esc));
  Request like = request("x:like", "arn:a:b:c:d:e");
  like.context.set("k", "*anything");
  EXPECT_TRUE(allowed(p, like));
  like.context.set("k", "anything");  // ${*} is a literal star, not a wildcard
  EXPECT_FALSE(allowed(p, like));
  Request arn = request("x:arn", "arn:a:b:c:d:e");
  arn.context.set("k", "arn:gatehouse:iam::000000000000:role/app");
  EXPECT_TRUE(allowed(p, arn));
  Request sub = request("x:sub", "arn:gatehouse:s3:::b/us-east-1:1234");
  sub.context.set("cognito-identity.amazonaws.com:sub", "us-east-1:1234");
  EXPECT_TRUE(allowed(p, sub));
  // A multivalued key is not a single value: the variable is unresolved.
  sub.context.set("cognito-identity.amazonaws.com:sub", std::vector<std::string>{"a", "b"});
  EXPECT_FALSE(allowed(p, sub));
}

TEST(PolicyVariables, LiteralUnder2008) {
  const Policy p =
      must_parse(doc(allow_stmt("", "*", "arn:aws:s3:::b/${aws:username}/*"), "2008-10-17"));
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::b/alice/x");
  r.context.set("aws:username", "alice");
  EXPECT_FALSE(allowed(p, r));
  r.resource = "arn:gatehouse:s3:::b/${aws:username}/x";
  EXPECT_TRUE(allowed(p, r));
  // Malformed variables are plain text there, so they are not refused.
  must_parse(doc(allow_stmt(R"("Condition":{"StringEquals":{"k":"${"}})"), "2008-10-17"));
}

TEST(PolicyVariables, NotInActions) {
  const Policy p = must_parse(doc(allow_stmt("", "s3:${aws:username}")));
  Request r = request("s3:alice", "arn:a:b:c:d:e");
  r.context.set("aws:username", "alice");
  EXPECT_FALSE(allowed(p, r));
}

// ---- evaluation -------------------------------------------------------------------------------

TEST(PolicyEvaluate, DenyBeatsAllowAndImplicitDeny) {
  const Policy allow_all =
      must_parse(doc(allow_stmt(R"("Sid":"All")")), PolicyKind::kIdentity, "allow-all");
  const Policy deny_delete =
      must_parse(doc(R"({"Sid":"NoDelete","Effect":"Deny","Action":"s3:Delete*","Resource":"*"})"),
                 PolicyKind::kIdentity, "guard");
  const Request get = request("s3:GetObject", "arn:gatehouse:s3:::b/k");
  const Request del = request("s3:DeleteObject", "arn:gatehouse:s3:::b/k");
  Decision d = decide(get, {&allow_all, &deny_delete});
  EXPECT_EQ(d.effect, Effect::kAllow);
  EXPECT_EQ(d.explain(), "allow: policy 'allow-all' statement 'All' (Statement[0])");
  d = decide(del, {&allow_all, &deny_delete});
  EXPECT_EQ(d.effect, Effect::kExplicitDeny);
  EXPECT_EQ(d.policy, &deny_delete);
  EXPECT_EQ(d.sid, "NoDelete");
  EXPECT_EQ(d.explain(), "explicit deny: policy 'guard' statement 'NoDelete' (Statement[0])");
  d = decide(del, {&deny_delete, nullptr});
  EXPECT_EQ(d.effect, Effect::kExplicitDeny);
  d = decide(get, {&deny_delete});
  EXPECT_EQ(d.effect, Effect::kImplicitDeny);
  EXPECT_EQ(d.policy, nullptr);
  EXPECT_EQ(d.explain(), "implicit deny: no statement allowed");
  d = decide(get, {});
  EXPECT_EQ(d.effect, Effect::kImplicitDeny);
}

TEST(PolicyEvaluate, ExplanationWithoutSid) {
  const Policy p = must_parse(doc(allow_stmt("", "s3:Put*") + "," + allow_stmt("", "s3:Get*")),
                              PolicyKind::kIdentity, "two");
  const Decision d = decide(request("s3:GetObject", "arn:gatehouse:s3:::b/k"), {&p});
  EXPECT_EQ(d.statement, 1U);
  EXPECT_EQ(d.explain(), "allow: policy 'two' statement Statement[1]");
}

TEST(PolicyEvaluate, IdentityAndResourcePoliciesCombine) {
  const std::string role = "arn:gatehouse:iam::000000000000:role/reader";
  const Policy identity = must_parse(doc(allow_stmt("", "s3:GetObject", "arn:aws:s3:::b/*")),
                                     PolicyKind::kIdentity, "id");
  const Policy bucket = must_parse(
      doc(R"({"Sid":"Writer","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:role/writer"},"Action":"s3:PutObject","Resource":"arn:aws:s3:::b/*"})"),
      PolicyKind::kResource, "bucket:b");
  // Allowed by the identity policy alone.
  Decision d =
      decide(request("s3:GetObject", "arn:gatehouse:s3:::b/k", {role}), {&identity}, &bucket);
  EXPECT_EQ(d.effect, Effect::kAllow);
  EXPECT_FALSE(d.resource_policy);
  // Allowed by the resource policy alone (its principal matches).
  d = decide(request("s3:PutObject", "arn:gatehouse:s3:::b/k",
                     {"arn:gatehouse:iam::000000000000:role/writer"}),
             {}, &bucket);
  EXPECT_EQ(d.effect, Effect::kAllow);
  EXPECT_TRUE(d.resource_policy);
  EXPECT_EQ(d.explain(), "allow: resource policy 'bucket:b' statement 'Writer' (Statement[0])");
  // The resource policy names someone else: no allow.
  d = decide(request("s3:PutObject", "arn:gatehouse:s3:::b/k", {role}), {&identity}, &bucket);
  EXPECT_EQ(d.effect, Effect::kImplicitDeny);
  // A deny in the resource policy beats an identity allow.
  const Policy deny = must_parse(
      doc(R"({"Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/private/*"})"),
      PolicyKind::kResource, "bucket:b");
  d = decide(request("s3:GetObject", "arn:gatehouse:s3:::b/private/x", {role}), {&identity}, &deny);
  EXPECT_EQ(d.effect, Effect::kExplicitDeny);
  EXPECT_TRUE(d.resource_policy);
  // A statement with no Principal never applies from the resource-policy slot.
  const Policy no_principal = must_parse(doc(allow_stmt("")), PolicyKind::kAny, "np");
  EXPECT_FALSE(decide(request("s3:GetObject", "arn:gatehouse:s3:::b/k", {role}), {}, &no_principal)
                   .allowed());
}

TEST(PolicyEvaluate, PrincipalKinds) {
  const Policy p = must_parse(
      doc(
          R"({"Sid":"Acct","Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"x:acct","Resource":"*"},
         {"Sid":"Root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:root"},"Action":"x:root","Resource":"*"},
         {"Sid":"Svc","Effect":"Allow","Principal":{"Service":["states.amazonaws.com"]},"Action":"x:svc","Resource":"*"},
         {"Sid":"Fed","Effect":"Allow","Principal":{"Federated":"cognito-identity.amazonaws.com"},"Action":"x:fed","Resource":"*"},
         {"Sid":"Any","Effect":"Allow","Principal":{"AWS":"*"},"Action":"x:any","Resource":"*"},
         {"Sid":"User","Effect":"Allow","Principal":{"AWS":["arn:gatehouse:iam::000000000000:user/pool/alice","arn:gatehouse:iam::000000000000:apikey/ci"]},"Action":"x:user","Resource":"*"})"),
      PolicyKind::kResource);
  auto ok = [&](const std::string& action, Principal who) {
    Request r = request(action, "arn:a:b:c:d:e");
    r.principal = std::move(who);
    return decide(r, {}, &p).allowed();
  };
  // An Allow naming an account delegates to the account's identity policies (as in IAM): it
  // allows nothing by itself. PrincipalAccountsDenyButDelegateAllows shows that it matches.
  EXPECT_FALSE(ok("x:acct", Principal{{"arn:gatehouse:iam::111122223333:role/r"}, {}, {}, {}, {}}));
  EXPECT_FALSE(ok("x:acct", Principal{{}, {}, {}, "111122223333", {}}));
  EXPECT_FALSE(ok("x:root", Principal{{"arn:aws:iam::444455556666:user/u"}, {}, {}, {}, {}}));
  EXPECT_TRUE(ok("x:svc", Principal{{}, {"states.amazonaws.com"}, {}, {}, {}}));
  EXPECT_FALSE(
      ok("x:svc", Principal{{"arn:gatehouse:iam::0:role/states.amazonaws.com"}, {}, {}, {}, {}}));
  EXPECT_TRUE(ok("x:fed", Principal{{}, {}, {"cognito-identity.amazonaws.com"}, {}, {}}));
  EXPECT_TRUE(ok("x:any", Principal{}));  // anonymous matches "*"
  EXPECT_FALSE(ok("x:acct", Principal{}));
  EXPECT_TRUE(
      ok("x:user", Principal{{"arn:gatehouse:iam::000000000000:user/pool/alice"}, {}, {}, {}, {}}));
  EXPECT_TRUE(
      ok("x:user", Principal{{"arn:gatehouse:iam::000000000000:apikey/ci"}, {}, {}, {}, {}}));
  EXPECT_FALSE(
      ok("x:user", Principal{{"arn:gatehouse:iam::000000000000:user/pool/Alice"}, {}, {}, {}, {}}));
}

TEST(PolicyEvaluate, PrincipalAccountsDenyButDelegateAllows) {
  const Policy bucket = must_parse(
      doc(R"({"Sid":"Acct","Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"s3:*","Resource":"*"},
             {"Sid":"NoPut","Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"s3:PutObject","Resource":"*"})"),
      PolicyKind::kResource);
  const Policy reader = must_parse(doc(allow_stmt("", "s3:Get*")));
  auto as = [&](std::string action, std::string arn, std::initializer_list<const Policy*> ids) {
    Request r = request(std::move(action), "arn:gatehouse:s3:::b/k", {std::move(arn)});
    return decide(r, ids, &bucket);
  };
  const std::string role = "arn:gatehouse:iam::111122223333:role/r";
  // The account's Allow grants nothing alone; the identity policy does.
  EXPECT_EQ(as("s3:GetObject", role, {}).effect, Effect::kImplicitDeny);
  const Decision d = as("s3:GetObject", role, {&reader});
  EXPECT_TRUE(d.allowed());
  EXPECT_FALSE(d.resource_policy);
  // The Deny naming the account applies to every principal of it, whatever allows.
  const Decision denied = as("s3:PutObject", role, {&reader});
  EXPECT_EQ(denied.effect, Effect::kExplicitDeny);
  EXPECT_EQ(denied.sid, "NoPut");
  // Another account's principal is not named at all.
  EXPECT_EQ(as("s3:PutObject", "arn:gatehouse:iam::999999999999:role/r", {}).effect,
            Effect::kImplicitDeny);
}

// The bucket lock-down pattern: a Deny with NotPrincipal refuses everyone but the named role,
// and the role's session ARN counts as the role.
TEST(PolicyEvaluate, BucketLockDownWithDenyNotPrincipal) {
  const std::string upload_role = "arn:gatehouse:iam::000000000000:role/upload";
  const std::string upload_session = "arn:gatehouse:sts::000000000000:assumed-role/upload/inv-42";
  const Policy bucket = must_parse(doc(R"(
      {"Sid":"OnlyUploadWrites","Effect":"Deny",
       "NotPrincipal":{"AWS":["arn:aws:iam::000000000000:role/upload",
                              "arn:aws:sts::000000000000:assumed-role/upload/inv-42"]},
       "Action":"s3:PutObject","Resource":"arn:aws:s3:::images/*"},
      {"Sid":"UploadWrites","Effect":"Allow",
       "Principal":{"AWS":"arn:aws:iam::000000000000:role/upload"},
       "Action":"s3:PutObject","Resource":"arn:aws:s3:::images/*"})"),
                                   PolicyKind::kResource, "bucket:images");
  const Policy admin =
      must_parse(doc(allow_stmt(R"("Sid":"Admin")")), PolicyKind::kIdentity, "admin");
  const std::string key = "arn:gatehouse:s3:::images/u/1.jpg";
  // The upload role, by its role ARN or as its session (listing any one ARN suffices).
  Decision d = decide(request("s3:PutObject", key, {upload_role, upload_session}), {}, &bucket);
  EXPECT_EQ(d.effect, Effect::kAllow) << d.explain();
  EXPECT_EQ(d.sid, "UploadWrites");
  d = decide(request("s3:PutObject", key, {upload_session}), {}, &bucket);
  EXPECT_EQ(d.effect, Effect::kImplicitDeny) << d.explain();  // not denied, but not allowed either
  // Anyone else is denied, even with an admin identity policy allowing everything.
  d = decide(request("s3:PutObject", key, {"arn:gatehouse:iam::000000000000:role/admin"}), {&admin},
             &bucket);
  EXPECT_EQ(d.effect, Effect::kExplicitDeny);
  EXPECT_EQ(d.explain(),
            "explicit deny: resource policy 'bucket:images' statement 'OnlyUploadWrites' "
            "(Statement[0])");
  d = decide(request("s3:PutObject", key, {}), {&admin}, &bucket);  // anonymous
  EXPECT_EQ(d.effect, Effect::kExplicitDeny);
  // A different session name of the same role is not listed.
  d = decide(
      request("s3:PutObject", key, {"arn:gatehouse:sts::000000000000:assumed-role/upload/other"}),
      {&admin}, &bucket);
  EXPECT_EQ(d.effect, Effect::kExplicitDeny);
  // Reads are outside the deny: the admin's identity policy allows them.
  d = decide(request("s3:GetObject", key, {"arn:gatehouse:iam::000000000000:role/admin"}), {&admin},
             &bucket);
  EXPECT_EQ(d.effect, Effect::kAllow);
}

TEST(PolicyEvaluate, DerivedPrincipalKeys) {
  const Policy p = must_parse(doc(allow_stmt(
      R"("Condition":{"StringEquals":{"aws:PrincipalAccount":"000000000000","aws:PrincipalTag/Dept":"eng"},"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/app"}})")));
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::b/k");
  r.principal.tags = {{"dept", "eng"}};
  EXPECT_TRUE(allowed(p, r));
  r.principal.tags = {{"dept", "ops"}};
  EXPECT_FALSE(allowed(p, r));
  // The context overrides what the engine derives.
  r.principal.tags = {{"dept", "eng"}};
  r.context.set("aws:PrincipalAccount", "999999999999");
  EXPECT_FALSE(allowed(p, r));

  const Policy same_account = must_parse(doc(allow_stmt(
      R"("Condition":{"StringEquals":{"aws:ResourceAccount":"${aws:PrincipalAccount}"}})")));
  Request own = request("s3:GetObject", "arn:gatehouse:s3:::b/k");
  EXPECT_TRUE(allowed(same_account, own));  // both default to 000000000000
  own.account = "123456789012";
  EXPECT_FALSE(allowed(same_account, own));
}

}  // namespace
}  // namespace gatehouse::policy

namespace gatehouse::policy {
namespace {

TEST(PolicyParse, OperandEdgeCases) {
  auto cond_doc = [](const std::string& c) { return doc(allow_stmt(R"("Condition":)" + c)); };
  must_parse(cond_doc(R"({"BinaryEquals":{"k":["QQ==","QUI=","QUJD"]}})"));
  EXPECT_EQ(refusal(cond_doc(R"({"BinaryEquals":{"k":"Q=Q="}})")),
            "Statement[0].Condition.BinaryEquals.k: expected base64");
  must_parse(cond_doc(R"({"DateEquals":{"aws:CurrentTime":"2024-02-29"}})"));
  EXPECT_EQ(refusal(cond_doc(R"({"DateEquals":{"aws:CurrentTime":"2023-02-29"}})")),
            "Statement[0].Condition.DateEquals.aws:CurrentTime: expected an ISO 8601 date or "
            "epoch seconds");
  EXPECT_FALSE(
      parse_policy(cond_doc(R"({"DateEquals":{"aws:CurrentTime":"2024-01-01T25:00:00Z"}})"), "p"));
  EXPECT_FALSE(parse_policy(cond_doc(R"({"NumericEquals":{"k":"1e999"}})"), "p"));
  EXPECT_FALSE(parse_policy(cond_doc(R"({"IpAddress":{"aws:SourceIp":"10.0.0.256"}})"), "p"));
  // A variable operand is checked per request instead.
  must_parse(cond_doc(R"({"NumericLessThan":{"k":"${gatehouse:Limit}"}})"));
  // The single-statement form reports paths without an index.
  EXPECT_EQ(refusal(R"({"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*"}})"),
            "Statement.Resource: missing (a statement needs Resource or NotResource)");
}

TEST(PolicyCondition, VariableOperandsParsePerRequest) {
  const std::string c = R"({"NumericLessThan":{"s3:max-keys":"${gatehouse:Limit}"}})";
  EXPECT_TRUE(condition_allows(c, ctx({{"s3:max-keys", {"5"}}, {"gatehouse:Limit", {"10"}}})));
  EXPECT_FALSE(condition_allows(c, ctx({{"s3:max-keys", {"50"}}, {"gatehouse:Limit", {"10"}}})));
  EXPECT_FALSE(condition_allows(c, ctx({{"s3:max-keys", {"5"}}, {"gatehouse:Limit", {"x"}}})));
  EXPECT_FALSE(condition_allows(c, ctx({{"s3:max-keys", {"5"}}})));  // unresolved
}

// ---- the pieces the gateway wires in --------------------------------------------------------

TEST(PolicyContext, AssignClearAndAddReadAsExpected) {
  Context c;
  c.assign("aws:username", "alice");
  ASSERT_NE(c.find("AWS:UserName"), nullptr);  // keys are case-insensitive
  EXPECT_EQ(c.find("aws:username")->front(), "alice");
  c.add("aws:username", "bob");
  EXPECT_EQ(c.find("aws:username")->size(), 2U);
  c.assign("aws:username", "carol");  // back to one value
  ASSERT_EQ(c.find("aws:username")->size(), 1U);
  EXPECT_EQ(c.find("aws:username")->front(), "carol");
  c.clear("aws:username");
  EXPECT_EQ(c.find("aws:username"), nullptr);  // cleared reads as absent
  c.add("aws:username", "dave");               // add after clear starts afresh
  ASSERT_EQ(c.find("aws:username")->size(), 1U);
  EXPECT_EQ(c.find("aws:username")->front(), "dave");
  c.clear("never-set");  // harmless
  EXPECT_EQ(c.find("never-set"), nullptr);
}

TEST(PolicyContext, ClearPrefixAndAppendCarryJwtClaimsBetweenRequests) {
  // What the gateway does per request with a JWT's claims: clear every jwt: key, then append.
  Context c;
  c.append("jwt:scope", "read");
  c.append("JWT:Scope", "write");  // same key, one more value
  c.append("jwt:sub", "u-1");
  c.assign("aws:SourceIp", "127.0.0.1");
  ASSERT_NE(c.find("jwt:scope"), nullptr);
  EXPECT_EQ(*c.find("jwt:scope"), (std::vector<std::string>{"read", "write"}));
  c.clear_prefix("Jwt:");  // case-insensitive, like the keys
  EXPECT_EQ(c.find("jwt:scope"), nullptr);
  EXPECT_EQ(c.find("jwt:sub"), nullptr);
  ASSERT_NE(c.find("aws:SourceIp"), nullptr);  // other keys stay
  // The next request's claims start afresh: the earlier values do not come back.
  c.append("jwt:scope", "admin");
  EXPECT_EQ(*c.find("jwt:scope"), (std::vector<std::string>{"admin"}));
  EXPECT_EQ(c.find("jwt:sub"), nullptr);
  c.clear_prefix("");  // everything
  EXPECT_EQ(c.find("aws:SourceIp"), nullptr);
}

TEST(PolicyContext, ClearedKeysFallBackToDerivedOnesAndFailConditions) {
  // A cleared aws:PrincipalArn reads as absent, so the engine derives it from the principal.
  Context c;
  c.assign("aws:PrincipalArn", "arn:gatehouse:iam::000000000000:role/other");
  c.clear("aws:PrincipalArn");
  EXPECT_TRUE(condition_allows(
      R"({"StringEquals":{"aws:PrincipalArn":"arn:gatehouse:iam::000000000000:role/app"}})", c));
  c.assign("aws:SourceIp", "10.0.0.1");
  c.clear("aws:SourceIp");
  EXPECT_FALSE(condition_allows(R"({"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}})", c));
  EXPECT_TRUE(condition_allows(R"({"Null":{"aws:SourceIp":"true"}})", c));
}

TEST(PolicyKeys, ConditionKeysListsConditionsAndVariablesOnce) {
  const Policy p = must_parse(doc(
      allow_stmt(R"("Condition":{"StringEquals":{"gatehouse:Header/X-A":"1","aws:username":"u"},)"
                 R"("StringLike":{"aws:userid":"${aws:username}-*"}})",
                 "*", "arn:gatehouse:s3:::b/${gatehouse:Header/X-B}/${aws:username}") +
      "," + allow_stmt(R"("Condition":{"Bool":{"aws:SecureTransport":"true"}})")));
  EXPECT_EQ(p.condition_keys(), (std::vector<std::string>{"gatehouse:header/x-b", "aws:username",
                                                          "gatehouse:header/x-a", "aws:userid",
                                                          "aws:securetransport"}));
  // Under 2008-10-17 ${...} is text, not a key.
  const Policy old =
      must_parse(doc(allow_stmt("", "*", "arn:gatehouse:s3:::b/${x}"), "2008-10-17"));
  EXPECT_TRUE(old.condition_keys().empty());
}

TEST(PolicyNames, PrincipalAndResourceArns) {
  EXPECT_EQ(role_arn("123456789012", "ops"), "arn:gatehouse:iam::123456789012:role/ops");
  EXPECT_EQ(api_key_arn("123456789012", "0123456789abcdef"),
            "arn:gatehouse:iam::123456789012:apikey/0123456789abcdef");
  EXPECT_EQ(user_arn("123456789012", "main", "alice"),
            "arn:gatehouse:iam::123456789012:user/main/alice");
  EXPECT_EQ(admin_arn("123456789012"), "arn:gatehouse:iam::123456789012:admin");
  EXPECT_EQ(function_arn("eu-west-3", "123456789012", "f"),
            "arn:gatehouse:lambda:eu-west-3:123456789012:function:f");
}

TEST(PolicyNames, AnonymousBelongsToNoAccount) {
  Request r = request("s3:GetObject", "arn:gatehouse:s3:::b/k", {std::string(kAnonymousArn)});
  // A Principal naming the account (or its root) never matches the anonymous caller ...
  for (const char* principal : {R"("000000000000")", R"("arn:aws:iam::000000000000:root")"}) {
    const Policy bucket =
        must_parse(doc(R"({"Effect":"Allow","Principal":{"AWS":)" + std::string(principal) +
                       R"(},"Action":"s3:*","Resource":"*"})"),
                   PolicyKind::kResource);
    EXPECT_FALSE(decide(r, {}, &bucket).allowed()) << principal;
  }
  // ... but naming its ARN does, and so does "*".
  const Policy named = must_parse(
      doc(R"({"Effect":"Allow","Principal":{"AWS":"arn:aws:iam:::anonymous"},"Action":"s3:*",)"
          R"("Resource":"*"})"),
      PolicyKind::kResource);
  EXPECT_TRUE(decide(r, {}, &named).allowed());
  const Policy by_arn = must_parse(doc(allow_stmt(
      R"("Condition":{"StringEquals":{"aws:PrincipalArn":"arn:gatehouse:iam:::anonymous"}})")));
  EXPECT_TRUE(allowed(by_arn, r));
  const Policy no_account =
      must_parse(doc(allow_stmt(R"("Condition":{"Null":{"aws:PrincipalAccount":"true"}})")));
  EXPECT_TRUE(allowed(no_account, r));
}

TEST(PolicyNames, TimeKeysAndAllowAll) {
  Context c;
  set_time_keys(c, std::chrono::system_clock::time_point(std::chrono::seconds(1714564800)));
  EXPECT_EQ(c.find("aws:CurrentTime")->front(), "2024-05-01T12:00:00Z");
  EXPECT_EQ(c.find("aws:EpochTime")->front(), "1714564800");
  const auto all = allow_all_policy();
  EXPECT_EQ(all, allow_all_policy());  // built once
  EXPECT_EQ(all->id(), "gatehouse:allow-all");
  EXPECT_TRUE(allowed(*all, request("gatehouse:Reload", "arn:gatehouse:gatehouse:::admin/x")));
}

}  // namespace
}  // namespace gatehouse::policy
