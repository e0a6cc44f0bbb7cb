// server/http2_session.hpp: HTTP/2 (RFC 9113) as a session on a transport, through libnghttp2's server session
// driven on the loop thread: bytes in through nghttp2_session_mem_recv, frames out through mem_send into the
// transport's bounded output queue. Each request stream is dispatched like an HTTP/1.1 request (dispatch.hpp)
// once its headers and body are in, after mem_recv returns, never from inside nghttp2's callbacks.
// Not here: recognising the preface or ALPN (connection.cpp), the socket and TLS (transport.hpp).
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/parser.hpp"
#include "libuserd/server/compression.hpp"
#include "libuserd/server/dispatch.hpp"
#include "libuserd/server/session.hpp"

namespace userd::server {

class Connection;
class Transport;
struct LoopContext;

// nghttp2's allocator for one loop thread: blocks in power-of-two size classes (32 B to 16 KiB) kept on free
// lists, so that a steady state of requests (streams, outbound items, header copies) reuses blocks instead of
// calling malloc. Each block carries its class in a 16-byte header, since nghttp2's free gives no size. What a
// class keeps is bounded (kKeepBytes); larger blocks and the rest go back to malloc. Loop thread only.
class H2Pool {
 public:
  H2Pool() noexcept;
  ~H2Pool();
  H2Pool(const H2Pool&) = delete;
  H2Pool& operator=(const H2Pool&) = delete;
  nghttp2_mem* mem() noexcept { return &mem_; }
  void* alloc(std::size_t n) noexcept;
  void free(void* p) noexcept;
  void* realloc(void* p, std::size_t n) noexcept;

 private:
  static constexpr unsigned kClasses = 10, kMinShift = 5;  // 32 << 9 = 16 KiB
  static constexpr std::size_t kKeepBytes = 256 * 1024;     // per class
  struct Free {
    Free* next;
  };
  Free* free_[kClasses] = {};
  std::uint32_t count_[kClasses] = {};
  nghttp2_mem mem_;
};

// What every HTTP/2 session of a loop shares: nghttp2's callbacks, options and allocator, made once per thread.
// Declared before the connections, it outlives every session that allocates from it.
struct H2Shared {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_option* options = nullptr;
  H2Pool pool;
  // The request being dispatched, made from its stream's fields: a handler's views into it are valid only while
  // it runs, and dispatch never nests, so one per loop serves every stream (a stream keeps only its fields).
  http::RequestHead head;
  RouteParams params;
  H2Shared();
  ~H2Shared();
  H2Shared(const H2Shared&) = delete;
  H2Shared& operator=(const H2Shared&) = delete;
};

class Http2Session final : public Session {
 public:
  Http2Session(LoopContext& ctx, Connection& conn, Transport& t) noexcept : ctx_(&ctx), conn_(&conn), t_(&t) {}
  ~Http2Session();

  // A connection becomes HTTP/2: our SETTINGS are queued. False when nghttp2 could not be set up (memory).
  bool start() noexcept;

  void on_bytes(char* data, std::size_t n) override;
  void on_sent() noexcept override;
  Timer deadline() const noexcept override;
  bool input_stuck(bool paused) const noexcept override;
  void on_timeout(Timer t) noexcept override;
  bool on_send_timeout() noexcept override;
  void drain() noexcept override;
  void on_abort() noexcept override;
  void on_released() noexcept override;
  void release_buffers(std::size_t) noexcept override {}

