// server/connection.hpp: one slot of a loop: a client connection, as a transport (socket, TLS, output) with a
// protocol session on it (HTTP/1.1 today). The worker routes completions, answers and deadlines here; this
// passes them to the layer they belong to. It talks to the kernel only through io::Backend, so the same code runs
// on io_uring, on epoll and under a fake backend in unit tests.
// Not here: accepting, slot allocation and the loop (worker.hpp); the layers themselves (transport.hpp,
// http1_session.hpp, dispatch.hpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/date.hpp"
#include "libuserd/http/parser.hpp"
#include "libuserd/io/backend.hpp"
#include "libuserd/metrics/metrics.hpp"
#include "libuserd/server/exchanges.hpp"
#include "libuserd/server/http1_session.hpp"
#include "libuserd/server/http2_session.hpp"
#include "libuserd/server/session.hpp"
#include "libuserd/server/timers.hpp"
#include "libuserd/server/transport.hpp"
#include "libuserd/tls/tls.hpp"
#include "userd/responder.hpp"
#include "userd/router.hpp"

namespace userd::server {

class ReplyTarget;
struct LoopContext;
class LoopCompression;

class Connection final : private Transport::Owner {
 public:
  using State = Transport::State;

  explicit Connection(LoopContext& ctx) noexcept : ctx_(&ctx), t_(ctx, *this), h1_(ctx, *this, t_) {}

  // Takes a freshly accepted socket and arms its receive. With tls, the connection speaks TLS (a handshake
  // first); with proxy, a PROXY protocol header comes before anything (and names the peer). False when its state
  // could not be made (out of memory): the socket is the caller's to close.
  bool open(int fd, std::uint32_t slot, SSL_CTX* tls = nullptr, bool proxy = false) noexcept;

  // Completions routed here by the worker.
  void on_recv(char* data, std::size_t n) noexcept { t_.on_recv(data, n); }  // data is ours until this returns
  void on_recv_end(int res) noexcept { t_.on_recv_end(res); }  // the multishot receive ended; res as its last
  void on_send(int res) noexcept { t_.on_send(res); }

  // Answers (Responder, Stream), by the request id the Responder holds: see Session.
  bool awaiting(std::uint32_t id) const noexcept { return t_.is_open() && session_->awaiting(id); }
  bool streaming(std::uint32_t id) const noexcept { return session_->streaming(id); }
  bool reply(std::uint32_t id, const Response& r) noexcept { return session_->reply(id, r); }
  bool stream_begin(std::uint32_t id, const Response& head) noexcept { return session_->stream_begin(id, head); }
  bool stream_write(std::uint32_t id, std::string_view data, bool end, std::span<const Header> trailers = {}) noexcept {
    return session_->stream_write(id, data, end, trailers);
  }
  bool stream_write_taken(std::uint32_t id, std::string_view data) noexcept {
    return session_->stream_write_taken(id, data);
  }
  bool stream_abort(std::uint32_t id) noexcept { return t_.is_open() && session_->stream_abort(id); }
  void stream_on_writable(std::uint32_t id, std::function<void()> fn) {
    session_->stream_on_writable(id, std::move(fn));
  }
  bool stream_backed_up(std::uint32_t id) const noexcept { return session_->stream_backed_up(id); }
  bool stream_waits(std::uint32_t id) const noexcept { return session_->stream_waits(id); }
  void stream_stalled(std::uint32_t id, int delta) noexcept { session_->stream_stalled(id, delta); }
  bool body(std::uint32_t id, BodyCall& c) { return t_.is_open() && session_->body(id, c); }
  void inbox_waits(bool on) noexcept { session_->inbox_waits(on); }
  bool inbox_waiting() const noexcept { return session_->inbox_waiting(); }
  // The worker's later-in-the-turn calls (ctx.writable_due, ctx.ready).
  void run_writable() noexcept { session_->run_writable(); }
  bool ready_due() const noexcept { return session_->ready_due(); }
  void run_ready() noexcept { session_->run_ready(); }

  // Ends the connection now: pending output is dropped.
  void abort() noexcept override { end(false); }
  // abort() with a TCP reset (Transport::reset_now): a response cut mid-body (Stream::abort).
  void reset() noexcept { end(true); }
  // A deadline passed (the worker's tick): idle and linger close; header and body answer 408 and close.
  void on_timeout(Timer t) noexcept;
  // The server is stopping: close now if idle, else finish the request in flight and close after it.
  void drain() noexcept {
    if (t_.is_open()) session_->drain();
  }
  // Closes the socket without the backend, which is already gone (the worker's destructor).
  void teardown() noexcept;

