// tests/support/failing_new.hpp: makes operator new fail on demand, in the unit test binary only, so that the
// code that handles a failed allocation runs (failing_new.cpp replaces the global operator new).
#pragma once

#include <cstddef>

namespace userd::testing {

// While alive on this thread, allocations of at least `bytes` throw std::bad_alloc.
class FailAllocations {
 public:
  explicit FailAllocations(std::size_t bytes) noexcept;
  ~FailAllocations();
  FailAllocations(const FailAllocations&) = delete;
  FailAllocations& operator=(const FailAllocations&) = delete;
  static std::size_t failures() noexcept;  // allocations refused on this thread so far
};

}  // namespace userd::testing
