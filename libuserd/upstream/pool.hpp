// upstream/pool.hpp: one loop thread's HTTP/1.1 client for one upstream: a bounded set of keep-alive
// connections on the thread's own Backend, and a bounded queue for requests that find them all busy. Each
// connection is a client Transport (server/transport.hpp: the socket, TLS, output queues and short sends the
// server's connections use too); the pool is its owner and speaks HTTP/1.1 over it.
// Every connection keeps a receive armed, so an idle one the upstream closed is noticed at once. A request
// whose reused connection dies before any response byte is retried once on a fresh connection (GET is
// idempotent). A connection is reused only once both its response and its send have completed. Nothing here
// allocates per request once the connections' buffers and the queue's path slots have grown.
// Bodies may stream both ways (UpstreamRequest::body_from, stream_response): a request body goes out as the
// client's reader delivers it, paused past the transport's high-water mark; a response body goes to its taker
// (UpstreamBody) a receive at a time, and while the taker cannot take more the connection is not read.
// Not here: what the caller does with the answer (the handler's UpstreamDone).
#pragma once

#include <netdb.h>

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/message_reader.hpp"
#include "libuserd/io/backend.hpp"
#include "libuserd/io/tag.hpp"
#include "libuserd/metrics/metrics.hpp"
#include "libuserd/server/transport.hpp"
#include "libuserd/tls/tls.hpp"
#include "userd/upstream.hpp"

namespace userd::server {
struct LoopContext;
}

namespace userd::upstream {

// An upstream whose address is resolved (Server::start does it once).
struct Target {
  UpstreamConfig cfg;
  struct Address {
    sockaddr_storage addr{};
    socklen_t len = 0;
  };
  std::vector<Address> addrs;  // every address the name resolved to, in resolver order
  std::string host_header;     // "host:port"
  tls::Context tls;            // a client context when cfg.tls (made once, in Server::start)
};

// The addresses of a resolver's answer, in its order, each once: what Server::start and a later re-resolution
// both make a Target's list from.
std::vector<Target::Address> unique_addresses(const addrinfo* list);

// Written by the pool's thread, read by a metrics scrape from any.
struct PoolStats {
  metrics::Counter ok;
  std::array<metrics::Counter, 8> errors;  // by UpstreamError
  metrics::Counter retries;
  metrics::Counter connects;
  metrics::Counter resolves;  // times the name was resolved again after a failed connect
  metrics::Counter open;  // connections not Free
};

class Pool {
 public:
  // index: this pool's place in the worker's list, carried in completion tags. ctx: the loop's (its backend,
  // clock and TLS scratch buffers).
  Pool(const Target& target, std::uint16_t index, server::LoopContext& ctx);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // False when the request cannot even be queued (the queue holds cfg.max_queue): counted as Overloaded, and
  // the caller answers the client itself.
  FetchRefused fetch(const UpstreamRequest& request, Responder res, const UpstreamCallback& done) noexcept;
  void on_completion(const io::Completion& c) noexcept;
  // Expires exchanges and queued requests past their deadline.
  void tick() noexcept;
  // The backend is gone (the worker is being destroyed): close sockets directly.
  void teardown() noexcept;

  // An UpstreamBody's calls, by the connection and exchange it names (a stale one does nothing).
  bool body_take(std::uint32_t i, std::uint32_t seq, const Stream* pipe,
                 std::function<void(std::string_view, bool)>* data);
  void body_on_error(std::uint32_t i, std::uint32_t seq, std::function<void(UpstreamError)>& fn);
  void body_pause(std::uint32_t i, std::uint32_t seq, bool on) noexcept;
  void body_abandon(std::uint32_t i, std::uint32_t seq) noexcept;
  bool body_alive(std::uint32_t i, std::uint32_t seq) const noexcept;

  const PoolStats& stats() const noexcept { return stats_; }
  std::size_t queued() const noexcept { return count_; }

 private:
  struct Job {  // trivially copyable: the request's bytes live beside it (queue_bytes_) or in the connection
    Responder res;
    UpstreamCallback done;  // empty: no job
    std::uint64_t deadline = 0;
    bool retried = false;
    bool idempotent = true;      // RFC 9110 9.2.2: may be sent again after a reused connection died
    bool head = false;           // the answer has no body
    bool stream = false;         // the response streams (UpstreamRequest::stream_response)
    std::uint8_t refusals = 0;   // connects refused for it: each tries another address
    BodyReader from{};           // the request body streams from the client (UpstreamRequest::body_from)
    bool from_chunked = false;   // its length is unknown: it goes out chunked
    std::uint64_t from_length = 0;  // else its length, held to
  };
  // Connecting -> Busy -> (response complete) Settling until the send completes -> Idle -> Busy ...
  // A streamed response: Busy -> (head handed out) Streaming -> (body ended) Settling or Idle.
  enum class State : std::uint8_t { Free, Connecting, Busy, Streaming, Settling, Idle, Closing };
  // A streamed response body as it is handed to its taker, straight out of the connection's input: the bytes
  // of `in` are the body's undecoded rest, except for `pending` decoded bytes at its start that a pipe could not
  // write yet (the undecoded rest then starts at raw_at).
  struct Body {
    enum class Framing : std::uint8_t { Length, Chunked, Close };
    Framing framing = Framing::Length;
    std::uint64_t left = 0;  // Length: bytes still to come
    http::ChunkedDecoder chunked;
    std::size_t pending = 0, raw_at = 0;
    bool taken = false, paused = false, delivering = false, eof = false, keep_alive = false;
    bool pending_last = false;  // the pending piece ends the body
    bool pump_due = false;      // what arrived this turn goes to the taker once, later in the turn
    Stream pipe{};
    bool piping = false;
    std::function<void(std::string_view, bool)> data;
    std::function<void(UpstreamError)> error;
    void reset() noexcept {
      framing = Framing::Length;
      left = pending = raw_at = 0;
      taken = paused = delivering = eof = keep_alive = piping = pending_last = pump_due = false;
      pipe = Stream();
      data = nullptr;
      error = nullptr;
    }
    // What the receive waits for: bytes the taker does not take now stop it.
    bool stuck() const noexcept { return pending > 0 || paused || delivering; }
  };
  // A request body streaming from the client's reader.
  struct Upload {
    bool on = false, paused = false, done = false;
    std::uint64_t sent = 0;  // body bytes queued so far
  };
  struct Conn final : server::Transport::Owner {
    Conn(Pool& p, std::uint32_t index, server::LoopContext& ctx) noexcept : pool(&p), i(index), t(ctx, *this, true) {}
    Pool* pool;
    std::uint32_t i;
    server::Transport t;
    State state = State::Free;
    std::uint32_t seq = 0;   // the exchange: a handle or a reader's callback from an earlier one does nothing
    Body body;
    Upload up;
    bool reused = false;     // finished an exchange before: its death on first use earns a retry
    bool got_bytes = false;  // this exchange has received something
    Job job;
    std::size_t addr = 0;  // which of addrs_ it connected to
    core::ByteBuffer out;  // the request's bytes, kept for a retry until it is answered
    // out is queued on the transport (HTTPS: once the handshake is done): it may have reached the upstream.
    bool request_out = false;
    core::ByteBuffer in;  // the response; capacity always leaves kUpstreamBodyPadding after the bytes
    http::MessageReader<http::ParsedResponse> reader;

