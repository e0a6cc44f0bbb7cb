// server/session.hpp: what a protocol is to a connection: a session on its transport. The connection hands it
// plaintext, tells it when output went out, asks which deadline it waits for and whether its input is stuck, and
// routes the answers that Responders and Streams send to it by the id they hold. HTTP/1.1 is the first session
// (http1_session.hpp); each request a session reads goes through dispatch (dispatch.hpp).
// Not here: sockets, TLS and output queues (transport.hpp); slots (connection.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "libuserd/server/body.hpp"
#include "libuserd/server/timers.hpp"
#include "userd/responder.hpp"

namespace userd::server {

class Session {
 public:
  // Input and output. on_bytes may throw std::bad_alloc (the connection then ends).
  virtual void on_bytes(char* data, std::size_t n) = 0;  // plaintext: writable, and ours until this returns
  virtual void on_sent() noexcept = 0;                    // all output flushed so far is out
  // The deadline the session waits for when the transport has none of its own (idle, header, body, or None
  // while an answer is owed), and whether its unread input should stop the socket's receive.
  virtual Timer deadline() const noexcept = 0;
  virtual bool input_stuck(bool paused) const noexcept = 0;
  virtual void on_timeout(Timer t) noexcept = 0;  // Header, Body or Handler
  // The client closed its side: a body still being read can never complete.
  virtual void on_eof() noexcept {}
  // The send deadline passed with nothing on its way to the socket: true when the session judges its own
  // streams (HTTP/2: one whose client keeps its window shut is reset, the others go on); false: the connection
  // ends, as for output that makes no progress.
  virtual bool on_send_timeout() noexcept { return false; }
  // The server is stopping: finish what is in flight, take nothing new.
  virtual void drain() noexcept = 0;
  // The connection is ending (abort), and later its slot is free again (released).
  virtual void on_abort() noexcept = 0;
  virtual void on_released() noexcept = 0;
  virtual void release_buffers(std::size_t keep) noexcept = 0;

  // Answers, by the id a Responder holds (its seq): false when no request of that id awaits one.
  virtual bool awaiting(std::uint32_t id) const noexcept = 0;
  virtual bool streaming(std::uint32_t id) const noexcept = 0;
  virtual bool reply(std::uint32_t id, const Response& r) noexcept = 0;
  virtual bool stream_begin(std::uint32_t id, const Response& head) noexcept = 0;
  virtual bool stream_write(std::uint32_t id, std::string_view data, bool end,
                            std::span<const Header> trailers) noexcept = 0;
  // Data its producer was already told was taken (off the loop, through the inbox): written even over the
  // high-water mark, which the worker's own bound on waiting data keeps in check.
  virtual bool stream_write_taken(std::uint32_t id, std::string_view data) noexcept = 0;
  virtual void stream_on_writable(std::uint32_t id, std::function<void()> fn) = 0;
  // The stream's body cannot be finished (Stream::abort): false when it is not streaming.
  virtual bool stream_abort(std::uint32_t id) noexcept = 0;
  // A stream past its high-water mark (its connection's output, or on HTTP/2 its own buffer): off-loop data
  // for it waits in the worker.
  virtual bool stream_backed_up(std::uint32_t id) const noexcept = 0;
  // Off-loop data for this stream waits in the worker (what follows it waits too, to stay in order); the
  // worker counts what it holds for the stream up (+1) and down (-1).
  virtual bool stream_waits(std::uint32_t id) const noexcept = 0;
  virtual void stream_stalled(std::uint32_t id, int delta) noexcept = 0;
  // A streamed request body's consumer (BodyReader), by the id its Responder holds.
  virtual bool body(std::uint32_t id, BodyCall& c) = 0;
  // The worker's later-in-the-turn calls: ctx.writable_due and ctx.ready.
  virtual void run_writable() noexcept = 0;
  virtual void run_ready() noexcept = 0;
  virtual bool ready_due() const noexcept = 0;  // on ctx.ready
  // The worker holds off-loop stream data for this session: once output drains (or a stream it holds data for
  // closes) it asks for a writable turn.
  virtual void inbox_waits(bool on) noexcept = 0;
  virtual bool inbox_waiting() const noexcept = 0;

 protected:
  ~Session() = default;
};

}  // namespace userd::server
