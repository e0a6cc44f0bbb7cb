// http/message_reader.hpp: assembles one HTTP/1.1 message, a request (server side) or a response (upstream
// side), out of bytes that arrive in pieces: the head, then a body framed by Content-Length, by the chunked
// coding (decoded in place, behind the head), or by the close of the connection (responses only).
// The bytes are the caller's and may move between calls (a receive buffer, then the caller's own buffer); the
// head's views are parsed again when they did. One reader serves both sides, so a framing rule is written once.
// Not here: head syntax (parser.hpp), chunk syntax (chunked.hpp), sockets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "libuserd/http/chunked.hpp"
#include "libuserd/http/parser.hpp"

namespace userd::http {

enum class ReadStatus : std::uint8_t {
  NeedMore,  // append bytes and call again with the same start
  Done,      // the message is complete: `total` bytes from its start; body() is its decoded body
  Interim,   // a 1xx response head of `total` bytes, no body: the caller decides, drops it and reads on
  Head,      // stop_at_head: a request head of `total` bytes with a body to come; the caller decides, then
             // either reads on (set_max_body first, if it changes) or takes the body itself and resets
  Bad,       // `error` says why; the stream cannot be trusted past this point
};

struct ReadStep {
  ReadStatus status;
  HttpError error = HttpError::None;
  std::size_t total = 0;
};

template <class Head>
class MessageReader {
 public:
  // Before each message (and after Interim): max_body bounds the decoded body (413 / TooLarge). no_body: the
  // answer to a HEAD request, which has none whatever its head says (RFC 9110 9.3.2).
  void reset(std::uint64_t max_body, bool no_body = false) noexcept {
    max_body_ = max_body;
    no_body_ = no_body;
    head_done_ = checked_ = false;
    prev_len_ = head_len_ = body_have_ = raw_off_ = 0;
    base_ = nullptr;
  }

  // A head with a body comes back as Head before any of its body is looked at (kept across resets): a request's
  // for a streamed route, a response's that streams (its body may run to the close).
  void stop_at_head(bool on) noexcept { stop_at_head_ = on; }
  // After Head: the body limit for the rest of this message.
  void set_max_body(std::uint64_t max_body) noexcept { max_body_ = max_body; }
  std::uint64_t max_body() const noexcept { return max_body_; }

  // msg: the message's first byte; avail: the bytes from there that have arrived.
  ReadStep read(char* msg, std::size_t avail, const Limits& limits = {}) noexcept;
  // The peer closed after avail bytes: Done for a body framed by the close, else NeedMore (the caller's
  // "closed early").
  ReadStep finish_at_close(char* msg, std::size_t avail) noexcept;

  bool head_done() const noexcept { return head_done_; }
  // After a head was parsed (head_done(), or Done): views into the message where it was last read.
  const Head& head() const noexcept { return head_; }
  std::size_t head_len() const noexcept { return head_len_; }
  std::string_view body(const char* msg) const noexcept { return {msg + head_len_, body_have_}; }

  // For a caller that keeps an unfinished message in its own buffer: the bytes to keep are [0, live()) and
  // [raw_off(), avail); after moving them there back to back it calls compacted().
  std::size_t live() const noexcept { return head_done_ ? head_len_ + body_have_ : 0; }
  std::size_t raw_off() const noexcept { return head_done_ ? raw_off_ : 0; }
  void compacted() noexcept {
    if (head_done_) raw_off_ = head_len_ + body_have_;
    base_ = nullptr;  // the head is parsed again where it now lives
  }

 private:
  Head head_;
  ChunkedDecoder chunked_;
  std::uint64_t max_body_ = 0;
  bool head_done_ = false;
  bool no_body_ = false;
  bool checked_ = false;       // the body's framing was set up against max_body_
  bool stop_at_head_ = false;
  std::size_t prev_len_ = 0;  // bytes the head parser saw without finding the head's end
  std::size_t head_len_ = 0;
  std::size_t body_have_ = 0;  // decoded body bytes, right after the head
  std::size_t raw_off_ = 0;    // next undecoded body byte
  const char* base_ = nullptr;  // where head_'s views point
};

extern template class MessageReader<RequestHead>;
extern template class MessageReader<ParsedResponse>;

}  // namespace userd::http
