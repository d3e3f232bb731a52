#include "gateway/function_target.h"

#include <gtest/gtest.h>

#include <algorithm>

#include <boost/json.hpp>
#include <string>
#include <vector>

namespace gatehouse::gateway {
namespace {

namespace json = boost::json;
using config::PayloadFormat;

struct Fixture {
  std::vector<http::Header> headers{{"Host", "api.example.com"},
                                    {"User-Agent", "ua/1"},
                                    {"X-Multi", "a"},
                                    {"X-Multi", "b"},
                                    {"Cookie", "s=1; t=2"}};
  http::Request req;
  http::Match match;
  EventContext ctx;
  Fixture() {
    req.method = "POST";
    req.path = "/prod/items/7";
    req.query = "q=a%2Fb&q=c&flag";
    req.headers = headers;
    req.body = "{\"k\":1}";
    match.params[0] = {"id", "7"};
    match.param_count = 1;
    ctx.route_key = "POST /items/{id}";
    ctx.resource = "/items/{id}";
    ctx.stage = "prod";
    ctx.request_id = "rid";
    ctx.source_ip = "10.0.0.1";
    ctx.principal = "api_key:k1";
    ctx.lineage_depth = 2;
    ctx.time_epoch_ms = 1'583'348'638'390;
    ctx.match = &match;
  }
};

TEST(FunctionEvent, Version2HasTheApiGatewayShape) {
  Fixture f;
  const json::object ev = json::parse(build_event(PayloadFormat::kV2, f.req, f.ctx)).as_object();
  EXPECT_EQ(ev.at("version"), "2.0");
  EXPECT_EQ(ev.at("routeKey"), "POST /items/{id}");
  EXPECT_EQ(ev.at("rawPath"), "/prod/items/7");
  EXPECT_EQ(ev.at("rawQueryString"), "q=a%2Fb&q=c&flag");
  EXPECT_EQ(ev.at("queryStringParameters").at("q"), "a/b,c");
  EXPECT_EQ(ev.at("queryStringParameters").at("flag"), "");
  EXPECT_EQ(ev.at("headers").at("x-multi"), "a,b");  // lower-cased, joined
  EXPECT_FALSE(ev.at("headers").as_object().contains("cookie"));
  EXPECT_EQ(ev.at("cookies"), json::parse(R"(["s=1","t=2"])"));
  EXPECT_EQ(ev.at("pathParameters").at("id"), "7");
  const auto& rc = ev.at("requestContext");
  EXPECT_EQ(rc.at("stage"), "prod");
  EXPECT_EQ(rc.at("http").at("sourceIp"), "10.0.0.1");
  EXPECT_EQ(rc.at("http").at("userAgent"), "ua/1");
  EXPECT_EQ(rc.at("time"), "04/Mar/2020:19:03:58 +0000");
  EXPECT_EQ(rc.at("gatehouse").at("lineageDepth"), 2);
  EXPECT_EQ(rc.at("gatehouse").at("principal"), "api_key:k1");
  EXPECT_EQ(ev.at("body"), "{\"k\":1}");
  EXPECT_EQ(ev.at("isBase64Encoded"), false);
}

TEST(FunctionEvent, Version1HasMultiValueMaps) {
  Fixture f;
  const json::object ev = json::parse(build_event(PayloadFormat::kV1, f.req, f.ctx)).as_object();
  EXPECT_EQ(ev.at("version"), "1.0");
  EXPECT_EQ(ev.at("resource"), "/items/{id}");
  EXPECT_EQ(ev.at("httpMethod"), "POST");
  EXPECT_EQ(ev.at("headers").at("X-Multi"), "b");
  EXPECT_EQ(ev.at("multiValueHeaders").at("X-Multi"), json::parse(R"(["a","b"])"));
  EXPECT_EQ(ev.at("multiValueQueryStringParameters").at("q"), json::parse(R"(["a/b","c"])"));
  EXPECT_EQ(ev.at("requestContext").at("identity").at("sourceIp"), "10.0.0.1");
  EXPECT_TRUE(ev.at("stageVariables").is_null());
}

TEST(FunctionEvent, JwtClaimsReachTheAuthorizerContext) {
  Fixture f;
  const std::vector<std::pair<std::string, std::string>> claims{
      {"sub", "u-1"}, {"scope", "read"}, {"scope", "write"}, {"cognito:groups", "admins"}};
  EXPECT_FALSE(json::parse(build_event(PayloadFormat::kV2, f.req, f.ctx))
                   .at("requestContext")
                   .as_object()
                   .contains("authorizer"));
  f.ctx.jwt_claims = &claims;
  const json::object v2 = json::parse(build_event(PayloadFormat::kV2, f.req, f.ctx)).as_object();
  const auto& jwt = v2.at("requestContext").at("authorizer").at("jwt");
  EXPECT_EQ(jwt.at("claims").at("sub"), "u-1");
  EXPECT_EQ(jwt.at("claims").at("scope"), json::parse(R"(["read","write"])"));
  EXPECT_EQ(jwt.at("claims").at("cognito:groups"), "admins");
  EXPECT_EQ(jwt.at("scopes"), json::parse(R"(["read","write"])"));
  const json::object v1 = json::parse(build_event(PayloadFormat::kV1, f.req, f.ctx)).as_object();
  EXPECT_EQ(v1.at("requestContext").at("authorizer").at("claims").at("sub"), "u-1");
}

TEST(FunctionEvent, BinaryBodiesAreBase64) {
  Fixture f;
  const std::string body("\x00\xff\x01", 3);
  f.req.body = body;
  const json::object ev = json::parse(build_event(PayloadFormat::kV2, f.req, f.ctx)).as_object();
  EXPECT_EQ(ev.at("isBase64Encoded"), true);
  std::string decoded;
  ASSERT_TRUE(base64_decode(ev.at("body").as_string(), decoded));
  EXPECT_EQ(decoded, body);
}

TEST(FunctionResult, ProxyResponseIsDecoded) {
  const auto r = map_result(PayloadFormat::kV2, R"({"statusCode":201,
      "headers":{"Content-Type":"text/plain","X-A":"1","Content-Length":"99","N":5},
      "cookies":["a=1","b=2"],"body":"aGk=","isBase64Encoded":true})");
  ASSERT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.content_type, "text/plain");
  EXPECT_EQ(r.body, "hi");
  const std::vector<std::pair<std::string, std::string>> want{
      {"N", "5"}, {"X-A", "1"}, {"Set-Cookie", "a=1"}, {"Set-Cookie", "b=2"}};
  auto got = r.headers;
  std::sort(got.begin(), got.end() - 2);  // object order is not significant
  EXPECT_EQ(got, want);  // Content-Length dropped: the gateway frames the response
}

