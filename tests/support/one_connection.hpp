// tests/support/one_connection.hpp: a ReplyTarget that answers through one Connection, as the worker would:
// for the connection unit tests and the connection fuzz target. It has no upstream.
#pragma once

#include "libuserd/server/connection.hpp"
#include "libuserd/server/reply_target.hpp"

namespace userd::testing {

struct OneConnection final : server::ReplyTarget {
  server::Connection* conn = nullptr;
  bool reply(std::uint32_t, std::uint16_t, std::uint32_t seq, const Response& r) noexcept override {
    return conn->reply(seq, r);
  }
  bool awaiting(std::uint32_t, std::uint16_t, std::uint32_t seq) const noexcept override {
    return conn->awaiting_reply() && conn->seq() == seq;
  }
  bool fetch(std::size_t, std::string_view, Responder, UpstreamDone, void*) noexcept override { return false; }
};

}  // namespace userd::testing
