// http/date.hpp: the Date header value (RFC 9110 5.6.7 IMF-fixdate), rendered at most once a second per thread.
// Not here: reading the clock (the loop passes the time it already has).
#pragma once

#include <ctime>
#include <string_view>

namespace userd::http {

class DateCache {
 public:
  // Renders only when the second changed; day and month names are fixed English, never the locale's.
  void update(std::time_t now) noexcept;
  std::string_view value() const noexcept { return {buf_, 29}; }

 private:
  std::time_t shown_ = -1;
  char buf_[32] = {};
};

}  // namespace userd::http
