#pragma once
// A counting global operator new for tests that prove a path allocates nothing once warm. Add
// alloc_counter.cc to the test binary's sources: it replaces operator new and delete for the
// whole binary (the count is per thread, so other threads do not disturb it).

#include <cstdint>

namespace gatehouse::testing {

// While t_counting is true, every allocation made by this thread increments t_allocs.
extern thread_local bool t_counting;
extern thread_local std::uint64_t t_allocs;

}  // namespace gatehouse::testing
