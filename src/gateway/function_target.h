#pragma once
// Private to the gateway: the `function` target's translation between HTTP and the API Gateway
// HTTP API proxy integration (payload format 2.0, or 1.0 when the route asks for it). Pure
// functions of their inputs; thread-safe.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "http/http.h"

namespace gatehouse::gateway {

// What the event says about the request beyond the HTTP message itself.
struct EventContext {
  std::string_view route_key;   // "GET /items/{id}" (method list and path template)
  std::string_view resource;    // the route's path template (1.0 "resource")
  std::string_view stage;       // "" → "$default"
  std::string_view request_id;  // the gateway's request id
  std::string_view source_ip;
  std::string_view principal;  // "anonymous" or the caller's id
  std::uint32_t lineage_depth = 1;
  std::int64_t time_epoch_ms = 0;
  const http::Match* match = nullptr;  // path parameters
  // A JWT-authorized request's claims (RequestContext::claims), or null: the event's
  // requestContext.authorizer (2.0: {"jwt":{"claims":{..},"scopes":[..]}}, 1.0: {"claims":{..}}),
  // as API Gateway's JWT and Cognito authorizers pass them. A claim with several values becomes
  // an array of strings.
  const std::vector<std::pair<std::string, std::string>>* jwt_claims = nullptr;
};

// The proxy event for `req`. The body is passed as text when it is valid UTF-8 without NUL
// bytes, else base64 with isBase64Encoded true.
[[nodiscard]] std::string build_event(config::PayloadFormat format, const http::Request& req,
                                      const EventContext& ctx);

// An HTTP response decoded from a function's result.
struct FunctionHttpResponse {
  bool ok = false;  // false: the result was not a valid proxy response (answer 502)
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;  // safe to emit: validated names,
                                                             // no CR/LF, no framing headers
  std::string body;
  std::string content_type = "application/json";
  std::string problem;  // !ok: why
};

// Maps a function's result as API Gateway does: an object with `statusCode` is a proxy response
// (statusCode 100..599, headers, multiValueHeaders (1.0), cookies (2.0), body, isBase64Encoded);
// with format 2.0 anything else that is valid JSON becomes a 200 application/json body with the
// result as is; with 1.0 it is an error.
[[nodiscard]] FunctionHttpResponse map_result(config::PayloadFormat format,
                                              std::string_view result);

// Base64 (RFC 4648, with padding). decode returns false on malformed input.
[[nodiscard]] std::string base64_encode(std::string_view in);
[[nodiscard]] bool base64_decode(std::string_view in, std::string& out);

}  // namespace gatehouse::gateway
