#include "gateway/function_target.h"

#include <strings.h>

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <ctime>

namespace gatehouse::gateway {
namespace {

namespace json = boost::json;

constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

bool valid_utf8_text(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == 0) {
      return false;
    }
    std::size_t len = c < 0x80           ? 1
                      : (c >> 5) == 0x6  ? 2
                      : (c >> 4) == 0xe  ? 3
                      : (c >> 3) == 0x1e ? 4
                                         : 0;
    if (len == 0 || i + len > s.size()) {
      return false;
    }
    for (std::size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) {
        return false;
      }
    }
    i += len;
  }
  return true;
}

using core::hex_value;

// application/x-www-form-urlencoded decoding, as API Gateway applies to query parameters.
std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() + 0 && hex_value(s[i + 1]) >= 0 &&
               hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  });
  return out;
}

// "12/Mar/2020:19:03:58 +0000", the requestContext.time format.
std::string clf_time(std::int64_t epoch_ms) {
  const std::time_t t = static_cast<std::time_t>(epoch_ms / 1000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  std::array<char, 40> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%d/%b/%Y:%H:%M:%S +0000", &tm);
  return std::string(buf.data(), n);
}

struct Query {
  std::vector<std::pair<std::string, std::string>> items;  // decoded, in order
};

Query parse_query(std::string_view q) {
  Query out;
  while (!q.empty()) {
    const auto amp = q.find('&');
    const std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (part.empty()) {
      continue;
    }
    const auto eq = part.find('=');
    out.items.emplace_back(
        percent_decode(part.substr(0, eq)),
        eq == std::string_view::npos ? std::string() : percent_decode(part.substr(eq + 1)));
  }
  return out;
}

json::value path_parameters(const http::Match* m) {
  if (m == nullptr || m->param_count == 0) {
    return nullptr;
  }
  json::object o;
  for (std::size_t i = 0; i < m->param_count; ++i) {
    o[m->params[i].name] = m->params[i].value;
  }
  return o;
}

void put_body(json::object& ev, std::string_view body) {
  if (body.empty()) {
    if (ev.contains("version") && ev["version"] == "1.0") {
      ev["body"] = nullptr;
    }
    ev["isBase64Encoded"] = false;
    return;
  }
  if (valid_utf8_text(body)) {
    ev["body"] = body;
    ev["isBase64Encoded"] = false;
  } else {
    ev["body"] = base64_encode(body);
    ev["isBase64Encoded"] = true;
  }
}

// The claims of a JWT-authorized request, one key per claim name (several values: an array).
json::object claims_object(const std::vector<std::pair<std::string, std::string>>& claims) {
  json::object o;
  for (const auto& [k, v] : claims) {
    json::value* existing = o.if_contains(k);
    if (existing == nullptr) {
      o[k] = v;
    } else if (existing->is_array()) {
      existing->as_array().emplace_back(v);
    } else {
      json::array both;
      both.emplace_back(existing->as_string());
      both.emplace_back(v);
      *existing = std::move(both);
    }
  }
  return o;
}

json::object gatehouse_context(const EventContext& ctx) {
  json::object g;
  g["principal"] = ctx.principal;
  g["lineageDepth"] = ctx.lineage_depth;
  return g;
}

std::string event_v2(const http::Request& req, const EventContext& ctx) {
  json::object ev;
  ev["version"] = "2.0";
  ev["routeKey"] = ctx.route_key;
  ev["rawPath"] = req.path;
  ev["rawQueryString"] = req.query;
  json::array cookies;
  json::object headers;
  std::string_view host;
  std::string_view user_agent;
  for (const auto& h : req.headers) {
    const std::string name = lower(h.name);
    if (name == "cookie") {
      std::string_view v = h.value;
      while (!v.empty()) {
        const auto semi = v.find(';');
        std::string_view c = v.substr(0, semi);
        while (!c.empty() && c.front() == ' ') {
          c.remove_prefix(1);
        }
        if (!c.empty()) {
          cookies.emplace_back(c);
        }
        v = semi == std::string_view::npos ? std::string_view() : v.substr(semi + 1);
      }
      continue;
    }
    if (name == "host") {
      host = h.value;
    } else if (name == "user-agent") {
      user_agent = h.value;
    }
    auto* existing = headers.if_contains(name);
    if (existing != nullptr) {
      std::string joined(existing->as_string());
      joined += ',';
      joined += h.value;
      *existing = joined;
    } else {
      headers[name] = h.value;
    }
  }
  if (!cookies.empty()) {
    ev["cookies"] = std::move(cookies);
  }
  ev["headers"] = std::move(headers);
  const Query q = parse_query(req.query);
  if (!q.items.empty()) {
    json::object qs;
    for (const auto& [k, v] : q.items) {
      auto* existing = qs.if_contains(k);
      if (existing != nullptr) {
        std::string joined(existing->as_string());
        joined += ',';
        joined += v;
        *existing = joined;
      } else {
        qs[k] = v;
      }
    }
    ev["queryStringParameters"] = std::move(qs);
  }
  json::object rc;
  rc["accountId"] = "000000000000";
  rc["apiId"] = "gatehouse";
  rc["domainName"] = host;
  const auto dot = host.find('.');
  rc["domainPrefix"] = host.substr(0, dot);
  json::object http;
  http["method"] = req.method;
  http["path"] = req.path;
  http["protocol"] = req.version == 10 ? "HTTP/1.0" : "HTTP/1.1";
  http["sourceIp"] = ctx.source_ip;
  http["userAgent"] = user_agent;
  rc["http"] = std::move(http);
  rc["requestId"] = ctx.request_id;
  rc["routeKey"] = ctx.route_key;
  rc["stage"] = ctx.stage.empty() ? std::string_view("$default") : ctx.stage;
  rc["time"] = clf_time(ctx.time_epoch_ms);
  rc["timeEpoch"] = ctx.time_epoch_ms;
  if (ctx.jwt_claims != nullptr) {
    json::array scopes;
    for (const auto& [k, v] : *ctx.jwt_claims) {
      if (k == "scope") {
        scopes.emplace_back(v);
      }
    }
    json::object jwt;
    jwt["claims"] = claims_object(*ctx.jwt_claims);
    jwt["scopes"] = scopes.empty() ? json::value(nullptr) : json::value(std::move(scopes));
    rc["authorizer"] = json::object{{"jwt", std::move(jwt)}};
  }
  rc["gatehouse"] = gatehouse_context(ctx);
  ev["requestContext"] = std::move(rc);
  if (auto pp = path_parameters(ctx.match); !pp.is_null()) {
    ev["pathParameters"] = std::move(pp);
  }
  put_body(ev, req.body);
  return json::serialize(ev);
}

std::string event_v1(const http::Request& req, const EventContext& ctx) {
  json::object ev;
  ev["version"] = "1.0";
  ev["resource"] = ctx.resource;
  ev["path"] = req.path;
  ev["httpMethod"] = req.method;
  json::object headers;
  json::object multi;
  std::string_view user_agent;
  for (const auto& h : req.headers) {
    const std::string name(h.name);
    if (lower(name) == "user-agent") {
      user_agent = h.value;
    }
    headers[name] = h.value;  // the last value, as API Gateway does
    auto& list = multi[name];
    if (!list.is_array()) {
      list = json::array();
    }
    list.as_array().emplace_back(h.value);
  }
  ev["headers"] = std::move(headers);
  ev["multiValueHeaders"] = std::move(multi);
  const Query q = parse_query(req.query);
  if (q.items.empty()) {
    ev["queryStringParameters"] = nullptr;
    ev["multiValueQueryStringParameters"] = nullptr;
  } else {
    json::object qs;
    json::object mqs;
    for (const auto& [k, v] : q.items) {
      qs[k] = v;
      auto& list = mqs[k];
      if (!list.is_array()) {
        list = json::array();
      }
      list.as_array().emplace_back(v);
    }
    ev["queryStringParameters"] = std::move(qs);
    ev["multiValueQueryStringParameters"] = std::move(mqs);
  }
  json::object rc;
  rc["accountId"] = "000000000000";
  rc["apiId"] = "gatehouse";
  rc["httpMethod"] = req.method;
  rc["path"] = req.path;
  rc["protocol"] = req.version == 10 ? "HTTP/1.0" : "HTTP/1.1";
  rc["requestId"] = ctx.request_id;
  rc["requestTime"] = clf_time(ctx.time_epoch_ms);
  rc["requestTimeEpoch"] = ctx.time_epoch_ms;
  rc["resourcePath"] = ctx.resource;
  rc["stage"] = ctx.stage.empty() ? std::string_view("$default") : ctx.stage;
  json::object identity;
  identity["sourceIp"] = ctx.source_ip;
  identity["userAgent"] = user_agent;
  rc["identity"] = std::move(identity);
  if (ctx.jwt_claims != nullptr) {
    rc["authorizer"] = json::object{{"claims", claims_object(*ctx.jwt_claims)}};
  }
  rc["gatehouse"] = gatehouse_context(ctx);
  ev["requestContext"] = std::move(rc);
  ev["pathParameters"] = path_parameters(ctx.match);
  ev["stageVariables"] = nullptr;
  put_body(ev, req.body);
  return json::serialize(ev);
}

// Headers a function may not set: the gateway frames the response itself.
bool reserved_response_header(std::string_view name) {
  static constexpr std::string_view kReserved[] = {
      "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
      "trailer",        "x-request-id",      "date"};
  return std::any_of(std::begin(kReserved), std::end(kReserved), [&](std::string_view r) {
    return name.size() == r.size() && ::strncasecmp(name.data(), r.data(), r.size()) == 0;
  });
}

bool header_name_ok(std::string_view s) {
  constexpr std::string_view kTchar = "!#$%&'*+-.^_`|~";
  return !s.empty() && s.size() <= 256 && std::all_of(s.begin(), s.end(), [&](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           kTchar.find(c) != std::string_view::npos;
  });
}

bool header_value_ok(std::string_view s) {
  return s.size() <= 8192 && std::none_of(s.begin(), s.end(), [](char c) {
           const auto u = static_cast<unsigned char>(c);
           return (u < 0x20 && c != '\t') || u == 0x7f;
         });
}

// Text of a JSON scalar as API Gateway renders header values ("5", "true", "x").
bool scalar_text(const json::value& v, std::string& out) {
  if (v.is_string()) {
    out = std::string(v.get_string());
    return true;
  }
  if (v.is_int64() || v.is_uint64() || v.is_double() || v.is_bool()) {
    out = json::serialize(v);
    return true;
  }
  return false;
}

FunctionHttpResponse bad(std::string why) {
  FunctionHttpResponse r;
  r.ok = false;
  r.problem = std::move(why);
  return r;
}

bool add_header(FunctionHttpResponse& r, std::string_view name, const json::value& v) {
  std::string text;
  if (!header_name_ok(name) || !scalar_text(v, text) || !header_value_ok(text)) {
    return false;
  }
  if (reserved_response_header(name)) {
    return true;  // dropped
  }
  if (name.size() == 12 && ::strncasecmp(name.data(), "content-type", 12) == 0) {
    r.content_type = std::move(text);
    return true;
  }
  r.headers.emplace_back(std::string(name), std::move(text));
  return true;
}

}  // namespace

