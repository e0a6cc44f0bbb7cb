// server/connection.hpp: one client connection's state machine: bytes in -> requests -> handler -> responses out,
// in request order, batched into one send per turn. It talks to the kernel only through io::Backend, so the
// same code runs on io_uring, on epoll and under a fake backend in unit tests.
// Not here: accepting, slot allocation and the loop (worker.hpp); parsing rules (http/parser.hpp).
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/date.hpp"
#include "libuserd/http/message_reader.hpp"
#include "libuserd/http/parser.hpp"
#include "libuserd/http/response_writer.hpp"
#include "libuserd/io/backend.hpp"
#include "libuserd/io/socket.hpp"
#include "libuserd/metrics/metrics.hpp"
#include "libuserd/server/timers.hpp"
#include "libuserd/tls/tls.hpp"
#include "userd/responder.hpp"
#include "userd/router.hpp"

namespace userd::server {

class ReplyTarget;
struct LoopContext;

// What LoopContext::awaited holds per slot: the awaited request's token, or 0. The flags record what an answer
// has begun or finished, so that a second answer from any thread is refused before it is queued.
constexpr std::uint64_t awaited_token(std::uint16_t gen, std::uint32_t seq) noexcept {
  return 1ull << 63 | std::uint64_t(gen) << 32 | seq;
}
inline constexpr std::uint64_t kAwaitedStreaming = 1ull << 62;  // a Stream was begun: writes and end may follow
inline constexpr std::uint64_t kAwaitedAnswered = 1ull << 61;   // send() or end() is on its way: nothing more

class Connection {
 public:
  enum class State : std::uint8_t { Free, Open, Lingering, Closing };

  explicit Connection(LoopContext& ctx) noexcept : ctx_(&ctx) {}

  // Takes a freshly accepted socket and arms its receive. With tls, the connection speaks TLS (a handshake
  // first); false when its state could not be made (out of memory): the socket is the caller's to close.
  bool open(int fd, std::uint32_t slot, SSL_CTX* tls = nullptr) noexcept;

  // Completions routed here by the worker.
  void on_recv(char* data, std::size_t n) noexcept;  // data is writable and ours until this returns
  void on_recv_end(int res) noexcept;                // the multishot receive ended; res as its last completion
  void on_send(int res) noexcept;

  // A handler's answer (Responder::send). False when seq is not the request awaiting an answer.
  bool reply(std::uint32_t seq, const Response& r) noexcept;
  // A streamed answer (Responder::stream, Stream::write/end/on_writable).
  bool stream_begin(std::uint32_t seq, const Response& head) noexcept;
  bool stream_write(std::uint32_t seq, std::string_view data, bool end) noexcept;
  // Data its producer was already told was taken (off the loop, through the inbox): written even over the
  // high-water mark, which the worker's own bound on waiting data keeps in check.
  bool stream_write_taken(std::uint32_t seq, std::string_view data) noexcept;
  void stream_on_writable(std::uint32_t seq, std::function<void()> fn);
  // The worker calls this for each connection on ctx.writable_due, after a loop turn's completions.
  void run_writable() noexcept;
  // Off-loop stream data the connection cannot take yet waits in the worker: stream_backed_up() says when (a
  // stream past the high-water mark), and inbox_waits() asks for a writable_due turn once output drains below
  // the low-water mark (the worker clears it when it has delivered all).
  bool stream_backed_up() const noexcept;
  void inbox_waits(bool on) noexcept { inbox_waits_ = on; }
  bool inbox_waiting() const noexcept { return inbox_waits_; }
  bool streaming() const noexcept { return streaming_; }
  // Ends the connection now: pending output is dropped.
  void abort() noexcept;
  // A deadline passed (the worker's tick): idle and linger close; header and body answer 408 and close.
  void on_timeout(Timer t) noexcept;
  // The server is stopping: close now if idle, else finish the request in flight and close after it.
  void drain() noexcept;
  // Closes the socket without the backend, which is already gone (the worker's destructor).
  void teardown() noexcept;