    // The transport's calls (from inside its completions), each to the pool.
    void on_bytes(char* data, std::size_t n) override { pool->on_bytes(i, data, n); }
    void on_sent() noexcept override { pool->on_sent(i); }
    void update_waits() noexcept override { pool->update_waits(i); }
    void update_timer() noexcept override {}  // the pool's deadlines are its jobs' (tick)
    void abort() noexcept override { pool->on_end(i); }
    void on_eof() noexcept override { pool->on_end(i); }
    void on_released() noexcept override { pool->on_released(i); }
  };

  void on_conn_completion(std::uint32_t i, const io::Completion& c);
  void start(std::uint32_t i, const Job& job, std::string_view request);
  void open(std::uint32_t i, const Job& job, std::string_view request);
  void dispatch(const Job& job, std::string_view request);
  void pump();
  bool enqueue(const Job& job, std::string_view request, bool front);
  std::size_t pick_address() noexcept;
  void hand(std::uint32_t i);
  void on_bytes(std::uint32_t i, const char* data, std::size_t n);
  void on_sent(std::uint32_t i) noexcept;
  void update_waits(std::uint32_t i) noexcept;
  void on_end(std::uint32_t i) noexcept;
  void on_released(std::uint32_t i) noexcept;
  void parse(std::uint32_t i);
  void complete(std::uint32_t i, std::size_t total);
  void make_idle(std::uint32_t i);
  void fail(std::uint32_t i, UpstreamError e);
  void deliver(const Job& job, const UpstreamReply& r) noexcept;
  void retry_or_fail(std::uint32_t i, UpstreamError e);
  void close(std::uint32_t i) noexcept;
  void begin_body(std::uint32_t i, std::size_t head_len, bool whole);
  void pump_body(std::uint32_t i);
  void repump(std::uint32_t i, std::uint32_t seq) noexcept;
  bool offer(std::uint32_t i, std::string_view piece, bool last);
  void end_body(std::uint32_t i);
  void body_failed(std::uint32_t i, UpstreamError e) noexcept;
  void start_upload(std::uint32_t i);
  void upload(std::uint32_t i, std::uint32_t seq, std::string_view chunk, bool last) noexcept;
  void upload_failed(std::uint32_t i, std::uint32_t seq) noexcept;
  bool stuck(const Conn& c) const noexcept { return c.state == State::Streaming && c.body.stuck(); }

  const Target& target_;
  std::uint16_t index_;
  server::LoopContext& ctx_;
  const std::uint64_t& now_ms_;
  std::vector<std::unique_ptr<Conn>> conns_;  // never moved: each transport holds its owner
  std::vector<std::uint32_t> free_, idle_;
  // Requests waiting for a connection: a ring of cfg.max_queue jobs (head_, count_), each with its request's
  // bytes in the string of the same index, whose capacity is kept: no growth for as long as overload lasts.
  std::vector<Job> queue_;
  std::vector<std::string> queue_bytes_;
  std::size_t head_ = 0, count_ = 0;
  std::size_t queued_bytes_ = 0;  // of the requests in the queue: bounded (pool.cpp, kQueueBytes)
  std::string pumping_bytes_;  // the request pump() is handing out: never a view into the queue
  std::string request_;        // fetch() writes the request here first (capacity kept)
  std::vector<Target::Address> addrs_;  // target_.addrs at first; replaced when the name is resolved again
  std::vector<std::uint64_t> refused_until_;  // per address: skipped until then after a refused connect
  struct Resolve;
  Resolve* resolving_ = nullptr;  // a getaddrinfo_a in progress
  std::uint64_t next_resolve_ms_ = 0;
  bool named_ = false;  // cfg.host is a name, not a numeric address: worth asking the resolver again
  void maybe_resolve() noexcept;
  void take_resolve() noexcept;
  void end_resolve() noexcept;
  std::size_t next_addr_ = 0;
  bool pumping_ = false;      // pump() re-entered from a callback or a release returns at once
  SSL_SESSION* session_ = nullptr;  // HTTPS: the latest resumable session, offered by new connections
  PoolStats stats_;
};

}  // namespace userd::upstream
