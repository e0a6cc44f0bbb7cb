// tests/support/failing_new.cpp: the global operator new and delete of the unit test binary, on malloc and free,
// with a per-thread threshold above which new throws (see failing_new.hpp). Off, it is plain malloc.
#include "tests/support/failing_new.hpp"

#include <cstdlib>
#include <new>

namespace {
thread_local std::size_t fail_from = 0;  // 0: off
thread_local std::size_t failed = 0;

void* allocate(std::size_t n) {
  if (fail_from && n >= fail_from) {
    ++failed;
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
}  // namespace

namespace userd::testing {
FailAllocations::FailAllocations(std::size_t bytes) noexcept { fail_from = bytes; }
FailAllocations::~FailAllocations() { fail_from = 0; }
std::size_t FailAllocations::failures() noexcept { return failed; }
}  // namespace userd::testing

void* operator new(std::size_t n) { return allocate(n); }
void* operator new[](std::size_t n) { return allocate(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
