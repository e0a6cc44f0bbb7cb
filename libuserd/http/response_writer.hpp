// http/response_writer.hpp: status line and headers of an HTTP/1.1 response into a byte buffer.
// Date and Content-Length are always written (but for 1xx/204/304, which carry no body); the connection header
// says close, or keep-alive for an HTTP/1.0 client that asked for it. Those headers are the server's: extra
// headers of the same names are never written (check_headers says what a handler's ones mean).
// Not here: sending, or deciding whether to close (server/connection.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "libuserd/core/byte_buffer.hpp"
#include "userd/request.hpp"

namespace userd::http {

enum class ConnectionHeader : std::uint8_t { None, Close, KeepAlive };
// How the body is delimited: Content-Length, the chunked coding (a stream to an HTTP/1.1 client), or the close
// of the connection (a stream to an HTTP/1.0 client).
enum class BodyFraming : std::uint8_t { Length, Chunked, Close };

struct ResponseHead {
  int status = 200;
  std::string_view content_type;  // omitted when empty
  std::uint64_t content_length = 0;
  std::span<const Header> headers;
  std::string_view date;
  ConnectionHeader connection = ConnectionHeader::None;
  BodyFraming framing = BodyFraming::Length;
  // Compression (server/compression.hpp): the body's Content-Encoding (none when empty; a strong ETag among
  // headers is then written weak, since it named the uncompressed bytes), and whether to say Vary: Accept-Encoding.
  std::string_view content_encoding{};
  bool vary_accept_encoding = false;
};

std::string_view reason_phrase(int status) noexcept;
// A strong ETag: made weak ("W/" before it) on a compressed body.
bool weakened_etag(const Header& h) noexcept;

// What a handler's headers and content type ask for, and whether they can be sent at all. Refused (ok false,
// why set): a name that is not a token, CR, LF, NUL or another control byte in a name, value or content type
// (they would split the response), Transfer-Encoding (the server frames bodies with Content-Length), and a
// Content-Length other than the body's. Honoured: a Content-Length equal to the body's (the server writes its
// own), "Connection: close" (the connection closes after this response), a Content-Type header (it replaces
// content_type). Dropped: other Connection values and Date (the server's own are written).
struct HeaderCheck {
  bool ok = true;
  bool close = false;
  bool has_content_type = false;
  std::string_view content_type;  // the Content-Type header's value, when has_content_type
  // What rules compression out: the handler coded the body itself, or forbids transforming it (RFC 9111 5.2.2.6).
  bool has_content_encoding = false;
  bool no_transform = false;
  std::string_view why;
};
// body_length: none for a stream, where any Content-Length is refused.
HeaderCheck check_headers(std::span<const Header> headers, std::string_view content_type,
                          std::optional<std::uint64_t> body_length) noexcept;
// Whether fields may follow a streamed body as trailers: tokens and field values, at most kMaxTrailerFields and
// kMaxTrailerBytes, and none RFC 9110 6.5.1 forbids there (framing, routing, authentication, the response's
// controls and content type) nor one HTTP/2 forbids anywhere (connection-specific, 8.2.2).
inline constexpr std::size_t kMaxTrailerFields = 32, kMaxTrailerBytes = 8192;
bool trailers_ok(std::span<const Header> trailers) noexcept;
// Whether a response with this status may carry a body (RFC 9110 6.4.1).
constexpr bool status_has_body(int status) noexcept { return status >= 200 && status != 204 && status != 304; }
void write_response_head(core::ByteBuffer& out, const ResponseHead& r);
// A complete error response with the body {"error":"<message>"}; message must need no JSON escaping.
// Returns the body's length as sent (0 for HEAD).
std::size_t write_error_response(core::ByteBuffer& out, int status, std::string_view message, std::string_view date,
                          ConnectionHeader connection, bool head_only, std::span<const Header> extra = {});

}  // namespace userd::http
