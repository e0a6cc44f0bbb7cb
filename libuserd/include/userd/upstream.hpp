// userd/upstream.hpp: asking another HTTP server from a handler, on the handler's own loop thread: no thread
// blocks, no extra threads. Each loop thread keeps its own keep-alive pool per upstream.
// Not here: how the pool works (libuserd/upstream/pool.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd {

struct UpstreamConfig {
  // A numeric address, or a name resolved once at start: every address it resolves to is used in turn, and one
  // that refused a connection is skipped for a few seconds.
  std::string host = "127.0.0.1";
  std::uint16_t port = 80;
  unsigned max_conns = 64;     // per loop thread; further requests queue until one is free
  unsigned max_queue = 1024;   // per loop thread: requests waiting for a connection; beyond it Overloaded at once
  unsigned timeout_ms = 2000;  // the whole exchange: connect, send, the complete response
  std::size_t max_body = 1 << 20;
  // HTTPS: the certificate is verified against ca_file (PEM), or the system's CA store when empty, and must name
  // host (sent as SNI too); sessions are resumed across the pool's connections. insecure skips verification.
  bool tls = false;
  std::string ca_file{};
  bool insecure = false;
};

// What to ask an upstream. The pool writes Host, and Content-Length when there is a body (or the method is one
// that usually has one); a Host, Content-Length, Transfer-Encoding or Connection among headers, a method that is
// not a token, a target that does not start with '/', or a control byte anywhere makes fetch() refuse at once.
struct UpstreamRequest {
  std::string_view method = "GET";
  std::string_view target = "/";  // path and query, as sent
  std::span<const Header> headers{};
  std::string_view body{};
};

enum class UpstreamError : std::uint8_t {
  None,
  Unreachable,  // refused, or no connection within the timeout
  Timeout,      // connected, but no complete response within the timeout
  Closed,       // the connection ended before the response was complete
  BadResponse,  // not HTTP/1.x, or malformed framing
  TooLarge,     // body over max_body
  Overloaded,   // too many requests already queued
};

std::string_view describe(UpstreamError e) noexcept;

struct UpstreamReply {
  UpstreamError error = UpstreamError::None;
  int status = 0;
  std::span<const Header> headers{};
  // De-chunked. Valid only during the callback; at least 64 readable bytes follow it (simdjson's padding), so
  // it can be parsed in place.
  std::string_view body{};
};

// Called on the loop thread when the exchange ends, once per fetch. A plain function and a pointer, so that a
// request in flight costs no allocation. `res` answers the client (it may have gone: res.send returns false).
using UpstreamDone = void (*)(void* user, Responder res, const UpstreamReply& reply);

// Padding the body is followed by (see UpstreamReply::body).
inline constexpr std::size_t kUpstreamBodyPadding = 64;

}  // namespace userd