  State state() const noexcept { return t_.state(); }
  std::uint16_t gen() const noexcept { return t_.gen(); }
  std::uint32_t slot() const noexcept { return t_.slot(); }
  // "address:port" of the client: the socket's peer, or the one a PROXY header named.
  std::string_view peer() const noexcept;
  TlsInfo tls_info() const noexcept;
  unsigned loop_index() const noexcept;
  // The slot may be reused once the socket is closed and no completion is pending for it.
  bool released() const noexcept { return t_.state() == State::Free; }
  // True once per release: the worker puts the slot on its free list then, however often it asks.
  bool take_release() noexcept { return t_.take_release(); }
  // A free slot gives back every buffer it kept for its next connection (the worker's tick, after a burst).
  void shed() noexcept;

  // HTTP/1.1's first bytes were the HTTP/2 preface (magic: they are fed to nghttp2 first), or TLS chose h2: the
  // connection speaks HTTP/2 from now on. Throws std::bad_alloc when it cannot.
  void switch_to_h2(const char* magic, char* data, std::size_t n);

  // The session's: after its input or output changed, the receive (backpressure) and the deadline.
  void update_waits() noexcept override;
  void update_timer() noexcept override;

  TimerLink timer_link;    // owned by ctx.timers
  TimerLink handler_link;  // owned by ctx.handler_timers

 private:
  void end(bool reset) noexcept;
  void on_bytes(char* data, std::size_t n) override { session_->on_bytes(data, n); }
  void on_sent() noexcept override { session_->on_sent(); }
  void on_eof() noexcept override { session_->on_eof(); }
  void on_proxy_source(const sockaddr_storage& a) noexcept override;
  void on_released() noexcept override;

  LoopContext* ctx_;
  Transport t_;
  Http1Session h1_;          // every connection starts as HTTP/1.1
  Session* session_ = &h1_;  // the protocol spoken now
  std::unique_ptr<Http2Session> h2_;  // made the first time this slot speaks HTTP/2, kept for its next ones
  bool shed_ = false;        // free, and holding no buffers
  mutable char peer_[64] = {};  // "address:port": at open when logging, else on first peer()
};

struct LoopContext {
  io::Backend* backend = nullptr;
  const Router* router = nullptr;
  ReplyTarget* replies = nullptr;  // handed to Responders: the worker
  http::DateCache date;
  http::Limits limits;
  std::uint64_t max_body = 1 << 20;
  std::uint64_t now_ms = 0;  // CLOCK_MONOTONIC, refreshed once per loop turn
  unsigned loop_index = 0;   // which of the server's loops: Request::loop_index()
  std::uint64_t handler_timeout_ms = 30'000;  // ServerConfig's: HTTP/2 keeps one deadline per stream
  // HTTP/2 (ServerConfig::http2): null when off.
  std::unique_ptr<H2Shared> h2;
  std::uint32_t h2_max_streams = 128;
  // ServerConfig::compress: null when off, so a loop without it pays one test per response.
  LoopCompression* compress = nullptr;
  std::string_view backend_name;
  TimerLists<Connection, &Connection::timer_link> timers;  // idle, header, body, send and linger deadlines
  TimerLists<Connection, &Connection::handler_link> handler_timers;  // requests a handler holds
  metrics::ThreadMetrics* metrics = nullptr;  // null in unit tests
  core::ByteBuffer* access_log = nullptr;     // null: off; the worker writes it out on its tick
  char log_time[24] = {};                     // "2026-11-28T15:03:00Z", refreshed once a second
  const std::function<void(std::string_view)>* log = nullptr;  // ServerConfig::log; null: stderr
  std::uint64_t last_bad_response_log_s = UINT64_MAX;  // a refused handler response: one log line a second
  std::size_t released_bytes = 0;             // buffer memory freed since the worker last trimmed the heap
  unsigned handshakes = 0;                    // TLS handshakes in progress on this loop
  // By slot: the token of the request that slot's connection awaits an answer for, 0 when none. Written by the
  // loop, read by threads that answer from elsewhere (null in unit tests).
  std::atomic<std::uint64_t>* awaited = nullptr;
  // HTTP/2's requests, each with a token of its own (exchanges.hpp); null in unit tests and without HTTP/2.
  ExchangeTable* exchanges = nullptr;
  // Streams whose on_writable callback is due, and connections whose queued requests go on after an answer
  // from elsewhere: run by the worker after the turn's completions, never from inside another connection call.
  std::vector<std::pair<std::uint32_t, std::uint16_t>> writable_due;
  std::vector<std::pair<std::uint32_t, std::uint16_t>> ready;
  // Calls into embedders' code found due deep inside a session (a streamed body's on_error): run with the
  // continuations, on a stack of their own.
  std::vector<std::function<void()>> later;
  // TLS connections decrypt into tls_plain (parsed from there like a receive buffer) and gather a flush's
  // segments into tls_seal, so that a response becomes one record: one of each per loop thread.
  static constexpr std::size_t kTlsScratch = 16 * 1024;
  std::unique_ptr<char[]> tls_plain, tls_seal;
};

}  // namespace userd::server
