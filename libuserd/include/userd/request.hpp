// userd/request.hpp: what a handler sees of one HTTP request: views into the connection's bytes.
// The views are valid only while the handler runs; a handler that answers later copies what it needs.
// Not here: parsing (libuserd/http/parser.hpp), answering (responder.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

namespace userd {

namespace http {
struct RequestHead;
}
namespace server {
class ReplyTarget;
class Connection;
class Dispatch;
struct Access;
}
class Responder;
struct UpstreamReply;
struct UpstreamRequest;
class UpstreamCallback;
struct FetchResult;
using UpstreamDone = void (*)(void* user, Responder res, const UpstreamReply& reply);

struct Header {
  std::string_view name{};
  std::string_view value{};
};

// Parameters per route at most: a pattern with more is refused.
inline constexpr std::size_t kMaxRouteParams = 16;

// What a route match captured: names from the pattern, values from the path (percent-decoded before a
// handler sees them).
struct RouteParams {
  std::array<std::string_view, kMaxRouteParams> names{};
  std::array<std::string_view, kMaxRouteParams> values{};
  std::size_t count = 0;
};

// What a request's connection negotiated: nothing on plain HTTP.
struct TlsInfo {
  bool on = false;
  std::string_view version{};       // "TLSv1.3"
  std::string_view client_subject{};  // the verified client certificate's subject (RFC 2253); empty when none
};

// Why a streamed body will not complete (BodyReader::on_error).
enum class BodyError : std::uint8_t {
  ClientGone,  // the client closed the connection or reset the stream
  Timeout,     // nothing arrived for ServerConfig::body_timeout_ms while the consumer took data (408)
  TooLarge,    // past the route's body limit (413)
  Malformed,   // a chunked coding that does not parse (400); the connection is closed
};

// A streamed request body (RouteOptions::stream_body), handed to its handler as Request::body_reader(). A small
// copyable handle like a Responder: it never keeps the connection alive, and once the body has ended, failed or
// the request is gone its calls do nothing (on_data says false). Loop thread only: the handler's thread; work
// done elsewhere comes back through Server::post to pause or resume.
// Nothing is read that the consumer did not ask for: until on_data is set, and while paused, an HTTP/1.1
// socket is not read and an HTTP/2 stream gets no WINDOW_UPDATE, so what a slow consumer costs is bounded by
// one receive burst (64 KiB) or the stream's window, not by the body. A handler that answers before the body
// has ended gets the rest discarded: on HTTP/1.1 its answer says Connection: close and the connection closes
// after it (lingering, ServerConfig::linger_ms), on HTTP/2 the stream is reset (NO_ERROR) once the answer is out.
class BodyReader {
 public:
  // fn gets each piece of the body as it arrives, in order, on the loop thread; last is true on the final call
  // (its chunk may be empty). A chunk's bytes are valid only while fn runs. Setting fn asks for the body: a
  // client that sent Expect: 100-continue gets its 100 now. fn may pause(), answer through its Responder, or
  // set another fn. False when there is nothing to read: not a streamed route, or the body ended or failed.
  bool on_data(std::function<void(std::string_view chunk, bool last)> fn) const;
  // fn runs once, on the loop thread, if the body cannot complete (BodyError); never after on_data's last.
  // The server answers a Timeout (408), TooLarge (413) or Malformed (400) itself when nothing has answered yet.
  void on_error(std::function<void(BodyError)> fn) const;
  // No on_data calls between pause() and resume(); the body timeout does not run meanwhile, the handler
  // timeout (ServerConfig::handler_timeout_ms) does: a consumer paused that long is answered 503.
  void pause() const noexcept;
  void resume() const noexcept;
  // True while the body is still arriving (or waits for on_data / resume).
  bool alive() const noexcept;
  // True for a streamed route's reader (whether or not its body has ended): what Request::fetch streams from.
  explicit operator bool() const noexcept { return target_ != nullptr; }
  BodyReader() noexcept = default;

 private:
  friend class server::Dispatch;
  friend struct server::Access;
  BodyReader(server::ReplyTarget* w, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept
      : target_(w), slot_(slot), gen_(gen), seq_(seq) {}
  server::ReplyTarget* target_ = nullptr;
  std::uint32_t slot_ = 0;
  std::uint16_t gen_ = 0;
  std::uint32_t seq_ = 0;
};

class Request {
 public:

