// server/reply_target.hpp: what a Responder and Request::fetch call into: the worker in a server, a single
// connection in tests.
// Not here: the connection's own reply logic (connection.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "libuserd/server/body.hpp"
#include "userd/responder.hpp"
#include "userd/upstream.hpp"

namespace userd::server {

class ReplyTarget {
 public:
  virtual bool reply(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r) noexcept = 0;
  virtual bool awaiting(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) const noexcept = 0;
  virtual FetchRefused fetch(std::size_t upstream, const UpstreamRequest& request, Responder res,
                             const UpstreamCallback& done) noexcept = 0;
  // Streams (Responder::stream, Stream): begin, write (or end), and the writable callback.
  virtual bool stream_begin(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& head) noexcept = 0;
  // trailers: with end only, already checked (Stream::end).
  virtual bool stream_write(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, std::string_view data,
                            bool end, std::span<const Header> trailers) noexcept = 0;
  virtual void stream_on_writable(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq,
                                  std::function<void()> fn) = 0;
  // Stream::abort: loop thread only.
  virtual bool stream_abort(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept {
    return (void)slot, (void)gen, (void)seq, false;
  }
  // A streamed body's calls (BodyReader): loop thread only.
  virtual bool body(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, BodyCall& c) {
    return (void)slot, (void)gen, (void)seq, (void)c, false;
  }
  // A timer on the loop (Request::after, Responder::after, Stream::after): loop thread only.
  virtual bool run_after(std::uint64_t ms, std::function<void()> fn) noexcept { return (void)ms, (void)fn, false; }

 protected:
  ~ReplyTarget() = default;
};

}  // namespace userd::server
