// http/parser.hpp: parses one HTTP/1.1 request head out of a byte span (RFC 9112 sections 2-6).
// Results are views into the caller's bytes; nothing is copied or allocated.
// On NeedMore the caller appends bytes and calls again, passing how many it had before.
// Not here: sockets, bodies (chunked.hpp), routing (userd/router.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "userd/request.hpp"

namespace userd::http {

// 100 covers every browser and proxy seen in practice (they send under 30) with room for tracing headers;
// a request with more is answered 431 like an oversized head.
inline constexpr std::size_t kMaxHeaders = 100;

enum class HttpError : std::uint8_t {
  None,
  BadRequestLine,     // 400
  UriTooLong,         // 414
  BadVersion,         // 400: not "HTTP/" digit "." digit
  VersionNotSupported,// 505
  BadHeader,          // 400: bad name or value bytes, obs-fold, bare CR
  TooManyHeaders,     // 431
  HeadTooLarge,       // 431
  MissingHost,        // 400: HTTP/1.1 without Host
  DuplicateHost,      // 400
  BadContentLength,   // 400: not digits, or differing values
  LengthAndChunked,   // 400: Content-Length with Transfer-Encoding (smuggling)
  BadFraming,         // 400: Transfer-Encoding in HTTP/1.0, chunked twice or not last
  UnsupportedCoding,  // 501: Transfer-Encoding other than chunked
  BodyTooLarge,       // 413
  BadChunk,           // 400
};

enum class ParseStatus : std::uint8_t { Done, NeedMore, Bad };

struct ParseResult {
  ParseStatus status;
  HttpError error;
  std::uint32_t consumed;  // head bytes including the blank line, when Done
};

struct Limits {
  std::size_t max_head = 8 * 1024;
  std::size_t max_target = 8 * 1024;
};

struct RequestHead {
  std::string_view method;
  std::string_view target;
  std::string_view path;
  std::string_view query;
  std::uint8_t major = 1;  // 2: HTTP/2 (made by the HTTP/2 session, never parsed)
  std::uint8_t minor = 1;  // HTTP/1.minor
  std::uint16_t header_count = 0;
  std::array<Header, kMaxHeaders> headers;
  // Framing and connection semantics, read from the headers.
  std::uint64_t content_length = 0;
  bool has_content_length = false;
  bool chunked = false;
  bool keep_alive = true;
  bool expect_continue = false;
};

// Parses a request head from buf. prev_len is how many of these bytes a previous NeedMore call already saw (0 on
// the first call): the head is re-parsed only once its end has arrived, so trickled bytes cost O(n) overall.
// Leading empty lines are skipped (RFC 9112 2.2). Limits are enforced on incomplete input too.
ParseResult parse_request(std::span<const char> buf, std::size_t prev_len, RequestHead& out,
                          const Limits& limits = {}) noexcept;

// A response head (RFC 9112 4, 6.3): for the upstream client. Framing resolved: content_length, chunked, or
// until_close; 1xx, 204 and 304 carry no body.
struct ParsedResponse {
  int status = 0;
  std::uint8_t minor = 1;
  std::uint16_t header_count = 0;
  std::array<Header, kMaxHeaders> headers;
  std::uint64_t content_length = 0;
  bool has_content_length = false;
  bool chunked = false;
  bool until_close = false;
  bool keep_alive = true;
};
ParseResult parse_response(std::span<const char> buf, std::size_t prev_len, ParsedResponse& out,
                           const Limits& limits = {}) noexcept;

// The status line for an error: 400, 413, 414, 431, 501 or 505.
int status_for(HttpError e) noexcept;
// A short lower-case reason for the JSON error body ("missing host header").
std::string_view describe(HttpError e) noexcept;

bool iequals(std::string_view a, std::string_view b) noexcept;

// The byte classes the parser holds requests to, for what the server writes itself (responses, upstream
// requests): a token (RFC 9110 5.6.2), a field value (5.5: no control byte but HTAB), a request target (no
// control byte, no space).
bool is_token(std::string_view s) noexcept;
bool is_field_value(std::string_view s) noexcept;
bool is_target(std::string_view s) noexcept;

inline std::string_view trim_ows(std::string_view v) noexcept {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Calls f on each element of a comma-separated list (RFC 9110 5.6.1), trimmed, empty elements skipped.
template <class F>
void for_each_token(std::string_view v, F&& f) {
  while (!v.empty()) {
    std::size_t comma = v.find(',');
    std::string_view item = trim_ows(v.substr(0, comma));
    if (!item.empty()) f(item);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
}

}  // namespace userd::http