  State state() const noexcept { return state_; }
  std::uint16_t gen() const noexcept { return sock_.gen; }
  std::uint32_t slot() const noexcept { return slot_; }
  bool awaiting_reply() const noexcept { return awaiting_; }
  std::string_view peer() const noexcept;  // "address:port" of the client
  TlsInfo tls_info() const noexcept;
  std::uint32_t seq() const noexcept { return seq_; }
  unsigned loop_index() const noexcept;
  // The slot may be reused once the socket is closed and no completion is pending for it.
  bool released() const noexcept { return state_ == State::Free; }
  // True once per release: the worker puts the slot on its free list then, however often it asks.
  bool take_release() noexcept {
    const bool due = release_due_;
    release_due_ = false;
    return due;
  }
  // On ctx.ready (an answer came from elsewhere): the worker calls run_ready() later in the turn.
  bool ready_due() const noexcept { return ready_due_; }
  void run_ready() noexcept;
  // A free slot gives back every buffer it kept for its next connection (the worker's tick, after a burst).
  void shed() noexcept;

  TimerLink timer_link;    // owned by ctx.timers
  TimerLink handler_link;  // owned by ctx.handler_timers

 private:
  struct Segment {
    const char* external;  // null: bytes [offset, offset + len) of the queue's buffer
    std::size_t offset;
    std::size_t len;
  };
  // Responses waiting to go out. Two of them: one frozen while the kernel sends it, one filling.
  struct OutQueue {
    core::ByteBuffer bytes;
    std::vector<Segment> segments;
    std::size_t total = 0;
    void clear() noexcept {
      bytes.clear();
      segments.clear();
      total = 0;
    }
    void note_bytes(std::size_t from);  // bytes appended since `from` become (part of) a segment
  };

  void on_plain(char* data, std::size_t n);
  void on_tls_recv(const char* data, std::size_t n) noexcept;
  void tls_failed() noexcept;
  void seal_next();
  bool sealing() const noexcept;
  std::size_t queued() const noexcept;
  std::size_t process(char* buf, std::size_t len);
  void keep_unfinished(char* req, std::size_t avail);
  void resume();
  void dispatch(const http::RequestHead& head, std::string_view body);
  bool decode(const http::RequestHead& head, Request& request);
  void write_response(const Response& r);
  bool write_head(const Response& r, http::BodyFraming framing);
  void refuse_response(std::string_view why);
  void write_error(http::HttpError e);
  void refuse(int status, std::string_view message);
  void write_error_status(int status, std::string_view message, std::span<const Header> extra = {});
  void write_continue();
  bool reading() const noexcept;
  bool socket_drained(bool first) noexcept;
  void flush();
  void submit_send() noexcept;
  void finish() noexcept;
  void continue_later();
  void end_handshake() noexcept;
  void maybe_release() noexcept;
  void set_awaiting(bool on) noexcept;
  void update_waits() noexcept;
  void update_timer() noexcept;
  void update_recv() noexcept;
  void arm_recv() noexcept;
  void release_buffers(std::size_t keep) noexcept;
  template <class F>
  void guarded(F&& step) noexcept;
  bool stream_append(std::uint32_t seq, std::string_view data, bool end) noexcept;
  void count(int status, std::size_t body_bytes);

