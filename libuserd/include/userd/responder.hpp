// userd/responder.hpp: how a handler answers: now, inside the handler, or later on the same loop thread.
// A Responder is a small copyable handle (thread, connection slot, generation); it never owns the connection,
// so answering after the client left is a safe no-op.
// Not here: the bytes on the wire (libuserd/http/response_writer.hpp).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "userd/request.hpp"

namespace userd {

namespace server {
class ReplyTarget;
}

struct Response {
  int status = 200;
  std::string_view content_type = "application/json";
  std::string_view body;
  std::span<const Header> headers;  // extra headers, written as given (Date, Content-Length come from the server)
  // True when body outlives the server (a dataset loaded at start): it is then sent without being copied.
  bool body_is_static = false;
};

class Responder {
 public:
  // Answers the request. Call once, on the thread that ran the handler. Returns false (and does nothing) when the
  // connection is gone or was already answered. The body is copied unless body_is_static.
  bool send(const Response& r) const noexcept;
  // Whether the client is still there to be answered.
  bool alive() const noexcept;

  Responder(server::ReplyTarget* w, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept
      : target_(w), slot_(slot), gen_(gen), seq_(seq) {}

 private:
  server::ReplyTarget* target_;
  std::uint32_t slot_;
  std::uint16_t gen_;
  std::uint32_t seq_;  // which request of the connection this answers
};

}  // namespace userd