TEST(FunctionResult, PlainResultIsA200JsonBodyIn2_0Only) {
  const auto v2 = map_result(PayloadFormat::kV2, R"({"hello":"world"})");
  ASSERT_TRUE(v2.ok);
  EXPECT_EQ(v2.status, 200);
  EXPECT_EQ(v2.body, R"({"hello":"world"})");
  EXPECT_EQ(v2.content_type, "application/json");
  EXPECT_TRUE(map_result(PayloadFormat::kV2, "\"text\"").ok);
  EXPECT_FALSE(map_result(PayloadFormat::kV1, R"({"hello":"world"})").ok);
}

TEST(FunctionResult, MalformedResponsesAreRefused) {
  for (const char* bad : {R"({"statusCode":99})", R"({"statusCode":600})",
                          R"({"statusCode":"abc"})", R"({"statusCode":200,"body":5})",
                          R"({"statusCode":200,"headers":{"X":"a\nb"}})",
                          R"({"statusCode":200,"headers":{"Bad Name":"x"}})",
                          R"({"statusCode":200,"body":"!!","isBase64Encoded":true})", "not json"}) {
    EXPECT_FALSE(map_result(PayloadFormat::kV2, bad).ok) << bad;
  }
}

TEST(Base64, RoundTripsAndRejectsGarbage) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    std::string back;
    ASSERT_TRUE(base64_decode(base64_encode(s), back));
    EXPECT_EQ(back, s);
  }
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  std::string out;
  EXPECT_FALSE(base64_decode("Zm9", out));
  EXPECT_FALSE(base64_decode("Zm=v", out));
  EXPECT_FALSE(base64_decode("Z!9v", out));
}

}  // namespace
}  // namespace gatehouse::gateway