  LoopContext* ctx_;
  io::Socket sock_;  // its generation drops completions meant for this slot's previous connection
  std::uint32_t slot_ = 0;
  State state_ = State::Free;
  bool recv_stopping_ = false;  // asked the backend to end the receive (backpressure); its end is due
  bool recv_paused_ = false;    // too much output queued or input unparsed: the socket is not read
  bool recv_probe_ = false;     // the next receive takes one buffer (see arm_recv)
  bool send_progress_ = false;  // a send completion moved bytes: the send deadline starts again
  std::int64_t outq_at_deadline_ = 0;  // SIOCOUTQ when the send deadline passed (see socket_drained)
  bool peer_eof_ = false;
  bool close_after_flush_ = false;  // the last response is queued: read no further requests
  bool awaiting_ = false;           // a handler holds a Responder for request seq_
  bool in_dispatch_ = false;        // inside process(): the loop there continues after a synchronous reply
  bool draining_ = false;           // the server is stopping: the request being read is the last one
  bool streaming_ = false;          // request seq_ is being answered by a Stream (awaiting_ stays true)
  bool writable_due_ = false;       // on ctx.writable_due
  bool inbox_waits_ = false;        // the worker holds stream data for this connection
  bool ready_due_ = false;          // on ctx.ready
  bool release_due_ = false;        // released, and the worker has not yet put the slot on its free list
  bool handshaking_ = false;        // a TLS handshake in progress: counted in ctx.handshakes
  bool shed_ = false;               // free, and holding no buffers
  int stream_status_ = 0;
  std::size_t stream_bytes_ = 0;
  std::function<void()> writable_;  // Stream::on_writable's callback, until it runs

  // The request being read, from its first byte in whichever buffer holds it.
  http::MessageReader<http::RequestHead> reader_;
  bool continue_sent_ = false;

  // What the awaited response needs to know once the request's bytes are gone.
  std::uint32_t seq_ = 0;
  bool req_keep_alive_ = true;
  bool req_head_only_ = false;
  std::uint8_t req_minor_ = 1;
  std::size_t req_route_ = 0;        // metrics label
  std::uint64_t req_started_us_ = 0;  // when it was dispatched
  core::ByteBuffer log_request_;      // "METHOD target" of the request being answered, when logging
  mutable char peer_[64] = {};        // "address:port": at open when logging, else on first peer()
  RouteParams params_;                // what the route of the request being dispatched captured
  core::ByteBuffer decode_;           // where escaped parameters and query values are decoded

  core::ByteBuffer in_;  // unfinished request bytes, and later requests while one awaits its answer
  OutQueue out_[2];
  unsigned filling_ = 0;
  std::vector<iovec> iov_;
  std::size_t iov_next_ = 0;    // first iovec not yet fully sent
  std::size_t send_left_ = 0;
  msghdr msg_{};

  // TLS: records in and out pass through tls_; tls_out_ holds the records of the send in flight. A flushed
  // queue is frozen as on plain connections and encrypted a batch at a time as the socket takes it: seal_seg_
  // and seal_off_ say where the next batch starts.
  tls::Session tls_;
  core::ByteBuffer tls_out_;
  std::size_t seal_seg_ = 0, seal_off_ = 0;
};

// What all connections of one loop thread share. Read-only for connections but for now_ms.
struct LoopContext {
  io::Backend* backend = nullptr;
  const Router* router = nullptr;
  ReplyTarget* replies = nullptr;  // handed to Responders: the worker
  http::DateCache date;
  http::Limits limits;
  std::uint64_t max_body = 1 << 20;
  std::uint64_t now_ms = 0;  // CLOCK_MONOTONIC, refreshed once per loop turn
  unsigned loop_index = 0;   // which of the server's loops: Request::loop_index()
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
  // Streams whose on_writable callback is due, and connections whose queued requests go on after an answer
  // from elsewhere: run by the worker after the turn's completions, never from inside another connection call.
  std::vector<std::pair<std::uint32_t, std::uint16_t>> writable_due;
  std::vector<std::pair<std::uint32_t, std::uint16_t>> ready;
  // TLS connections decrypt into tls_plain (parsed from there like a receive buffer) and gather a flush's
  // segments into tls_seal, so that a response becomes one record: one of each per loop thread.
  static constexpr std::size_t kTlsScratch = 16 * 1024;
  std::unique_ptr<char[]> tls_plain, tls_seal;
};

}  // namespace userd::server
