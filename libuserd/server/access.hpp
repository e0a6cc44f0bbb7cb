// server/access.hpp: makes the Request and Responder that only the server may make (their constructors take
// internal types and are private), for the library's own tests and tools.
// Not here: anything an embedder calls.
#pragma once

#include <cstdint>
#include <string_view>

#include "libuserd/http/parser.hpp"
#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd::server {

class ReplyTarget;

struct Access {
  static Request request(const http::RequestHead& head, std::string_view body, std::string_view backend) noexcept {
    return Request(head, body, backend);
  }
  static Responder responder(ReplyTarget* target, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept {
    return Responder(target, slot, gen, seq);
  }
  static BodyReader body_reader(ReplyTarget* target, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept {
    return BodyReader(target, slot, gen, seq);
  }
};

}  // namespace userd::server