std::string build_event(config::PayloadFormat format, const http::Request& req,
                        const EventContext& ctx) {
  return format == config::PayloadFormat::kV1 ? event_v1(req, ctx) : event_v2(req, ctx);
}

FunctionHttpResponse map_result(config::PayloadFormat format, std::string_view result) {
  boost::system::error_code ec;
  json::value v = json::parse(result, ec);
  if (ec) {
    return bad("the function's result is not JSON");
  }
  const bool v2 = format == config::PayloadFormat::kV2;
  const json::object* o = v.if_object();
  if (o == nullptr || !o->contains("statusCode")) {
    if (!v2) {
      return bad("the function's result has no statusCode (payload format 1.0 needs one)");
    }
    FunctionHttpResponse r;
    r.ok = true;
    r.body = std::string(result);
    return r;
  }
  FunctionHttpResponse r;
  const json::value& sc = o->at("statusCode");
  std::int64_t status = 0;
  if (sc.is_int64()) {
    status = sc.get_int64();
  } else if (sc.is_uint64()) {
    status = static_cast<std::int64_t>(std::min<std::uint64_t>(sc.get_uint64(), 1000));
  } else if (sc.is_string()) {
    const auto s = sc.get_string();
    status = s.size() == 3 &&
                     std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })
                 ? std::stoi(std::string(s))
                 : 0;
  }
  if (status < 100 || status > 599) {
    return bad("statusCode must be an integer from 100 to 599");
  }
  r.status = static_cast<int>(status);
  r.content_type = v2 ? "application/json" : "application/json";
  if (const auto* h = o->if_contains("headers"); h != nullptr && !h->is_null()) {
    if (!h->is_object()) {
      return bad("headers must be an object");
    }
    for (const auto& [k, val] : h->get_object()) {
      if (!add_header(r, k, val)) {
        return bad("invalid response header '" + std::string(k).substr(0, 64) + "'");
      }
    }
  }
  if (const auto* mh = o->if_contains("multiValueHeaders"); mh != nullptr && !mh->is_null()) {
    if (!mh->is_object()) {
      return bad("multiValueHeaders must be an object");
    }
    for (const auto& [k, list] : mh->get_object()) {
      if (!list.is_array()) {
        return bad("multiValueHeaders values must be arrays");
      }
      for (const auto& val : list.get_array()) {
        if (!add_header(r, k, val)) {
          return bad("invalid response header '" + std::string(k).substr(0, 64) + "'");
        }
      }
    }
  }
  if (const auto* c = o->if_contains("cookies"); v2 && c != nullptr && !c->is_null()) {
    if (!c->is_array()) {
      return bad("cookies must be an array");
    }
    for (const auto& cookie : c->get_array()) {
      if (!cookie.is_string() || !header_value_ok(cookie.get_string())) {
        return bad("cookies must be strings without control characters");
      }
      r.headers.emplace_back("Set-Cookie", std::string(cookie.get_string()));
    }
  }
  bool b64 = false;
  if (const auto* ib = o->if_contains("isBase64Encoded"); ib != nullptr && !ib->is_null()) {
    if (!ib->is_bool()) {
      return bad("isBase64Encoded must be a boolean");
    }
    b64 = ib->get_bool();
  }
  if (const auto* b = o->if_contains("body"); b != nullptr && !b->is_null()) {
    if (!b->is_string()) {
      return bad("body must be a string");
    }
    if (b64) {
      if (!base64_decode(b->get_string(), r.body)) {
        return bad("body is not valid base64");
      }
    } else {
      r.body = std::string(b->get_string());
    }
  }
  r.ok = true;
  return r;
}

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const auto n = (std::uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                   (std::uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                   std::uint32_t{static_cast<unsigned char>(in[i + 2])};
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i < in.size()) {
    std::uint32_t n = std::uint32_t{static_cast<unsigned char>(in[i])} << 16;
    if (i + 1 < in.size()) {
      n |= std::uint32_t{static_cast<unsigned char>(in[i + 1])} << 8;
    }
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  if (in.size() % 4 != 0) {
    return false;
  }
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    std::uint32_t n = 0;
    int pad = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const char c = in[i + k];
      std::uint32_t v = 0;
      if (c == '=') {
        if (i + 4 != in.size() || k < 2) {
          return false;
        }
        ++pad;
      } else {
        if (pad > 0) {
          return false;
        }
        const auto pos = kAlphabet.find(c);
        if (pos == std::string_view::npos) {
          return false;
        }
        v = static_cast<std::uint32_t>(pos);
      }
      n = (n << 6) | v;
    }
    out += static_cast<char>((n >> 16) & 0xff);
    if (pad < 2) {
      out += static_cast<char>((n >> 8) & 0xff);
    }
    if (pad < 1) {
      out += static_cast<char>(n & 0xff);
    }
  }
  return true;
}

}  // namespace gatehouse::gateway
