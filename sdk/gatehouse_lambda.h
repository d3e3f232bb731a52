#pragma once
// gatehouse_lambda.h — a small header-only kit for native functions speaking the AWS Lambda
// Runtime API (Gatehouse's `lambda` runtime, or AWS Lambda custom runtimes). POSIX sockets and
// the C++ standard library only; no Boost, no curl.
//
//   #include "gatehouse_lambda.h"
//   int main() {
//     return gatehouse::lambda::run([](const gatehouse::lambda::Invocation& inv) {
//       return gatehouse::lambda::Result::success("{\"echo\":" + inv.payload + "}");
//     });
//   }
//
// run() loops: GET /next (blocks until an event), calls the handler, POSTs its result to
// /response or its error to /error. It returns 1 only when the Runtime API is unreachable or
// AWS_LAMBDA_RUNTIME_API is missing. One connection per request ("Connection: close"): simple
// and robust, and a loopback connect costs microseconds. Not thread-safe; one loop per process.

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gatehouse::lambda {

// One event, as the Runtime API delivered it.
struct Invocation {
  std::string request_id;         // Lambda-Runtime-Aws-Request-Id
  std::string payload;            // the event JSON
  std::string function_arn;       // Lambda-Runtime-Invoked-Function-Arn
  std::string deadline_ms;        // Lambda-Runtime-Deadline-Ms (epoch milliseconds)
  std::string trace_id;           // Lambda-Runtime-Trace-Id
  std::string client_context;     // Lambda-Runtime-Client-Context (JSON, may be empty)
  std::string lineage_depth;      // Gatehouse-Lineage-Depth ("" outside Gatehouse); forward it as
                                  // x-gatehouse-lineage-depth when calling back into a gateway
  std::string principal;          // Gatehouse-Principal
  std::string source;             // Gatehouse-Source ("route:NAME", ...)
  std::string source_detail;      // Gatehouse-Source-Detail (a workflow step: "execution/state")
  std::string caller_request_id;  // Gatehouse-Request-Id: the request that caused this call
};

// What a handler returns: a JSON payload, or an error {errorType, errorMessage}.
struct Result {
  bool ok = true;
  std::string payload;
  std::string error_type;
  std::string error_message;
  static Result success(std::string json) { return Result{true, std::move(json), {}, {}}; }
  static Result failure(std::string type, std::string message) {
    return Result{false, {}, std::move(type), std::move(message)};
  }
};

namespace detail {

struct Response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  [[nodiscard]] std::string header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (k == name) {
        return v;
      }
    }
    return {};
  }
};

inline std::string json_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[(c >> 4) & 0xf];
          out += kHex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
  return out;
}

inline int connect_api(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) {
    return -1;
  }
  const std::string host = host_port.substr(0, colon);
  const std::string port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  return fd;
}

inline bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) {
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// One request on a fresh connection; the response is read until the server closes.
inline bool request(const std::string& api, std::string_view method, const std::string& path,
                    std::string_view body, Response& out,
                    const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  const int fd = connect_api(api);
  if (fd < 0) {
    return false;
  }
  std::string req = std::string(method) + " " + path + " HTTP/1.1\r\nHost: " + api +
                    "\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n";
  for (const auto& [k, v] : extra) {
    req += k + ": " + v + "\r\n";
  }
  req += "\r\n";
  req += body;
  bool ok = send_all(fd, req);
  std::string raw;
  char buf[65536];
  while (ok) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      ok = false;
    } else if (n == 0) {
      break;
    } else {
      raw.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  const auto end = raw.find("\r\n\r\n");
  if (!ok || end == std::string::npos || raw.compare(0, 9, "HTTP/1.1 ") != 0) {
    return false;
  }
  out = Response{};
  out.status = std::atoi(raw.c_str() + 9);
  std::size_t pos = raw.find("\r\n") + 2;
  while (pos < end) {
    const auto eol = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, eol - pos);
    const auto colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (char& c : name) {
        c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      }
      std::size_t v = colon + 1;
      while (v < line.size() && line[v] == ' ') {
        ++v;
      }
      out.headers.emplace_back(std::move(name), line.substr(v));
    }
    pos = eol + 2;
  }
  out.body = raw.substr(end + 4);
  const std::string length = out.header("content-length");
  if (!length.empty()) {
    out.body.resize(
        std::min<std::size_t>(out.body.size(), std::strtoull(length.c_str(), nullptr, 10)));
  }
  return true;
}

inline std::string error_json(std::string_view type, std::string_view message) {
  return "{\"errorType\":\"" + json_escape(type) + "\",\"errorMessage\":\"" + json_escape(message) +
         "\",\"stackTrace\":[]}";
}

inline const char* api_endpoint() { return std::getenv("AWS_LAMBDA_RUNTIME_API"); }

}  // namespace detail

constexpr std::string_view kApiVersion = "/2018-06-01/runtime";

// Reports a failed initialisation (before run()); the process should exit afterwards.
inline bool init_error(std::string_view type, std::string_view message) {
  const char* api = detail::api_endpoint();
  detail::Response r;
  return api != nullptr &&
         detail::request(api, "POST", std::string(kApiVersion) + "/init/error",
                         detail::error_json(type, message), r,
                         {{"Lambda-Runtime-Function-Error-Type", std::string(type)}}) &&
         r.status == 202;
}

// The event loop. Returns only on a Runtime API failure (1).
inline int run(const std::function<Result(const Invocation&)>& handler) {
  const char* api_env = detail::api_endpoint();
  if (api_env == nullptr) {
    return 1;
  }
  const std::string api = api_env;
  const std::string base(kApiVersion);
  for (;;) {
    detail::Response next;
    if (!detail::request(api, "GET", base + "/invocation/next", {}, next) || next.status != 200) {
      return 1;
    }
    Invocation inv;
    inv.request_id = next.header("lambda-runtime-aws-request-id");
    inv.payload = std::move(next.body);
    inv.function_arn = next.header("lambda-runtime-invoked-function-arn");
    inv.deadline_ms = next.header("lambda-runtime-deadline-ms");
    inv.trace_id = next.header("lambda-runtime-trace-id");
    inv.client_context = next.header("lambda-runtime-client-context");
    inv.lineage_depth = next.header("gatehouse-lineage-depth");
    inv.principal = next.header("gatehouse-principal");
    inv.source = next.header("gatehouse-source");
    inv.source_detail = next.header("gatehouse-source-detail");
    inv.caller_request_id = next.header("gatehouse-request-id");
    Result result;
    try {
      result = handler(inv);
    } catch (const std::exception& e) {
      result = Result::failure("Unhandled", e.what());
    }
    detail::Response posted;
    const std::string path = base + "/invocation/" + inv.request_id;
    const bool sent =
        result.ok
            ? detail::request(api, "POST", path + "/response", result.payload, posted)
            : detail::request(api, "POST", path + "/error",
                              detail::error_json(result.error_type, result.error_message), posted,
                              {{"Lambda-Runtime-Function-Error-Type", result.error_type}});
    if (!sent) {
      return 1;
    }
  }
}

}  // namespace gatehouse::lambda
