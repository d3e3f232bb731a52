#include "runtime/async_codec.h"

#include <algorithm>
#include <boost/json.hpp>

namespace gatehouse::runtime::detail {
namespace {

namespace json = boost::json;

json::object caller_json(const CallerContext& c) {
  json::object o;
  o["principal"] = c.principal;
  json::array tags;
  for (const auto& [k, v] : c.principal_tags) {
    tags.push_back(json::array{json::string(k), json::string(v)});
  }
  o["principal_tags"] = std::move(tags);
  o["source"] = static_cast<int>(c.source);
  o["source_name"] = c.source_name;
  o["detail"] = c.detail;
  o["request_id"] = c.request_id;
  o["depth"] = c.depth;
  return o;
}

// Reads a string member ("" when absent or not a string).
std::string str(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  return v != nullptr && v->is_string() ? std::string(v->get_string()) : std::string();
}

std::int64_t num(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  if (v == nullptr) {
    return 0;
  }
  if (v->is_int64()) {
    return v->get_int64();
  }
  return v->is_uint64() ? static_cast<std::int64_t>(v->get_uint64()) : 0;
}

std::uint32_t num32(const json::object& o, std::string_view key) {
  return static_cast<std::uint32_t>(std::clamp<std::int64_t>(num(o, key), 0, UINT32_MAX));
}

CallerContext caller_of(const json::object& o) {
  CallerContext c;
  c.principal = str(o, "principal");
  if (const auto* tags = o.if_contains("principal_tags"); tags != nullptr && tags->is_array()) {
    for (const json::value& t : tags->get_array()) {
      const json::array* kv = t.if_array();
      if (kv != nullptr && kv->size() == 2 && (*kv)[0].is_string() && (*kv)[1].is_string()) {
        c.principal_tags.emplace_back((*kv)[0].get_string(), (*kv)[1].get_string());
      }
    }
  }
  c.source = static_cast<SourceKind>(std::clamp<std::int64_t>(num(o, "source"), 0, 3));
  c.source_name = str(o, "source_name");
  c.detail = str(o, "detail");
  c.request_id = str(o, "request_id");
  c.depth = std::max<std::uint32_t>(1, num32(o, "depth"));
  return c;
}

// The object in `text`, or nullopt when it is not a JSON object.
std::optional<json::object> parse_object(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) {
    return std::nullopt;
  }
  return std::move(v.get_object());
}
}  // namespace

std::string encode_event(const Event& e) {
  json::object o;
  o["id"] = e.id;
  o["function"] = e.inv.function;
  o["payload"] = e.inv.payload;
  o["caller"] = caller_json(e.inv.caller);
  o["enqueued_ms"] = e.enqueued_ms;
  o["attempts"] = e.attempts;
  o["replays"] = e.replays;
  o["last_error_type"] = e.last_error_type;
  o["last_error_message"] = e.last_error_message;
  return json::serialize(o);
}

// Event ids are what new_event() makes (32 hex digits); anything else in a queue was not
// written by us, and would not even make a valid dead-letter key.
bool valid_event_id(std::string_view id) {
  return !id.empty() && id.size() <= 64 &&
         id.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

// The event of a message of the queue of `function`, or nullopt when the message is not one
// (not a JSON object, a bad id, or an event of another function).
std::optional<Event> decode_event(std::string_view text, std::string_view function) {
  auto o = parse_object(text);
  if (!o || !valid_event_id(str(*o, "id")) || str(*o, "function") != function) {
    return std::nullopt;
  }
  Event e;
  e.id = str(*o, "id");
  e.inv.function = str(*o, "function");
  e.inv.payload = str(*o, "payload");
  if (const auto* c = o->if_contains("caller"); c != nullptr && c->is_object()) {
    e.inv.caller = caller_of(c->get_object());
  }
  e.enqueued_ms = num(*o, "enqueued_ms");
  e.attempts = num32(*o, "attempts");
  e.replays = num32(*o, "replays");
  e.last_error_type = str(*o, "last_error_type");
  e.last_error_message = str(*o, "last_error_message");
  return e;
}

std::optional<DeadLetter> decode_dead_letter(std::string_view text) {
  auto o = parse_object(text);
  if (!o || str(*o, "event_id").empty()) {
    return std::nullopt;
  }
  DeadLetter d;
  d.event_id = str(*o, "event_id");
  d.function = str(*o, "function");
  d.payload = str(*o, "payload");
  if (const auto* c = o->if_contains("caller"); c != nullptr && c->is_object()) {
    d.caller = caller_of(c->get_object());
  }
  d.reason = str(*o, "reason");
  d.error_type = str(*o, "error_type");
  d.error_message = str(*o, "error_message");
  d.attempts = num32(*o, "attempts");
  d.replays = num32(*o, "replays");
  d.enqueued_at_ms = num(*o, "enqueued_at_ms");
  d.failed_at_ms = num(*o, "failed_at_ms");
  return d;
}

}  // namespace gatehouse::runtime::detail

namespace gatehouse::runtime {

std::string dead_letter_json(const DeadLetter& d) {
  namespace json = boost::json;
  json::object o;
  o["event_id"] = d.event_id;
  o["function"] = d.function;
  o["payload"] = d.payload;
  o["caller"] = detail::caller_json(d.caller);
  o["reason"] = d.reason;
  o["error_type"] = d.error_type;
  o["error_message"] = d.error_message;
  o["attempts"] = d.attempts;
  o["replays"] = d.replays;
  o["enqueued_at_ms"] = d.enqueued_at_ms;
  o["failed_at_ms"] = d.failed_at_ms;
  return json::serialize(o);
}

}  // namespace gatehouse::runtime