  bool awaiting(std::uint32_t id) const noexcept override;
  bool streaming(std::uint32_t id) const noexcept override;
  bool reply(std::uint32_t id, const Response& r) noexcept override;
  bool stream_begin(std::uint32_t id, const Response& head) noexcept override;
  bool stream_write(std::uint32_t id, std::string_view data, bool end,
                    std::span<const Header> trailers) noexcept override;
  bool stream_write_taken(std::uint32_t id, std::string_view data) noexcept override;
  void stream_on_writable(std::uint32_t id, std::function<void()> fn) override;
  bool stream_abort(std::uint32_t id) noexcept override;
  bool stream_backed_up(std::uint32_t id) const noexcept override;
  bool stream_waits(std::uint32_t id) const noexcept override;
  void stream_stalled(std::uint32_t id, int delta) noexcept override;
  void run_writable() noexcept override;
  // Nothing queues behind an HTTP/2 answer: ctx.ready carries only streamed bodies whose consumer asked again.
  void run_ready() noexcept override;
  bool ready_due() const noexcept override { return ready_due_; }
  bool body(std::uint32_t id, BodyCall& c) override;
  void inbox_waits(bool on) noexcept override { inbox_waits_ = on; }
  bool inbox_waiting() const noexcept override { return inbox_waits_; }

  // One request stream, from its HEADERS to its close. Kept in a per-session free list: reused, not freed.
  struct Stream {
    std::int32_t id = 0;
    std::uint32_t seq = 0;       // what its Responder holds
    std::uint32_t xslot = 0;     // its exchange (ctx.exchanges), while a handler may hold its Responder
    bool ready = false;          // headers (and body) are in: due for dispatch
    bool awaiting = false;       // a handler holds its Responder
    bool answered = false;       // a response was submitted
    bool head_only = false;
    bool refused = false;        // over a bound while being read: answered with an error, not dispatched
    int refuse_status = 0;
    std::uint64_t deadline_ms = 0;  // the handler's (ctx.now_ms based)
    std::uint64_t body_deadline_ms = 0;  // its request must be in by then (the body timeout from its HEADERS)
    std::uint64_t framed_ms = 0;  // its answer was submitted, or DATA of it framed, last at (see stuck())
    std::size_t head_bytes = 0;  // RFC 9113 6.5.2's size of the header list so far
    core::ByteBuffer fields;     // names and values, back to back; views are made once the head is complete
    struct Field {
      std::uint32_t name_off, name_len, value_off, value_len;
    };
    std::vector<Field> field_offsets;
    std::uint32_t method_off = 0, method_len = 0, path_off = 0, path_len = 0, authority_off = 0, authority_len = 0;
    // Its body: buffered whole in body (up to body_limit), or, on a streamed route, held in body only until its
    // consumer takes it; the client's window is given back for bytes the consumer took, so body never holds more
    // than the stream's window.
    core::ByteBuffer body;
    bool head_due = false;    // its head is in and its body to come: routed, and middleware run, after mem_recv
    bool dispatched = false;  // its handler ran, or its middleware answered
    bool admitted = false;    // a buffered route's middleware passed at the head: its handler runs at the end
    bool end_seen = false;    // END_STREAM received: the client sends nothing more
    bool streamed = false;    // its route streams the body (known once the head is in)
    bool body_due = false;    // on bodies_: data, its end or an error waits for the consumer
    bool expect = false;      // expect: 100-continue, not answered yet
    bool delivering = false;  // body is being handed to its consumer
    BodyError body_error = BodyError::ClientGone;
    bool body_failed = false;
    std::uint64_t body_limit = 0, received = 0;
    const Handler* handler = nullptr;  // admitted's
    BodyConsumer consumer;
    // The response: its header names lowercased and values in resp_fields, its body (copied unless static).
    core::ByteBuffer resp_fields;
    core::ByteBuffer resp_body_copy;
    const char* resp_body = nullptr;
    std::size_t resp_len = 0, resp_off = 0;
    bool resp_static = false;
    // A Stream's body: written data not yet framed (bounded: kStreamBuffer), then its end.
    bool streaming = false, stream_end = false;
    int stream_status = 0;
    std::size_t stream_bytes = 0;
    core::ByteBuffer sbuf;
    std::size_t soff = 0;
    std::uint32_t stalled = 0;  // its off-loop writes the worker holds back (stream_stalled)
    http::Coding coding = http::Coding::Identity;  // what its Accept-Encoding chose (compression on)
    StreamEncoder senc;                            // a compressed Stream's encoder
    core::ByteBuffer trailer_fields;  // the end's trailers (names lowercased), sent once the body is framed
    std::vector<nghttp2_nv> trailer_nva;
    std::function<void()> writable;
    Exchange ex;
    core::ByteBuffer decode;
  };

