#pragma once
// A counting global operator new for tests that prove a path allocates nothing once warm. Add
// alloc_counter.cc to the test binary's sources: it replaces operator new and delete for the
// whole binary (the count is per thread, so other threads do not disturb it).

#include <cstdint>

namespace gatehouse::testing {

// Starts counting this thread's heap allocations from zero. (Functions rather than extern
// thread_local variables: sanitizer builds trip over the latter's cross-unit TLS wrappers.)
void start_counting() noexcept;
// Stops counting; returns how many allocations this thread made since start_counting().
std::uint64_t stop_counting() noexcept;

}  // namespace gatehouse::testing
