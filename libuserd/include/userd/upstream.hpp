// userd/upstream.hpp: asking another HTTP server from a handler, on the handler's own loop thread: no thread
// blocks, no extra threads. Each loop thread keeps its own keep-alive pool per upstream.
// Not here: how the pool works (libuserd/upstream/pool.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd {

namespace upstream {
class Pool;
}

struct UpstreamConfig {
  // A numeric address, or a name resolved at start (and again after a failed connect, at most every 5 s):
  // every address it resolves to is used in turn, and one
  // that refused a connection is skipped for a few seconds.
  std::string host = "127.0.0.1";
  std::uint16_t port = 80;
  unsigned max_conns = 64;     // per loop thread; further requests queue until one is free
  unsigned max_queue = 1024;   // per loop thread: requests waiting for a connection; beyond it Overloaded at once
  unsigned timeout_ms = 2000;  // the whole exchange: connect, send, the complete response
  std::size_t max_body = 1 << 20;  // of a buffered response; a streamed one (stream_response) has no limit
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
  // The request body streamed from the client as it arrives (a streamed route's Request::body_reader(); body is
  // then ignored), with Content-Length: body_length when it is known, else chunked. Backpressure both ways: the
  // client's body is paused while 64 KiB of it wait for the upstream. Such a request is never retried (its body
  // cannot be sent twice), and the reader is the pool's from then on: its callbacks are the pool's.
  BodyReader body_from{};
  std::int64_t body_length = -1;
  // The callback runs once the response's head has arrived, and the body follows through UpstreamReply::stream
  // (no max_body; timeout_ms applies to the head, then to every wait for the upstream's next bytes).
  bool stream_response = false;
};

enum class UpstreamError : std::uint8_t {
  None,
  Unreachable,  // refused, or no connection within the timeout
  Timeout,      // connected, but no complete response within the timeout
  Closed,       // the connection ended before the response was complete
  BadResponse,  // not HTTP/1.x, or malformed framing
  TooLarge,     // body over max_body
  Overloaded,   // too many requests already queued
  BodyFailed,   // the request body streamed from the client (body_from) failed: the client left or timed out
};

std::string_view describe(UpstreamError e) noexcept;

// A streamed upstream response body (UpstreamRequest::stream_response), handed out with its head. A small
// copyable handle; loop thread only (the fetch's). The callback that gets it takes the body there and then,
// with pipe() or on_data(); a body nobody took when the callback returns is abandoned. The connection goes
// back to the pool only once the body has ended; one abandoned, failed or cut by its client is closed.
class UpstreamBody {
 public:
  // Forwards the body as to's body (a Stream begun from the client's Responder) and ends it when the upstream's
  // ends. Backpressure: while to cannot take more (64 KiB queued to its client, or its HTTP/2 window shut) the
  // upstream is not read. A client that leaves abandons the body; an upstream that fails midway aborts to
  // (Stream::abort), so the client never takes a cut body for a whole one.
  bool pipe(Stream to) const;
  // Or: fn gets each piece as it arrives, in order; last on the final call (its chunk may be empty). A chunk's
  // bytes are valid only while fn runs; fn may pause(), abandon() or answer.
  bool on_data(std::function<void(std::string_view chunk, bool last)> fn) const;
  // fn runs once, later in the loop's turn, if the body cannot complete; never after on_data's last.
  void on_error(std::function<void(UpstreamError)> fn) const;
  void pause() const noexcept;  // the upstream is not read meanwhile; timeout_ms does not run
  void resume() const noexcept;
  void abandon() const noexcept;  // the rest is not wanted: the connection is closed, nobody is called back
  bool alive() const noexcept;    // the body is still arriving (or waits to be taken)
  UpstreamBody() noexcept = default;

 private:
  friend class upstream::Pool;
  UpstreamBody(upstream::Pool* p, std::uint32_t conn, std::uint32_t seq) noexcept : pool_(p), conn_(conn), seq_(seq) {}
  upstream::Pool* pool_ = nullptr;
  std::uint32_t conn_ = 0;
  std::uint32_t seq_ = 0;
};

