// tests/support/one_connection.hpp: a ReplyTarget that answers through one Connection, as the worker would:
// for the connection unit tests and the connection fuzz target. It has no upstream.
#pragma once

#include "libuserd/server/connection.hpp"
#include "libuserd/server/reply_target.hpp"

namespace userd::testing {

struct OneConnection final : server::ReplyTarget {
  server::Connection* conn = nullptr;
  // The worker runs a connection's continuation later in the same turn; with one connection, right after.
  void settle() noexcept {
    if (conn->ready_due()) conn->run_ready();
  }
  bool reply(std::uint32_t, std::uint16_t, std::uint32_t seq, const Response& r) noexcept override {
    const bool ok = conn->reply(seq, r);
    settle();
    return ok;
  }
  bool awaiting(std::uint32_t, std::uint16_t, std::uint32_t seq) const noexcept override {
    return conn->awaiting(seq);
  }
  FetchRefused fetch(std::size_t, const UpstreamRequest&, Responder, const UpstreamCallback&) noexcept override {
    return FetchRefused::NoUpstream;
  }
  bool stream_begin(std::uint32_t, std::uint16_t, std::uint32_t seq, const Response& head) noexcept override {
    const bool ok = conn->stream_begin(seq, head);
    settle();
    return ok;
  }
  bool stream_write(std::uint32_t, std::uint16_t, std::uint32_t seq, std::string_view data, bool end,
                    std::span<const userd::Header> trailers) noexcept override {
    const bool ok = conn->stream_write(seq, data, end, trailers);
    settle();
    return ok;
  }
  void stream_on_writable(std::uint32_t, std::uint16_t, std::uint32_t seq, std::function<void()> fn) override {
    conn->stream_on_writable(seq, std::move(fn));
  }
  bool body(std::uint32_t, std::uint16_t, std::uint32_t seq, server::BodyCall& c) override {
    const bool ok = conn->body(seq, c);
    settle();
    return ok;
  }
};

}  // namespace userd::testing
