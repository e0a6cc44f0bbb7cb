// server/transport.hpp: the byte pipe under a protocol session: one socket; its receive, armed, paused for
// backpressure and probed after a pause; TLS records through memory BIOs; the output queues with one send in
// flight; the half-close, the lingering close and abort. It knows nothing of HTTP: what arrives goes to its owner
// as plaintext, what the owner queues goes out in order, and the owner is told when it has. The server's
// connections accept with it; the upstream pool connects with it (a client transport: its own completion tags,
// TLS as the client, no server metrics).
// Not here: which deadline applies (the owner's, with deadline() for the transport's own), protocols
// (http1_session.hpp, upstream/pool.cpp), slots and the loop (connection.hpp, worker.hpp).
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/io/socket.hpp"
#include "libuserd/io/tag.hpp"
#include "libuserd/server/timers.hpp"
#include "libuserd/tls/tls.hpp"

namespace userd::server {

struct LoopContext;

class Transport {
 public:
  enum class State : std::uint8_t { Free, Open, Lingering, Closing };

  // Backpressure. Past kOutHighWater of queued output a session parses nothing more and the socket is no
  // longer read, so the kernel's TCP window closes on a client that sends without reading; reading resumes
  // below kOutLowWater. 64 KiB holds a 16-deep pipeline of the 3.7 KB dataset answer.
  static constexpr std::size_t kOutHighWater = 64 * 1024;
  static constexpr std::size_t kOutLowWater = 16 * 1024;

  struct Segment {
    const char* external;  // null: bytes [offset, offset + len) of the queue's buffer
    std::size_t offset;
    std::size_t len;
  };
  // Output waiting to go out. Two of them: one frozen while the kernel sends it, one filling.
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
    void append(std::string_view s) {
      const std::size_t from = bytes.size();
      bytes.append(s);
      note_bytes(from);
    }
    // Sent from where it lives, which must outlive the send (a static body).
    void append_external(const char* p, std::size_t n) {
      segments.push_back({p, 0, n});
      total += n;
    }
  };

  // What the transport tells its owner, from inside its own completions.
  class Owner {
   public:
    // Plaintext in (from the receive buffer, or decrypted): writable, and ours until this returns. May throw
    // std::bad_alloc: the transport then ends the connection.
    virtual void on_bytes(char* data, std::size_t n) = 0;
    virtual void on_sent() noexcept = 0;        // everything flushed so far is out
    virtual void update_waits() noexcept = 0;   // the receive and the deadline are due a look
    virtual void update_timer() noexcept = 0;   // only the deadline (a send moved on)
    virtual void abort() noexcept = 0;          // the transport cannot go on
    virtual void on_released() noexcept = 0;    // the socket is closed: the slot is free again
    // The peer closed its side (or sent close_notify). A server answers what was asked first (flush() ends the
    // connection once nothing is held); a client has its answer now, or never.
    virtual void on_eof() noexcept {}
    // A PROXY protocol header named the client this connection relays (open() with proxy).
    virtual void on_proxy_source(const sockaddr_storage&) noexcept {}

   protected:
    ~Owner() = default;
  };

  // client: the upstream pool's (tags UpConnect/UpRecv/UpSend, whose slot says pool and connection).
  Transport(LoopContext& ctx, Owner& owner, bool client = false) noexcept
      : ctx_(&ctx), owner_(&owner), client_(client) {}
  ~Transport() { delete[] bulk_buf_; }
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Takes a freshly accepted socket and arms its receive. With tls, it speaks TLS (a handshake first); false
  // when its state could not be made (out of memory): the socket is the caller's to close. With proxy, its first
  // bytes must be a PROXY protocol header (before TLS): a bad, oversized or truncated one ends the connection.
  bool open(int fd, std::uint32_t slot, SSL_CTX* tls, bool proxy = false) noexcept;

  // A client transport: connect() takes a new socket and starts connecting it; the owner routes the connect's
  // completion to connected(), which is false when the socket is ending meanwhile (it is released then); once
  // connected, open_client() arms the receive and, with tls, sends the ClientHello (the owner queues nothing
  // until tls().established()). False when the TLS state could not be made.
  void connect(int fd, std::uint32_t slot, const sockaddr* to, socklen_t len) noexcept;
  bool connected() noexcept;
  bool open_client(SSL_CTX* tls, const char* host, SSL_SESSION* resume) noexcept;

  // Completions routed here by the worker.
  void on_recv(char* data, std::size_t n) noexcept;
  void on_recv_end(int res) noexcept;
  void on_send(int res) noexcept;

  // Output: appended to out(), sent by flush() (one send in flight; what is queued meanwhile goes next).
  OutQueue& out() noexcept { return out_[filling_]; }
  std::size_t queued() const noexcept;  // plaintext queued, and on TLS the records waiting or in flight
  bool sending() const noexcept { return sock_.send_inflight; }
  void flush();
  // The last response is queued: once it is out the connection closes (TLS close_notify, half-close, linger),
  // and what the peer still sends is read and dropped.
  void close_after_flush() noexcept { close_after_flush_ = true; }
  bool closing_after_flush() const noexcept { return close_after_flush_; }
  // The session owes an answer: an empty queue is not the end of the connection, even after the peer's EOF.
  void hold(bool on) noexcept { held_ = on; }

  // Input backpressure: the socket is read unless too much output is queued or the session says its input is
  // stuck (it asks recv_paused() to pick its own low or high water).
  void update_recv(bool session_stuck) noexcept;
  bool recv_paused() const noexcept { return recv_paused_; }
  // Bulk: while a large body streams in, each receive lands up to kBulkBytes in the transport's own buffer
  // (Backend::recv_into) instead of 2 KiB ring buffers, a completion (and a session call) per 2 KiB being what
  // dominates the cost of a large body. The buffer is made on first use and kept until the connection ends.
  // Off again, the next receive is the ring's multishot one.
  static constexpr std::size_t kBulkBytes = 64 * 1024;
  void set_bulk(bool on) noexcept {
    if (bulk_ != on) switch_bulk(on);
  }

