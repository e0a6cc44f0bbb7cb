// http/date.cpp: IMF-fixdate rendering ("Sun, 06 Nov 1994 08:49:37 GMT").
#include "libuserd/http/date.hpp"

namespace userd::http {

void DateCache::update(std::time_t now) noexcept {
  if (now == shown_) return;
  shown_ = now;
  static constexpr char kDays[] = "SunMonTueWedThuFriSat";
  static constexpr char kMonths[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  std::tm tm;
  gmtime_r(&now, &tm);
  auto two = [](char* p, int v) {
    p[0] = char('0' + v / 10);
    p[1] = char('0' + v % 10);
  };
  char* p = buf_;
  p[0] = kDays[tm.tm_wday * 3], p[1] = kDays[tm.tm_wday * 3 + 1], p[2] = kDays[tm.tm_wday * 3 + 2];
  p[3] = ',', p[4] = ' ';
  two(p + 5, tm.tm_mday);
  p[7] = ' ';
  p[8] = kMonths[tm.tm_mon * 3], p[9] = kMonths[tm.tm_mon * 3 + 1], p[10] = kMonths[tm.tm_mon * 3 + 2];
  p[11] = ' ';
  int year = tm.tm_year + 1900;
  two(p + 12, year / 100 % 100);
  two(p + 14, year % 100);
  p[16] = ' ';
  two(p + 17, tm.tm_hour);
  p[19] = ':';
  two(p + 20, tm.tm_min);
  p[22] = ':';
  two(p + 23, tm.tm_sec);
  p[25] = ' ', p[26] = 'G', p[27] = 'M', p[28] = 'T';
}

}  // namespace userd::http