  std::string_view method() const noexcept;
  std::string_view target() const noexcept;  // as sent: path and query
  std::string_view path() const noexcept;
  std::string_view query() const noexcept;  // after '?', without it
  int version_minor() const noexcept;       // HTTP/1.0 -> 0, HTTP/1.1 -> 1, HTTP/2 -> 0
  std::string_view protocol() const noexcept;  // "HTTP/1.1", "HTTP/1.0" or "HTTP/2"
  std::span<const Header> headers() const noexcept;
  // The first header of that name, compared case-insensitively; empty when absent.
  std::string_view header(std::string_view name) const noexcept;
  std::string_view body() const noexcept { return body_; }  // de-chunked; empty on a streamed route
  // A streamed route's body (RouteOptions::stream_body); elsewhere an empty reader (its on_data says false).
  BodyReader body_reader() const noexcept { return reader_; }
  bool keep_alive() const noexcept;
  std::string_view backend() const noexcept { return backend_; }  // "io_uring" or "epoll"
  // The value of a route parameter ({name} or {*name}), percent-decoded; empty when the route has none.
  std::string_view param(std::string_view name) const noexcept;
  // The first query value of that name, decoded ('+' is a space); empty when absent. A malformed escape or an
  // encoded NUL anywhere in the query was answered 400 before any handler ran.
  std::string_view query_param(std::string_view name) const noexcept;
  // The client's address: "127.0.0.1:50432" or "[::1]:50432" (looked up on first use).
  std::string_view peer() const noexcept;
  // Whether the request came over TLS, which version, and the client certificate's subject under mutual TLS.
  TlsInfo tls() const noexcept;
  // Which of the server's loop threads runs this handler: 0 .. Server::threads() - 1. A handler keeps per-loop
  // state in an array indexed by it, without locks or thread_local (Server::post runs work on a given loop).
  unsigned loop_index() const noexcept;
  // Runs fn on this loop thread after ms (a timer: nothing blocks meanwhile). False, and fn dropped, when the
  // loop holds 65,536 timers already. While the server drains, timers still run (one may finish a request in
  // flight); those still pending when the loop ends are dropped. Also on Responder and Stream, for later.
  bool after(std::uint64_t ms, std::function<void()> fn) const;

  // GET path from ServerConfig::upstreams[upstream] on this loop thread; done runs when it ends (never before
  // fetch returns), on this loop thread. done: a callable (UpstreamCallback: a lambda capturing a few pointers,
  // kept inline) or a function and a pointer. The result says why, when refused: then nothing runs.
  FetchResult fetch(std::size_t upstream, std::string_view path, Responder res, const UpstreamCallback& done) const
      noexcept;
  FetchResult fetch(std::size_t upstream, std::string_view path, Responder res, UpstreamDone done,
                    void* user = nullptr) const noexcept;
  // Any method, headers and body (userd/upstream.hpp). Only idempotent methods (GET, HEAD, PUT, DELETE,
  // OPTIONS, TRACE) are retried on a fresh connection after a reused one dies before answering; others only when
  // not a byte of them was sent.
  FetchResult fetch(std::size_t upstream, const UpstreamRequest& request, Responder res,
                    const UpstreamCallback& done) const noexcept;
  FetchResult fetch(std::size_t upstream, const UpstreamRequest& request, Responder res, UpstreamDone done,
                    void* user = nullptr) const noexcept;

 private:
  const http::RequestHead* head_;
  std::string_view body_;
  std::string_view backend_;
  server::ReplyTarget* loop_;
  friend class server::Dispatch;  // makes it, and fills what routing and decoding produced
  friend struct server::Access;
  Request(const http::RequestHead& head, std::string_view body, std::string_view backend,
          server::ReplyTarget* loop = nullptr) noexcept
      : head_(&head), body_(body), backend_(backend), loop_(loop) {}

  const RouteParams* params_ = nullptr;
  BodyReader reader_{};
  char* query_space_ = nullptr;  // as long as the query: query_param decodes a value where it sits in it
  const server::Connection* conn_ = nullptr;
};

}  // namespace userd
