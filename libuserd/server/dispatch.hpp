// server/dispatch.hpp: what every session does with a request once it has read one: route it, decode its
// parameters, run middleware and the handler; and, once it is answered, record it (metrics, access log). In one
// place, so that a request is the same to a handler and to an operator whichever protocol carried it.
// Not here: reading requests or writing answers (the sessions), the 404/405/400 bodies (http/response_writer).
#pragma once

#include <cstdint>
#include <string_view>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/parser.hpp"
#include "userd/request.hpp"
#include "userd/responder.hpp"
#include "userd/router.hpp"

namespace userd::server {

struct LoopContext;
class Connection;

// One request from its dispatch to the last byte of its answer: what its record needs once its bytes are gone.
struct Exchange {
  std::size_t route = 0;          // metrics label
  std::uint64_t started_us = 0;   // when it was dispatched; 0 when neither metrics nor the log want it
  core::ByteBuffer log_request;   // "METHOD target", when logging; empty: refused before it was a request
  std::uint8_t protocol = 1;      // index into metrics::kProtocols: HTTP/1.0, HTTP/1.1, HTTP/2
};

class Dispatch {
 public:
  // Finds the route and starts the exchange's record. No handler: the session answers 404, or 405 with allow.
  static Router::Match route(LoopContext& ctx, Exchange& ex, const http::RequestHead& head, RouteParams& params);
  // The request its handler sees. Route parameters are decoded now, into decode where each sits in the path;
  // query values later, on demand. False on a bad escape or an encoded NUL in either: the session answers 400.
  static bool prepare(Request& request, const Connection& conn, const http::RequestHead& head, RouteParams& params,
                      core::ByteBuffer& decode);
  static Request request(const LoopContext& ctx, const http::RequestHead& head, std::string_view body) noexcept;
  static Responder responder(const LoopContext& ctx, std::uint32_t slot, std::uint16_t gen, std::uint32_t id) noexcept;
  // Middleware, then the handler. False when one of them threw.
  static bool run(const LoopContext& ctx, const Handler& handler, const Request& request, Responder res) noexcept;
  // The two halves, for a request whose head is routed before its body is in: middleware (go_on: every one
  // said go on), then later the handler. False when one threw.
  static bool admit(const LoopContext& ctx, const Request& request, Responder& res, bool& go_on) noexcept;
  static bool handle(const Handler& handler, const Request& request, Responder res) noexcept;
  // A route's body limit: its own, else ServerConfig::max_body.
  static std::uint64_t body_limit(const LoopContext& ctx, const RouteOptions& options) noexcept;
  // Gives a streamed route's request its BodyReader, naming the same request as its Responder.
  static void stream_body(Request& request, const LoopContext& ctx, std::uint32_t slot, std::uint16_t gen,
                          std::uint32_t id) noexcept;
  // The answer is written: its status and body size go to the metrics and the access log.
  static void record(LoopContext& ctx, Exchange& ex, const Connection& conn, int status, std::size_t body_bytes);
  // A handler's response that would corrupt the stream is refused: a metric, and one log line a second.
  static void refused(LoopContext& ctx, std::string_view why) noexcept;
};

}  // namespace userd::server