  // The deadline the transport itself needs (linger, send, a stalled handshake): true when it has one to say,
  // which then applies; false when the session's deadline does.
  bool deadline(Timer& want) const noexcept;
  bool take_send_progress() noexcept {  // a send completion moved bytes since the last look
    const bool p = send_progress_;
    send_progress_ = false;
    return p;
  }
  // At the send deadline (first): remembers what the socket still holds and says true, so that a check looks
  // again shortly; at the check: true when the socket's queue has shrunk since (the client reads).
  bool socket_drained(bool first) noexcept;

  // A bad handshake or record, or a handshake past its deadline.
  void tls_failed() noexcept;
  // Ends the socket now, pending output dropped: false when it was already ending. The owner's abort() cleans
  // up its own state first and then calls this.
  bool close_now() noexcept;
  // close_now() with a TCP reset instead of a FIN (a TCP disconnect: connect to AF_UNSPEC, before the close's
  // shutdown could half-close): for a connection cut mid-body, whose peer must not take what it got for the
  // whole, nor keep sending into a window that will never open. What is armed completes as for any shutdown.
  bool reset_now() noexcept;
  // Closes the socket without the backend, which is already gone (the worker's destructor).
  void teardown() noexcept;
  // Gives back buffers grown past keep.
  void release_buffers(std::size_t keep) noexcept;

  // Allocation fails only when the process is out of memory: that costs this connection, not the process.
  template <class F>
  void guarded(F&& step) noexcept;

  State state() const noexcept { return state_; }
  bool is_open() const noexcept { return state_ == State::Open; }
  bool peer_eof() const noexcept { return peer_eof_; }
  bool tls_broken() const noexcept { return broken_; }  // a bad handshake or record ended it
  bool proxy_pending() const noexcept { return proxy_pending_; }  // the PROXY header has not arrived yet
  // It never will: a deadline passed, or the peer closed first. Counted, and the connection ends unanswered.
  void proxy_failed() noexcept;
  int fd() const noexcept { return sock_.fd; }
  std::uint16_t gen() const noexcept { return sock_.gen; }
  std::uint32_t slot() const noexcept { return slot_; }
  const tls::Session& tls() const noexcept { return tls_; }
  // True once per release: the worker puts the slot on its free list then, however often it asks.
  bool take_release() noexcept {
    const bool due = release_due_;
    release_due_ = false;
    return due;
  }

 private:
  void on_tls_recv(const char* data, std::size_t n) noexcept;
  void on_proxy_recv(char* data, std::size_t n) noexcept;
  void pass_on(char* data, std::size_t n) noexcept;
  void seal_next();
  bool sealing() const noexcept;
  void submit_send() noexcept;
  void arm_recv() noexcept;
  void switch_bulk(bool on) noexcept;
  void finish() noexcept;
  void end_handshake() noexcept;
  void maybe_release() noexcept;
  void alloc_failed() noexcept;
  void begin(int fd, std::uint32_t slot) noexcept;

  io::Op recv_op() const noexcept { return client_ ? io::Op::UpRecv : io::Op::Recv; }
  io::Op send_op() const noexcept { return client_ ? io::Op::UpSend : io::Op::Send; }

  LoopContext* ctx_;
  Owner* owner_;
  bool client_;
  io::Socket sock_;  // its generation drops completions meant for this slot's previous connection
  std::uint32_t slot_ = 0;
  State state_ = State::Free;
  bool recv_stopping_ = false;  // asked the backend to end the receive (backpressure); its end is due
  bool recv_paused_ = false;    // too much output queued or input unparsed: the socket is not read
  bool recv_probe_ = false;     // the next receive takes one buffer (see arm_recv)
  bool bulk_ = false;           // receives go to bulk_buf_ (set_bulk)
  char* bulk_buf_ = nullptr;
  bool send_progress_ = false;  // a send completion moved bytes: the send deadline starts again
  bool peer_eof_ = false;
  bool broken_ = false;  // tls_failed() came
  bool close_after_flush_ = false;
  bool held_ = false;
  bool release_due_ = false;  // released, and the worker has not yet put the slot on its free list
  bool handshaking_ = false;  // a TLS handshake in progress: counted in ctx.handshakes
  bool proxy_pending_ = false;  // a PROXY header is due first
  // A PROXY header split across receives (one byte at a time, say) is gathered here, bounded by kMaxProxyHeader;
  // released once it is parsed.
  std::string proxy_buf_;
  std::int64_t outq_at_deadline_ = 0;  // SIOCOUTQ when the send deadline passed (see socket_drained)

  OutQueue out_[2];
  unsigned filling_ = 0;
  std::vector<iovec> iov_;
  std::size_t iov_next_ = 0;  // first iovec not yet fully sent
  std::size_t send_left_ = 0;
  msghdr msg_{};

  // TLS: records in and out pass through tls_; tls_out_ holds the records of the send in flight. A flushed
  // queue is frozen as on plain connections and encrypted a batch at a time as the socket takes it: seal_seg_
  // and seal_off_ say where the next batch starts.
  tls::Session tls_;
  core::ByteBuffer tls_out_;
  std::size_t seal_seg_ = 0, seal_off_ = 0;
};

template <class F>
void Transport::guarded(F&& step) noexcept {
  try {
    step();
  } catch (const std::bad_alloc&) {
    alloc_failed();
  }
}

}  // namespace userd::server
