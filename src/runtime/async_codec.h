#pragma once
// Private to the runtime: how an asynchronous event is stored. A queue message of
// "async:<function>" holds one Event as a JSON object, a record of the "dead_letters" table one
// DeadLetter (dead_letter_json). The decoders read bytes from the store, which another process
// (the CLI, an older or newer gatehouse, a damaged database) may have written: they never throw
// and return nullopt for anything that is not a well-formed record.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "runtime/runtime.h"

namespace gatehouse::runtime::detail {

// One accepted event, as the payload of its queue message.
struct Event {
  std::string id;
  Invocation inv;
  std::int64_t enqueued_ms = 0;
  std::uint32_t attempts = 0;  // attempts finished before this message was written
  std::uint32_t replays = 0;
  std::string last_error_type;
  std::string last_error_message;
};

// The JSON text of a queue message.
[[nodiscard]] std::string encode_event(const Event& e);

// Event ids are what the queue makes (32 lowercase hex digits; at most 64 accepted): anything
// else in a queue was not written by us, and would not make a valid dead-letter key.
[[nodiscard]] bool valid_event_id(std::string_view id);

// The event of a message of the queue of `function`, or nullopt when the message is not one: not
// a JSON object, a bad id, or an event of another function. Members of the wrong type read as
// their defaults; numbers are clamped (depth at least 1, source to a known kind).
[[nodiscard]] std::optional<Event> decode_event(std::string_view text, std::string_view function);

// A dead-letter record, or nullopt when it is not a JSON object with an event_id. Members as
// decode_event reads them.
[[nodiscard]] std::optional<DeadLetter> decode_dead_letter(std::string_view text);

}  // namespace gatehouse::runtime::detail
