// userd/upstream.hpp: asking another HTTP server from a handler, on the handler's own loop thread: no thread
// blocks, no extra threads. Each loop thread keeps its own keep-alive pool per upstream.
// Not here: how the pool works (libuserd/upstream/pool.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd {

struct UpstreamConfig {
  // A numeric address, or a name resolved at start (and again after a failed connect, at most every 5 s):
  // every address it resolves to is used in turn, and one
  // that refused a connection is skipped for a few seconds.
  std::string host = "127.0.0.1";
  std::uint16_t port = 80;
  unsigned max_conns = 64;     // per loop thread; further requests queue until one is free
  unsigned max_queue = 1024;   // per loop thread: requests waiting for a connection; beyond it Overloaded at once
  unsigned timeout_ms = 2000;  // the whole exchange: connect, send, the complete response
  std::size_t max_body = 1 << 20;
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
};

enum class UpstreamError : std::uint8_t {
  None,
  Unreachable,  // refused, or no connection within the timeout
  Timeout,      // connected, but no complete response within the timeout
  Closed,       // the connection ended before the response was complete
  BadResponse,  // not HTTP/1.x, or malformed framing
  TooLarge,     // body over max_body
  Overloaded,   // too many requests already queued
};

std::string_view describe(UpstreamError e) noexcept;

struct UpstreamReply {
  UpstreamError error = UpstreamError::None;
  int status = 0;
  std::span<const Header> headers{};
  // De-chunked. Valid only during the callback; at least 64 readable bytes follow it (simdjson's padding), so
  // it can be parsed in place.
  std::string_view body{};
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
