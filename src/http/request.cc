
#include <ctime>

#include "core/core.h"
#include "http/http.h"

namespace gatehouse::http {

namespace {

// The Date header line, cached per thread: formatting a date per response would cost more than
// the rest of a refusal. Workers refresh it from their sweep timer (every 250 ms by default).
thread_local char t_date[64];
thread_local std::size_t t_date_len = 0;

using core::iequals;

}  // namespace

std::string_view Request::header(std::string_view name) const noexcept {
  for (const Header& h : headers) {
    if (iequals(h.name, name)) {
      return h.value;
    }
  }
  return {};
}

void refresh_date_header() noexcept {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  t_date_len = std::strftime(t_date, sizeof t_date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
}

std::string_view date_header() noexcept {
  if (t_date_len == 0) {
    refresh_date_header();
  }
  return {t_date, t_date_len};
}

std::string_view wire_refusal_name(WireRefusal r) noexcept {
  switch (r) {
    case WireRefusal::kHeaderTooLarge:
      return "header_too_large";
    case WireRefusal::kBodyTooLarge:
      return "body_too_large";
    case WireRefusal::kHeaderTimeout:
      return "header_timeout";
    case WireRefusal::kBodyTimeout:
      return "body_timeout";
    case WireRefusal::kBodyTooSlow:
      return "body_too_slow";
    case WireRefusal::kIdleTimeout:
      return "idle_timeout";
    case WireRefusal::kMaxConnections:
      return "max_connections";
    case WireRefusal::kMaxPerIp:
      return "max_connections_per_ip";
    case WireRefusal::kBadRequest:
      return "bad_request";
    case WireRefusal::kCount:
      break;
  }
  return "unknown";
}

void ResponseWriter::start(int status, std::string_view request_id, bool keep_alive) {
  char num[20];
  out_.append("HTTP/1.1 ");
  out_.append(num, core::format_uint(num, static_cast<std::uint64_t>(status)));
  out_.push_back(' ');
  out_.append(core::reason_phrase(status));
  out_.append("\r\n");
  out_.append(date_header());
  out_.append("x-request-id: ");
  out_.append(request_id);
  out_.append(keep_alive ? "\r\n" : "\r\nConnection: close\r\n");
}

void ResponseWriter::header(std::string_view name, std::string_view value) {
  out_.append(name);
  out_.append(": ");
  out_.append(value);
  out_.append("\r\n");
}

void ResponseWriter::header(std::string_view name, std::uint64_t value) {
  char num[20];
  header(name, std::string_view(num, core::format_uint(num, value)));
}

void ResponseWriter::body(std::string_view content_type, std::string_view body) {
  if (!content_type.empty()) {
    header("Content-Type", content_type);
  }
  header("Content-Length", static_cast<std::uint64_t>(body.size()));
  out_.append("\r\n");
  out_.append(body);
}

namespace {

// Error codes and request ids are plain tokens ([A-Za-z0-9._-]): appended as they are; anything
// else goes through the JSON escaper.
void append_token(std::string& out, std::string_view s) {
  for (char c : s) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '_' || c == '-';
    if (!plain) {
      core::json_escape(out, s);
      return;
    }
  }
  out.append(s);
}

}  // namespace

void write_error(std::string& out, int status, std::string_view code, std::string_view message,
                 std::string_view request_id, bool keep_alive, std::string_view extra_headers) {
  // The body is formatted in a per-thread scratch buffer that keeps its capacity, so refusals
  // do not allocate once warm.
  thread_local std::string body;
  body.clear();
  body.append("{\"error\":{\"code\":\"");
  append_token(body, code);
  body.append("\",\"message\":\"");
  core::json_escape(body, message);
  body.append("\",\"request_id\":\"");
  append_token(body, request_id);
  body.append("\"}}");
  ResponseWriter w(out);
  w.start(status, request_id, keep_alive);
  out.append(extra_headers);
  w.body("application/json", body);
}

}  // namespace gatehouse::http