struct UpstreamReply {
  UpstreamError error = UpstreamError::None;
  int status = 0;
  std::span<const Header> headers{};
  // De-chunked. Valid only during the callback; at least 64 readable bytes follow it (simdjson's padding), so
  // it can be parsed in place. Empty when the response streams.
  std::string_view body{};
  // stream_response: the body to come (its calls say false for an error; an empty body ends at once).
  UpstreamBody stream{};
  // The first header of that name, compared case-insensitively; empty when absent (as Request::header).
  std::string_view header(std::string_view name) const noexcept;
};

// Called on the loop thread when the exchange ends, once per fetch. `res` answers the client (it may have gone:
// res.send returns false). The plain form: a function and a pointer.
using UpstreamDone = void (*)(void* user, Responder res, const UpstreamReply& reply);

// The callable form: any function object taking (Responder, const UpstreamReply&), kept inline in the request in
// flight, so a fetch allocates nothing for it. It must be trivially copyable and at most kInlineBytes: a lambda
// that captures pointers, references, numbers or a Responder (not a std::string or a shared_ptr: keep such state
// behind a pointer).
class UpstreamCallback {
 public:
  static constexpr std::size_t kInlineBytes = 4 * sizeof(void*);
  UpstreamCallback() noexcept = default;
  template <class F, class = std::enable_if_t<std::is_invocable_v<const F&, Responder, const UpstreamReply&> &&
                                              !std::is_same_v<std::decay_t<F>, UpstreamCallback>>>
  UpstreamCallback(F f) noexcept {  // NOLINT: implicit, so that a lambda can be passed as it is
    static_assert(std::is_trivially_copyable_v<F>,
                  "an upstream callback is kept inline and copied: capture pointers or references, not owners");
    static_assert(sizeof(F) <= kInlineBytes && alignof(F) <= alignof(void*),
                  "an upstream callback captures at most four pointers' worth: keep larger state behind one");
    std::memcpy(buf_, &f, sizeof f);  // trivially copyable: its bytes are the object
    call_ = [](const unsigned char* b, Responder res, const UpstreamReply& r) {
      alignas(F) unsigned char copy[sizeof(F)];
      std::memcpy(copy, b, sizeof(F));
      (*reinterpret_cast<const F*>(copy))(res, r);
    };
  }
  // The plain form, wrapped.
  UpstreamCallback(UpstreamDone done, void* user) noexcept
      : UpstreamCallback([done, user](Responder res, const UpstreamReply& r) { done(user, res, r); }) {}
  explicit operator bool() const noexcept { return call_ != nullptr; }
  void operator()(Responder res, const UpstreamReply& r) const { call_(buf_, res, r); }

 private:
  alignas(void*) unsigned char buf_[kInlineBytes] = {};
  void (*call_)(const unsigned char*, Responder, const UpstreamReply&) = nullptr;
};

// Why Request::fetch refused (and nothing was sent, and the callback will not run).
enum class FetchRefused : std::uint8_t {
  None,
  NoUpstream,  // no ServerConfig::upstreams entry of that index
  BadRequest,  // a header, method or target that would split or contradict the request (see UpstreamRequest)
  QueueFull,   // max_queue requests (or their bytes) wait already: answer 503 now
  NoMemory,
  NotOnLoop,   // called off the handler's loop thread, or outside a server
};
std::string_view describe(FetchRefused r) noexcept;
// fetch()'s answer: true when the request is on its way; else why it was refused.
struct FetchResult {
  FetchRefused refused = FetchRefused::None;
  explicit operator bool() const noexcept { return refused == FetchRefused::None; }
};

// Padding the body is followed by (see UpstreamReply::body).
inline constexpr std::size_t kUpstreamBodyPadding = 64;

}  // namespace userd