 private:
  friend struct H2Callbacks;
  Stream* find(std::uint32_t seq) const noexcept;
  Stream* take_stream() noexcept;
  bool mark_ready(Stream& st) noexcept;
  static bool stuck(const Stream& st) noexcept;
  void reset_stuck() noexcept;
  void give_back(Stream* s) noexcept;
  void dispatch_ready();
  void dispatch(Stream& s, bool at_head = false);
  void classify(Stream& st) noexcept;
  void mark_body(Stream& st) noexcept;
  void deliver_bodies();
  void handled(Stream& st, std::uint32_t seq, bool ok);
  void send_continue(Stream& st);
  void let_go(Stream& st) noexcept;
  bool make_head(Stream& s);
  // The body, coded or not, as LoopCompression::plan said (identity without compression).
  void submit(Stream& s, int status, std::string_view content_type, std::span<const Header> headers,
              const Coded& body);
  void submit_error(Stream& s, int status, std::string_view message, std::span<const Header> extra = {});
  void pump() noexcept;
  void after_answer() noexcept;  // out now, unless inside our own recv (which pumps when it returns)
  void writable_soon() noexcept;
  bool stream_append(std::uint32_t id, std::string_view data, bool end, bool bounded,
                     std::span<const Header> trailers) noexcept;
  void submit_head(Stream& st, int status, std::string_view content_type, std::span<const Header> headers,
                   const std::string_view* length_of, const nghttp2_data_provider* prd,
                   http::Coding coding = http::Coding::Identity, bool vary = false);  // mem_send into the transport until its queue is full or nghttp2 has nothing
  void publish() noexcept;
  void stop_awaiting(Stream& st) noexcept;
  void close_exchange(Stream& st) noexcept;
  bool spend(std::uint32_t& tokens) noexcept;
  void refill() noexcept;
  static constexpr std::uint32_t kResetBurst = 200, kResetPerSecond = 20;
  static constexpr std::uint32_t kFrameBurst = 5000, kFramePerSecond = 1000;
  std::uint32_t reset_tokens_ = 0, frame_tokens_ = 0;
  std::uint64_t budget_ms_ = 0;
  void failed() noexcept;  // nghttp2 said fatal: the connection ends

  LoopContext* ctx_;
  Connection* conn_;
  Transport* t_;
  nghttp2_session* s_ = nullptr;
  std::vector<Stream*> live_;                   // open streams (at most max_streams)
  std::vector<std::unique_ptr<Stream>> spare_;  // closed ones, for reuse
  std::vector<std::int32_t> ready_;             // streams whose request is complete (or head in), in arrival order
  std::vector<std::int32_t> bodies_;            // streams whose consumer has something due (mark_body)
  bool ready_due_ = false;                      // on ctx.ready: a consumer asked for more
  Stream* reading_ = nullptr;                   // the stream of the header block being read
  Stream* current_ = nullptr;                   // the stream last dispatched (find's first guess)
  std::uint32_t next_seq_ = 0;
  std::int32_t max_opened_ = 0;  // the highest stream id a request opened
  bool in_recv_ = false;    // inside mem_recv: callbacks only mark streams
  bool in_dispatch_ = false;  // a handler runs: its answers go out once dispatch is done
  bool writable_due_ = false;  // on ctx.writable_due
  bool inbox_waits_ = false;   // the worker holds off-loop stream data for this connection
  bool draining_ = false;
  bool settings_unacked_ = false;  // our SETTINGS wait for the client's ACK (within the header timeout)
  std::uint64_t settings_deadline_ms_ = 0;
  std::uint64_t stuck_checked_ms_ = 0;  // reset_stuck() last ran
};

}  // namespace userd::server
