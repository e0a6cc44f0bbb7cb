// http/percent.hpp: percent-decoding (RFC 3986 2.1) of a path segment or a query component, strictly: a '%' not
// followed by two hex digits, or one that encodes NUL, is an error, never passed through.
// Not here: splitting the query (server/request.cpp), where decoded bytes go (the caller's).
#pragma once

#include <cstddef>
#include <string_view>

namespace userd::http {

inline int hex_digit(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Whether every escape in s is well formed and none encodes NUL.
inline bool valid_escapes(std::string_view s) noexcept {
  for (std::size_t i = s.find('%'); i != std::string_view::npos; i = s.find('%', i + 3)) {
    if (i + 2 >= s.size()) return false;
    const int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return false;
  }
  return true;
}

// Decodes s into out (room for s.size() bytes; out may be s itself); plus_is_space for query components.
// Returns the decoded length, or -1 for a malformed escape or an encoded NUL.
inline long percent_decode(std::string_view s, char* out, bool plus_is_space) noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return -1;
      const int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return -1;
      c = char(hi << 4 | lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      c = ' ';
    }
    out[n++] = c;
  }
  return long(n);
}

}  // namespace userd::http
