// libFuzzer target for the stored form of asynchronous events (src/runtime/async_codec.h): any
// bytes, read as a queue message of function "job" and as a dead-letter record, must decode or be
// refused without a crash, a hang or an exception; whatever decodes must survive a round trip
// (encode, decode again: the same fields). Seeds: tests/fuzz/corpus/async_record/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "runtime/async_codec.h"

namespace {

namespace rt = gatehouse::runtime;

bool same_caller(const rt::CallerContext& a, const rt::CallerContext& b) {
  return a.principal == b.principal && a.principal_tags == b.principal_tags &&
         a.source == b.source && a.source_name == b.source_name && a.detail == b.detail &&
         a.request_id == b.request_id && a.depth == b.depth;
}

void check(bool ok) {
  if (!ok) {
    std::abort();  // a round trip changed a record: a finding
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto e = rt::detail::decode_event(text, "job")) {
    check(rt::detail::valid_event_id(e->id) && e->inv.function == "job" && e->inv.caller.depth >= 1);
    auto again = rt::detail::decode_event(rt::detail::encode_event(*e), "job");
    check(again.has_value() && again->id == e->id && again->inv.payload == e->inv.payload &&
          same_caller(again->inv.caller, e->inv.caller) && again->enqueued_ms == e->enqueued_ms &&
          again->attempts == e->attempts && again->replays == e->replays &&
          again->last_error_type == e->last_error_type &&
          again->last_error_message == e->last_error_message);
  }
  if (auto d = rt::detail::decode_dead_letter(text)) {
    auto again = rt::detail::decode_dead_letter(rt::dead_letter_json(*d));
    check(again.has_value() && again->event_id == d->event_id && again->function == d->function &&
          again->payload == d->payload && same_caller(again->caller, d->caller) &&
          again->reason == d->reason && again->error_type == d->error_type &&
          again->error_message == d->error_message && again->attempts == d->attempts &&
          again->replays == d->replays && again->enqueued_at_ms == d->enqueued_at_ms &&
          again->failed_at_ms == d->failed_at_ms);
  }
  return 0;
}
