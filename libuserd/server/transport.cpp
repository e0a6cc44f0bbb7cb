// server/transport.cpp: the socket and TLS under a session. Plain input goes to the owner straight from the
// receive buffer; TLS input is decrypted into the loop's scratch buffer first. Output is sent from two queues,
// one frozen while the kernel sends it, so that a session appends while a send is in flight.
#include "libuserd/server/transport.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "libuserd/io/tag.hpp"
#include "libuserd/server/connection.hpp"
#include "libuserd/server/proxy_header.hpp"

namespace userd::server {
namespace {
// What a TLS session holds in OpenSSL (measured: 51-61 KiB during the handshake, about 40 KiB after), counted as
// freed when its connection closes so that a burst of TLS clients leads to a heap trim like any other.
constexpr std::size_t kTlsSessionBytes = 48 * 1024;
constexpr std::size_t kMaxIov = IOV_MAX;
// TLS output is encrypted this far ahead of the socket: three full records. More would hold more ciphertext per
// slow client (the bound the plaintext path keeps); less would take more loop turns per large answer.
constexpr std::size_t kTlsAhead = 48 * 1024;
}  // namespace

void Transport::OutQueue::note_bytes(std::size_t from) {
  std::size_t len = bytes.size() - from;
  if (len == 0) return;
  if (!segments.empty() && !segments.back().external && segments.back().offset + segments.back().len == from)
    segments.back().len += len;
  else
    segments.push_back({nullptr, from, len});
  total += len;
}

void Transport::alloc_failed() noexcept {
  if (ctx_->metrics) ctx_->metrics->alloc_failures.add();
  owner_->abort();
}

// Handshakes in progress are counted per loop (LoopContext::handshakes): each holds OpenSSL's state (50-60 KiB)
// before the client has proven anything, so the worker refuses new TLS connections past its bound.
void Transport::end_handshake() noexcept {
  if (!handshaking_) return;
  handshaking_ = false;
  --ctx_->handshakes;
}

bool Transport::open(int fd, std::uint32_t slot, SSL_CTX* tls, bool proxy) noexcept {
  if (tls && !tls_.start(tls)) return false;  // a TLS connection is one whose session is active
  if (tls) {
    handshaking_ = true;
    ++ctx_->handshakes;
  }
  begin(fd, slot);
  proxy_pending_ = proxy;
  recv_probe_ = true;  // a client that opens with a flood is met like one resuming after a pause
  arm_recv();
  return true;
}

// A new socket in the slot: open, nothing in flight, nothing seen yet.
void Transport::begin(int fd, std::uint32_t slot) noexcept {
  sock_.fd = fd;
  slot_ = slot;
  state_ = State::Open;
  peer_eof_ = close_after_flush_ = held_ = release_due_ = broken_ = proxy_pending_ = false;
  sock_.send_inflight = send_progress_ = false;
  sock_.recv_armed = recv_stopping_ = recv_paused_ = false;
  std::string().swap(proxy_buf_);
}

void Transport::connect(int fd, std::uint32_t slot, const sockaddr* to, socklen_t len) noexcept {
  begin(fd, slot);  // open, so that close_now() ends it while it connects
  sock_.connect_inflight = true;
  ctx_->backend->connect(fd, to, len, io::tag(io::Op::UpConnect, slot_, sock_.gen));
}

bool Transport::connected() noexcept {
  sock_.connect_inflight = false;
  if (state_ == State::Open) return true;
  maybe_release();
  return false;
}

bool Transport::open_client(SSL_CTX* tls, const char* host, SSL_SESSION* resume) noexcept {
  if (tls && !tls_.start(tls, host, resume)) return false;
  recv_probe_ = false;  // the upstream answers what we ask: no flood to meet
  arm_recv();
  if (tls) {
    tls_.handshake();  // the ClientHello
    guarded([&] { flush(); });
  }
  return true;
}

std::size_t Transport::queued() const noexcept {
  std::size_t n = out_[0].total + out_[1].total;
  if (tls_.active()) n += tls_.pending() + (sock_.send_inflight ? send_left_ : 0);
  return n;
}

// After a pause the first receive takes one buffer only: a client with megabytes queued in the kernel would
// otherwise land a multishot burst (32 buffers and more) in the session's buffer before the next pause could
// stop it. If that buffer is taken without pausing again, the multishot receive comes back.
void Transport::arm_recv() noexcept {
  if (bulk_ && (bulk_buf_ || (bulk_buf_ = new (std::nothrow) char[kBulkBytes]))) {
    ctx_->backend->recv_into(sock_.fd, io::tag(recv_op(), slot_, sock_.gen), bulk_buf_, kBulkBytes);
    recv_probe_ = false;
    sock_.recv_armed = true;
    return;
  }
  ctx_->backend->recv(sock_.fd, io::tag(recv_op(), slot_, sock_.gen), !recv_probe_);
  recv_probe_ = false;
  sock_.recv_armed = true;
}

// Ends the receive while too much is queued, arms it again below the low-water marks. A lingering connection,
// or one whose last response is queued, reads on and drops.
void Transport::update_recv(bool session_stuck) noexcept {
  if (peer_eof_ || (state_ != State::Open && state_ != State::Lingering)) return;
  bool want = true;
  if (state_ == State::Open && !close_after_flush_) {
    const std::size_t out = queued();
    recv_paused_ = recv_paused_ ? out > kOutLowWater || session_stuck : out > kOutHighWater || session_stuck;
    want = !recv_paused_;
  } else {
    recv_paused_ = false;
  }
  if (want && !sock_.recv_armed) {
    arm_recv();
  } else if (!want && sock_.recv_armed && !recv_stopping_) {
    recv_stopping_ = true;
    recv_probe_ = true;
    if (ctx_->metrics && !client_) ctx_->metrics->recv_pauses.add();
    ctx_->backend->cancel(sock_.fd, io::tag(recv_op(), slot_, sock_.gen));
  }
}

bool Transport::deadline(Timer& want) const noexcept {
  if (state_ == State::Lingering) want = Timer::Linger;
  else if (state_ != State::Open) want = Timer::None;
  else if (sock_.send_inflight) want = Timer::Send;
  else if (queued()) want = Timer::None;
  else if (proxy_pending_) want = Timer::Header;  // a PROXY header within the head's deadline
  else if (tls_.active() && !tls_.established()) want = Timer::Header;  // a stalled handshake, like a stalled head
  else return false;
  return true;
}

bool Transport::socket_drained(bool first) noexcept {
  int outq = 0;
  if (::ioctl(sock_.fd, SIOCOUTQ, &outq) != 0) return false;
  const bool drained = !first && std::int64_t(outq) < outq_at_deadline_;
  outq_at_deadline_ = outq;
  return first || drained;
}

// On: a multishot receive armed now is ended (as for backpressure), and the bulk one follows it.
void Transport::switch_bulk(bool on) noexcept {
  bulk_ = on;
  if (on && sock_.recv_armed && !recv_stopping_ && state_ == State::Open) {
    recv_stopping_ = true;
    ctx_->backend->cancel(sock_.fd, io::tag(recv_op(), slot_, sock_.gen));
  }
}

void Transport::on_recv(char* data, std::size_t n) noexcept {
  if (!data) data = bulk_buf_;  // a bulk receive's bytes are in our own buffer
  // Lingering, or the last response is queued: what the peer still sends is read and dropped.
  if (state_ != State::Open || close_after_flush_) return;
  if (proxy_pending_) return on_proxy_recv(data, n);
  pass_on(data, n);
}

void Transport::pass_on(char* data, std::size_t n) noexcept {
  if (tls_.active()) return on_tls_recv(data, n);
  guarded([&] { owner_->on_bytes(data, n); });
}

// The header is parsed where it landed; only one split across receives is gathered first. What follows it in
// the same receive is the connection's own (a ClientHello, a request) and goes on at once.
void Transport::on_proxy_recv(char* data, std::size_t n) noexcept {
  ProxyHeader h;
  std::size_t from = 0;  // where in data the header's last byte was
  if (proxy_buf_.empty()) {
    h = parse_proxy_header(data, n);
    from = h.size;
  } else {
    const std::size_t before = proxy_buf_.size();
    const std::size_t take = std::min(n, kMaxProxyHeader - before);
    proxy_buf_.append(data, take);
    h = parse_proxy_header(proxy_buf_.data(), proxy_buf_.size());
    from = h.size - before;
  }
  if (h.status == ProxyHeader::Status::Bad) return proxy_failed();
  if (h.status == ProxyHeader::Status::More) {
    // More says the header completes within kMaxProxyHeader, so this stays bounded.
    if (proxy_buf_.empty()) guarded([&] { proxy_buf_.assign(data, n); });
    return;
  }
  proxy_pending_ = false;
  std::string().swap(proxy_buf_);
  if (h.has_source) owner_->on_proxy_source(h.source);
  owner_->update_timer();  // the head's deadline is the session's from here
  if (n > from && state_ == State::Open) pass_on(data + from, n - from);
}

void Transport::proxy_failed() noexcept {
  if (ctx_->metrics) ctx_->metrics->proxy_header_failures.add();
  proxy_pending_ = false;
  std::string().swap(proxy_buf_);
  owner_->abort();
}

// Records in, plaintext out into the loop's scratch buffer, which the session then reads like a receive buffer.
// Every record the session holds is decrypted now, so nothing waits inside OpenSSL for a receive that may never
// come.
void Transport::on_tls_recv(const char* data, std::size_t n) noexcept {
  if (!tls_.feed(data, n)) {
    alloc_failed();
    return;
  }
  if (!tls_.established()) {
    const tls::Session::Status st = tls_.handshake();
    if (st == tls::Session::Status::Failed) return tls_failed();
    if (st == tls::Session::Status::Ok) end_handshake();
    if (ctx_->metrics && !client_ && st == tls::Session::Status::Ok) {
      ctx_->metrics->tls_handshakes.add();
      if (tls_.resumed()) ctx_->metrics->tls_resumed.add();
    }
    if (st == tls::Session::Status::WantMore) {  // the handshake's own records go out
      guarded([&] {
        flush();
        owner_->update_waits();
      });
      return;
    }
  }
  while (state_ == State::Open && !close_after_flush_) {
    const long r = tls_.read(ctx_->tls_plain.get(), LoopContext::kTlsScratch);
    if (r == 0) break;
    if (r == -2) return tls_failed();
    if (r == -1) {  // close_notify: like EOF, answer what was asked, then close
      peer_eof_ = true;
      owner_->on_eof();
      break;
    }
    guarded([&] { owner_->on_bytes(ctx_->tls_plain.get(), std::size_t(r)); });
  }
  guarded([&] {
    flush();
    owner_->update_waits();
  });
}

// Nothing sent in a bad handshake or record can be trusted, and nothing can be answered. A refused handshake
// leaves OpenSSL's alert (protocol version, certificate required...) in the session: it goes out, then the
// connection closes the usual way (half-close, linger), so the client learns why. Nothing more is read. Without
// an alert to send, or after the handshake, it closes at once.
void Transport::tls_failed() noexcept {
  const bool handshake = !tls_.established();
  broken_ = true;
  if (client_) {  // the owner tells its caller (a handshake that failed: the upstream is unreachable)
    owner_->abort();
    return;
  }
  if (ctx_->metrics) (handshake ? ctx_->metrics->tls_handshake_failures : ctx_->metrics->tls_record_failures).add();
  if (!handshake || state_ != State::Open || sock_.send_inflight || tls_.pending() == 0) {
    owner_->abort();
    return;
  }
  close_after_flush_ = true;
  guarded([&] {
    flush();
    owner_->update_waits();
  });
}

void Transport::flush() {
  if (sock_.send_inflight || (state_ != State::Open)) return;
  OutQueue& q = out_[filling_];
  if (q.total == 0 && !(tls_.active() && tls_.pending())) {
    if (held_) return;
    if (peer_eof_) {
      owner_->abort();
    } else if (close_after_flush_ && tls_.established() && !tls_.closing()) {
      tls_.close_notify();  // the last response is out: close_notify, then the half-close
      if (tls_.pending()) return flush();
      finish();
    } else if (close_after_flush_) {
      finish();
    }
    return;
  }
  filling_ ^= 1;
  if (tls_.active()) {
    seal_seg_ = seal_off_ = 0;
    return seal_next();
  }
  iov_.clear();
  for (const Segment& s : q.segments)
    iov_.push_back({const_cast<char*>(s.external ? s.external : q.bytes.data() + s.offset), s.len});
  iov_next_ = 0;
  send_left_ = q.total;
  submit_send();
}

bool Transport::sealing() const noexcept {
  return seal_seg_ < out_[filling_ ^ 1].segments.size() || tls_.pending() > 0;
}

// TLS: the frozen queue becomes records kTlsAhead at a time, each batch sent before the next is encrypted, so a
// client that reads slowly holds about one batch of ciphertext, like the plaintext a plain connection holds.
// Small segments are gathered into one record (a head and its body: one record, not two); a large one is
// encrypted from where it lives.
void Transport::seal_next() {
  const OutQueue& q = out_[filling_ ^ 1];
  char* scratch = ctx_->tls_seal.get();
  std::size_t budget = kTlsAhead, gathered = 0;
  bool ok = true;
  while (ok && budget > 0 && seal_seg_ < q.segments.size()) {
    const Segment& s = q.segments[seal_seg_];
    const char* p = (s.external ? s.external : q.bytes.data() + s.offset) + seal_off_;
    const std::size_t left = s.len - seal_off_;
    std::size_t n;
    if (gathered == 0 && left >= LoopContext::kTlsScratch) {
      n = std::min(left, budget);
      ok = tls_.write(p, n);
    } else {
      n = std::min({left, LoopContext::kTlsScratch - gathered, budget});
      std::memcpy(scratch + gathered, p, n);
      gathered += n;
      if (gathered == LoopContext::kTlsScratch) {
        ok = tls_.write(scratch, gathered);
        gathered = 0;
      }
    }
    budget -= n;
    seal_off_ += n;
    if (seal_off_ == s.len) {
      ++seal_seg_;
      seal_off_ = 0;
    }
  }
  if (ok && gathered) ok = tls_.write(scratch, gathered);
  if (!ok) throw std::bad_alloc();  // a memory BIO fails to grow only when memory ran out
  tls_out_.clear();
  tls_.take(tls_out_);
  iov_.clear();
  iov_.push_back({tls_out_.data(), tls_out_.size()});
  iov_next_ = 0;
  send_left_ = tls_out_.size();
  submit_send();
}

void Transport::submit_send() noexcept {
  const std::size_t n = std::min(iov_.size() - iov_next_, kMaxIov);
  sock_.send_inflight = true;
  ctx_->backend->send(sock_.fd, io::tag(send_op(), slot_, sock_.gen), iov_.data() + iov_next_, unsigned(n), &msg_);
}

void Transport::on_send(int res) noexcept {
  sock_.send_inflight = false;
  if (state_ != State::Open) {
    maybe_release();
    return;
  }
  if (res <= 0) {
    owner_->abort();
    return;
  }
  send_progress_ = true;
  std::size_t sent = std::size_t(res);
  send_left_ -= sent;
  while (sent > 0) {  // a short send (the socket's buffer filled, or past IOV_MAX): resume where it stopped
    iovec& v = iov_[iov_next_];
    if (sent >= v.iov_len) {
      sent -= v.iov_len;
      ++iov_next_;
    } else {
      v.iov_base = static_cast<char*>(v.iov_base) + sent;
      v.iov_len -= sent;
      sent = 0;
    }
  }
  if (send_left_ > 0) {
    submit_send();
    owner_->update_timer();
    return;
  }
  if (tls_.active() && sealing()) {  // the next batch of the frozen queue, or records the session queued meanwhile
    guarded([&] {
      seal_next();
      owner_->update_timer();
    });
    return;
  }
  out_[filling_ ^ 1].clear();
  owner_->on_sent();
}

void Transport::on_recv_end(int res) noexcept {
  sock_.recv_armed = false;
  const bool stopped = recv_stopping_;
  recv_stopping_ = false;
  if (state_ == State::Closing) {
    maybe_release();
    return;
  }
  if (res == 0) {  // the peer closed its side: answer what it asked, then close
    peer_eof_ = true;
    if (proxy_pending_) return proxy_failed();  // a truncated PROXY header
    // Closed inside a TLS record: what it sent last can never be read (a truncation, or an attack on one).
    if (tls_.established() && tls_.partial_record() && ctx_->metrics && !client_)
      ctx_->metrics->tls_record_failures.add();
    if (state_ == State::Lingering) return owner_->abort();
    owner_->on_eof();
    if (state_ == State::Open) guarded([&] { flush(); });
    return;
  }
  if (res > 0 || res == -ENOBUFS || (res == -ECANCELED && stopped)) {
    // Ended on purpose (backpressure), without an error (CQ overflow), or the buffers were empty for a moment:
    // armed again unless paused; it goes out with the next submit, after this turn's buffers are back.
    owner_->update_waits();
    return;
  }
  owner_->abort();
}

void Transport::finish() noexcept {
  if (state_ != State::Open) return;
  if (peer_eof_) {
    owner_->abort();
    return;
  }
  // Lingering close: half-close so the client sees our last response and EOF, and keep reading (dropping it)
  // until it closes or the deadline passes, so unread input does not turn into a reset that destroys the response.
  state_ = State::Lingering;
  ctx_->backend->shutdown(sock_.fd, SHUT_WR);
  owner_->update_waits();  // a receive ended by backpressure is armed again, to read and drop
}

bool Transport::reset_now() noexcept {
  if (state_ == State::Closing || state_ == State::Free) return false;
  if (sock_.fd >= 0) {
    sockaddr none{};
    none.sa_family = AF_UNSPEC;
    (void)::connect(sock_.fd, &none, sizeof none);
  }
  return close_now();
}

bool Transport::close_now() noexcept {
  if (state_ == State::Closing || state_ == State::Free) return false;
  state_ = State::Closing;
  sock_.end(*ctx_->backend, io::tag(io::Op::UpConnect, slot_, sock_.gen));  // a connect in flight is cancelled
  maybe_release();
  return true;
}

void Transport::teardown() noexcept {
  end_handshake();
  if (sock_.fd >= 0) ::close(sock_.fd);
  sock_.fd = -1;
  state_ = State::Free;
}

void Transport::maybe_release() noexcept {
  if (state_ != State::Closing || !sock_.release(*ctx_->backend)) return;
  state_ = State::Free;
  release_due_ = true;
  held_ = false;
  end_handshake();
  if (tls_.active()) ctx_->released_bytes += kTlsSessionBytes;  // OpenSSL's frees count toward the heap trim
  bulk_ = false;
  if (bulk_buf_) {  // nothing is in flight any more: no receive can land in it
    ctx_->released_bytes += kBulkBytes;
    delete[] bulk_buf_;
    bulk_buf_ = nullptr;
  }
  out_[0].clear();
  out_[1].clear();
  iov_.clear();
  tls_.reset();
  tls_out_.clear();
  owner_->on_released();
}

void Transport::release_buffers(std::size_t keep) noexcept {
  for (core::ByteBuffer* b : {&out_[0].bytes, &out_[1].bytes, &tls_out_}) {
    if (b->capacity() <= keep || !b->empty()) continue;
    ctx_->released_bytes += b->capacity();
    b->release();
  }
  if (iov_.capacity() * sizeof(iovec) > keep && iov_.empty()) {
    ctx_->released_bytes += iov_.capacity() * sizeof(iovec);
    std::vector<iovec>().swap(iov_);
  }
  for (OutQueue& q : out_)
    if (q.segments.capacity() * sizeof(Segment) > keep && q.segments.empty()) {
      ctx_->released_bytes += q.segments.capacity() * sizeof(Segment);
      std::vector<Segment>().swap(q.segments);
    }
}

}  // namespace userd::server
