#include "alloc_counter.h"

#include <cstdlib>
#include <new>

namespace gatehouse::testing {

namespace {
thread_local bool t_counting = false;
thread_local std::uint64_t t_allocs = 0;
}  // namespace

void start_counting() noexcept {
  t_allocs = 0;
  t_counting = true;
}

std::uint64_t stop_counting() noexcept {
  t_counting = false;
  return t_allocs;
}

}  // namespace gatehouse::testing

namespace {

void* counted(std::size_t n) {
  if (gatehouse::testing::t_counting) {
    ++gatehouse::testing::t_allocs;
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) {
    return p;
  }
  throw std::bad_alloc();
}

}  // namespace

void* operator new(std::size_t n) { return counted(n); }
void* operator new[](std::size_t n) { return counted(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
