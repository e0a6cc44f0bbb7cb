// userd/responder.hpp: how a handler answers: now, inside the handler, or later, from any thread.
// A Responder is a small copyable handle (thread, connection slot or HTTP/2 exchange, generation, request
// number); it never owns the connection, so answering after the client left is a safe no-op.
// Not here: the bytes on the wire (libuserd/http/response_writer.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "userd/request.hpp"

namespace userd {

namespace server {
class ReplyTarget;
class Dispatch;
struct Access;
}

struct Response {
  int status = 200;
  std::string_view content_type = "application/json";
  std::string_view body{};
  std::span<const Header> headers{};  // extra headers, written as given (Date, Content-Length come from the server)
  // True when body outlives the server (a dataset loaded at start): it is then sent without being copied, and its
  // bytes must not change (their compressed forms are kept).
  bool body_is_static = false;
  // False: never compressed (ServerConfig::compress), e.g. a body already compressed or one a client must get
  // byte for byte.
  bool compressible = true;
};

// A response whose body is written in pieces: chunked to an HTTP/1.1 client, delimited by the close to an
// HTTP/1.0 one, headers only for HEAD. Copyable; like a Responder it never keeps the connection alive.
class Stream {
 public:
  // Copies data into the response. False, and nothing written, when the client has gone, the stream has ended,
  // or the server's loops have ended (a stopping server still takes it: stop() waits for streams in flight);
  // on the loop thread also when more than 64 KiB of output is queued, or data
  // written from another thread still waits (wait for on_writable); from another thread, the data goes through the loop's inbox and waits there until the
  // connection can take it, and write() also says false when this stream already has 256 KiB waiting (or the
  // loop 4 MiB). True means it will be sent, in order, unless the client leaves.
  bool write(std::string_view data) const noexcept;
  // Loop thread only: fn runs on the loop thread after ms (Request::after), e.g. the next event of a feed.
  bool after(std::uint64_t ms, std::function<void()> fn) const;
  // Loop thread only: fn runs once, on the loop thread, when queued output is below 16 KiB (on the next loop
  // turn if it is already). Register again from fn for more.
  void on_writable(std::function<void()> fn) const;
  // The end of the body; the connection then goes on with the client's next request. Any thread; it goes out
  // after every write that said true.
  bool end() const noexcept;
  // The end, with trailer fields after the body (a checksum, a status known only at the end): a trailing HEADERS
  // frame on HTTP/2, the chunked trailer section on HTTP/1.1; dropped where the framing has no place for them
  // (HTTP/1.0, HEAD, a status without a body). False, and the stream not ended, when a field is not a valid
  // name and value, is one RFC 9110 6.5.1 forbids in trailers (framing, routing, Host, Content-Type and the
  // like), or they pass 8 KiB or 32 fields; otherwise as end().
  bool end(std::span<const Header> trailers) const noexcept;
  // True while writes can still be taken: the client is there, the stream has not ended, the loops run. A
  // producer off the loop whose write() said false asks this to tell "too much waiting" (try again) from the
  // end.
  // Any thread.
  bool alive() const noexcept;
  // The body cannot be finished (its source failed midway): the client must not take what it got for the whole
  // body. HTTP/2: the stream is reset (INTERNAL_ERROR); HTTP/1.1 and 1.0: the connection is reset, since a
  // chunked body cut short would still read as complete to an HTTP/1.0 client. Loop thread only; false when the
  // stream is not streaming any more.
  bool abort() const noexcept;
  Stream() noexcept = default;

 private:
  friend class Responder;
  friend struct server::Access;
  Stream(server::ReplyTarget* w, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept
      : target_(w), slot_(slot), gen_(gen), seq_(seq) {}
  server::ReplyTarget* target_ = nullptr;
  std::uint32_t slot_ = 0;
  std::uint16_t gen_ = 0;
  std::uint32_t seq_ = 0;
};

class Responder {
 public:
  // Answers the request, once, from any thread. False, and nothing done, when the client is gone, the request
  // was already answered (or its handler deadline answered it), or the server's loops have ended. A stopping
  // server still takes it, with Connection: close, until its drain_timeout_ms. On the loop thread
  // that ran the handler the answer is written at once; elsewhere it is copied into the loop's inbox and the
  // loop is woken (if the request stops being awaited in between, the loop drops it). The body is copied
  // unless body_is_static. The Server must outlive every Responder that may still be used.
  bool send(const Response& r) const noexcept;
  // Starts a streamed answer with head's status, content type and headers (its body is ignored; a handler's
  // Content-Length is refused). Any thread. An unusable Stream (its calls return false) when the request is not
  // awaited any more.
  Stream stream(const Response& head) const noexcept;
  // Whether the request is still awaited: the client is there and nothing has answered it. Any thread.
  bool alive() const noexcept;
  // Loop thread only: fn runs on the loop thread after ms (Request::after), e.g. to answer then.
  bool after(std::uint64_t ms, std::function<void()> fn) const;

  // Answers nothing: send() returns false. Handlers get theirs from the server.
  Responder() noexcept = default;

 private:
  friend class server::Dispatch;
  friend struct server::Access;
  Responder(server::ReplyTarget* w, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept
      : target_(w), slot_(slot), gen_(gen), seq_(seq) {}

  server::ReplyTarget* target_ = nullptr;
  std::uint32_t slot_ = 0;
  std::uint16_t gen_ = 0;
  std::uint32_t seq_ = 0;  // which request of the connection this answers
};

}  // namespace userd
