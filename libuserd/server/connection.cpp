// server/connection.cpp: the connection state machine. Requests are parsed straight out of the receive buffer;
// only an unfinished request (or requests queued behind one awaiting its answer) is copied into the
// connection's own buffer, so the receive buffer goes back to the kernel as soon as on_recv returns.
#include "libuserd/server/connection.hpp"

#include <cerrno>
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <netinet/in.h>

#include <unistd.h>

#include "libuserd/http/percent.hpp"
#include "libuserd/io/tag.hpp"

namespace userd::server {
namespace {
// Backpressure. Past kOutHighWater of queued output no further request is parsed and the socket is no longer
// read, so the kernel's TCP window closes on a client that sends without reading; the same happens when a
// request waits for its handler and more than kInHighWater of pipelined input sits behind it. Reading resumes
// below the low-water marks. 64 KiB holds a 16-deep pipeline of the 3.7 KB dataset answer.
constexpr std::size_t kOutHighWater = 64 * 1024;
constexpr std::size_t kOutLowWater = 16 * 1024;
constexpr std::size_t kInHighWater = 64 * 1024;
constexpr std::size_t kInLowWater = 16 * 1024;
// A static body this large is sent from where it lives (sendmsg with head and body iovecs) instead of being
// copied next to its head. Measured on the 3.7 KB dataset (benchmarks/NOTES.md): 3 % less CPU per request on
// io_uring, equal on epoll, and no 4 KiB copy per connection and queue. Tiny bodies are cheaper to copy.
constexpr std::size_t kCopyBelow = 1024;
// Buffers grown past this (a large request, a burst of pipelined ones) are given back when the connection goes
// idle; when it closes, everything past kKeepOnClose is. Steady keep-alive traffic never grows them this far,
// so it allocates nothing.
constexpr std::size_t kKeepCapacity = 64 * 1024;
constexpr std::size_t kKeepOnClose = 8 * 1024;
// What a TLS session holds in OpenSSL (measured: 51-61 KiB during the handshake, about 40 KiB after), counted as
// freed when its connection closes so that a burst of TLS clients leads to a heap trim like any other.
constexpr std::size_t kTlsSessionBytes = 48 * 1024;
constexpr std::size_t kMaxIov = IOV_MAX;
// TLS output is encrypted this far ahead of the socket: three full records. More would hold more ciphertext per
// slow client (the bound the plaintext path keeps); less would take more loop turns per large answer.
constexpr std::size_t kTlsAhead = 48 * 1024;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

// "address:port" of the peer, for the access log (one getpeername per connection, only when logging).
void describe_peer(int fd, char* out, std::size_t cap) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  char host[INET6_ADDRSTRLEN] = "-";
  unsigned port = 0;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
      port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
      port = ntohs(a->sin6_port);
    }
  }
  std::snprintf(out, cap, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

http::ConnectionHeader connection_header(bool keep_alive, std::uint8_t minor) noexcept {
  if (!keep_alive) return http::ConnectionHeader::Close;
  return minor == 0 ? http::ConnectionHeader::KeepAlive : http::ConnectionHeader::None;
}

}  // namespace

void Connection::OutQueue::note_bytes(std::size_t from) {
  std::size_t len = bytes.size() - from;
  if (len == 0) return;
  if (!segments.empty() && !segments.back().external && segments.back().offset + segments.back().len == from)
    segments.back().len += len;
  else
    segments.push_back({nullptr, from, len});
  total += len;
}

// Handshakes in progress are counted per loop (LoopContext::handshakes): each holds OpenSSL's state (50-60 KiB)
// before the client has proven anything, so the worker refuses new TLS connections past its bound.
void Connection::end_handshake() noexcept {
  if (!handshaking_) return;
  handshaking_ = false;
  --ctx_->handshakes;
}

bool Connection::open(int fd, std::uint32_t slot, SSL_CTX* tls) noexcept {
  if (tls && !tls_.start(tls)) return false;  // a TLS connection is one whose session is active
  if (tls) {
    handshaking_ = true;
    ++ctx_->handshakes;
  }
  sock_.fd = fd;
  slot_ = slot;
  state_ = State::Open;
  peer_eof_ = close_after_flush_ = in_dispatch_ = draining_ = ready_due_ = release_due_ = shed_ = false;
  set_awaiting(false);
  reader_.reset(ctx_->max_body);
  continue_sent_ = false;
  streaming_ = writable_due_ = inbox_waits_ = false;
  sock_.send_inflight = send_progress_ = false;
  sock_.recv_armed = recv_stopping_ = recv_paused_ = false;
  recv_probe_ = true;  // a client that opens with a flood is met like one resuming after a pause
  arm_recv();
  peer_[0] = '\0';
  if (ctx_->access_log) describe_peer(fd, peer_, sizeof peer_);
  update_timer();
  return true;
}

// Output not yet sent: plaintext queued, and on TLS the records waiting in the session or in flight.
std::size_t Connection::queued() const noexcept {
  std::size_t n = out_[0].total + out_[1].total;
  if (tls_.active()) n += tls_.pending() + (sock_.send_inflight ? send_left_ : 0);
  return n;
}

// After a pause the first receive takes one buffer only: a client with megabytes queued in the kernel would
// otherwise land a multishot burst (32 buffers and more) in in_ before the next pause could stop it. If that
// buffer is parsed without pausing again, the multishot receive comes back.
void Connection::arm_recv() noexcept {
  ctx_->backend->recv(sock_.fd, io::tag(io::Op::Recv, slot_, sock_.gen), !recv_probe_);
  recv_probe_ = false;
  sock_.recv_armed = true;
}

// Allocation fails only when the process is out of memory: that costs this connection, not the process.
template <class F>
void Connection::guarded(F&& step) noexcept {
  try {
    step();
  } catch (const std::bad_alloc&) {
    if (ctx_->metrics) ctx_->metrics->alloc_failures.add();
    abort();
  }
}

// Off-loop senders check this before queueing an answer (Worker::post): the request a Responder names is still
// awaited only while its token is published. One relaxed store per change, on the loop thread.
void Connection::set_awaiting(bool on) noexcept {
  awaiting_ = on;
  if (ctx_->awaited) ctx_->awaited[slot_].store(on ? awaited_token(sock_.gen, seq_) : 0, std::memory_order_relaxed);
}

void Connection::update_waits() noexcept {
  update_recv();
  update_timer();
}

// Backpressure (see kOutHighWater): ends the receive while too much is queued, arms it again below the
// low-water marks. A lingering connection, or one whose last response is queued, reads on and drops.
void Connection::update_recv() noexcept {
  if (peer_eof_ || (state_ != State::Open && state_ != State::Lingering)) return;
  bool want = true;
  if (state_ == State::Open && !close_after_flush_) {
    const std::size_t out = queued();
    const bool stuck_in = !reading() && in_.size() > (recv_paused_ ? kInLowWater : kInHighWater);
    recv_paused_ = recv_paused_ ? out > kOutLowWater || stuck_in : out > kOutHighWater || stuck_in;
    want = !recv_paused_;
  } else {
    recv_paused_ = false;
  }
  if (want && !sock_.recv_armed) {
    arm_recv();
  } else if (!want && sock_.recv_armed && !recv_stopping_) {
    recv_stopping_ = true;
    recv_probe_ = true;
    if (ctx_->metrics) ctx_->metrics->recv_pauses.add();
    ctx_->backend->cancel(sock_.fd, io::tag(io::Op::Recv, slot_, sock_.gen));
  }
}

// The deadline that applies now. Set only when the kind changes: a head trickling in keeps the deadline of its
// first byte (slowloris), while any response resets the idle deadline.
// Output that makes no progress has the send deadline (restarted by every completion that moved bytes); a
// request its handler holds has the handler deadline, on a list of its own.
void Connection::update_timer() noexcept {
  Timer want = Timer::None;
  if (state_ == State::Lingering) want = Timer::Linger;
  else if (state_ != State::Open) want = Timer::None;
  else if (sock_.send_inflight) want = Timer::Send;
  else if (awaiting_ || queued()) want = Timer::None;
  else if (tls_.active() && !tls_.established()) want = Timer::Header;  // a stalled handshake, like a stalled head
  else if (reader_.head_done()) want = Timer::Body;
  else if (!in_.empty()) want = Timer::Header;
  else want = Timer::Idle;
  if (want == Timer::Idle && timer_link.which != Timer::Idle) release_buffers(kKeepCapacity);
  // A send being checked (SendCheck) stays on that check until a completion moves bytes.
  const bool checking = want == Timer::Send && timer_link.which == Timer::SendCheck && !send_progress_;
  if (!checking && (timer_link.which != want || (want == Timer::Send && send_progress_)))
    ctx_->timers.set(*this, want, ctx_->now_ms);
  send_progress_ = false;
}

void Connection::release_buffers(std::size_t keep) noexcept {
  for (core::ByteBuffer* b : {&in_, &out_[0].bytes, &out_[1].bytes, &log_request_, &tls_out_}) {
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

void Connection::shed() noexcept {
  if (shed_ || state_ != State::Free) return;
  release_buffers(0);
  if (decode_.capacity()) {
    ctx_->released_bytes += decode_.capacity();
    decode_.release();
  }
  shed_ = true;
}

void Connection::drain() noexcept {
  if (state_ != State::Open) return;  // lingering or closing: ends by itself
  const bool idle = !awaiting_ && !sock_.send_inflight && !queued() && in_.empty() && !reader_.head_done();
  if (idle) {
    abort();
    return;
  }
  draining_ = true;
  if (awaiting_) req_keep_alive_ = false;  // its answer says Connection: close
  else if (!reader_.head_done() && in_.empty()) close_after_flush_ = true;  // only output left
  guarded([&] {
    flush();
    update_waits();
  });
}

void Connection::on_timeout(Timer t) noexcept {
  if (t == Timer::Handler) {
    if (streaming_ && (writable_ || inbox_waits_ || queued() > kOutLowWater)) {
      // The producer waits for us: held back by a client that reads slowly (the send deadline judges that
      // client), not stalled on its own.
      ctx_->handler_timers.set(*this, Timer::Handler, ctx_->now_ms);
      return;
    }
    if (streaming_) {  // the producer stopped writing: the body cannot be finished
      if (ctx_->metrics) ctx_->metrics->handler_timeouts.add();
      abort();
      return;
    }
    // The handler keeps its Responder, which no longer matches a request awaiting an answer: a no-op.
    if (state_ != State::Open || !awaiting_) return;
    set_awaiting(false);
    if (ctx_->metrics) ctx_->metrics->handler_timeouts.add();
    guarded([&] {
      write_error_status(503, "handler timed out");
      resume();
      flush();
      update_waits();
    });
    return;
  }
  if ((t == Timer::Send || t == Timer::SendCheck) && state_ == State::Open && sock_.send_inflight &&
      socket_drained(t == Timer::Send)) {
    // A send completes only when the kernel has room for more (a third of the buffer free), which for a slow but
    // steady reader of a large answer can take longer than the deadline: the socket's own queue shrinking is
    // progress too. Looked at only here, at a deadline, never per send.
    ctx_->timers.set(*this, t == Timer::Send ? Timer::SendCheck : Timer::Send, ctx_->now_ms);
    return;
  }
  if ((t == Timer::Send || t == Timer::SendCheck) && ctx_->metrics) ctx_->metrics->send_timeouts.add();
  if (state_ != State::Open || (t != Timer::Header && t != Timer::Body)) {
    abort();  // idle, linger, or output that made no progress
    return;
  }
  if (tls_.active() && !tls_.established()) {  // no HTTP yet to answer in
    tls_failed();
    return;
  }
  // Header or body not complete in time: nothing more is read from this client.
  in_.clear();
  guarded([&] {
    refuse(408, t == Timer::Header ? "request header timeout" : "request body timeout");
    flush();
    update_waits();
  });
}

// At the send deadline (first): remembers what the socket still holds and says true, so that SendCheck looks
// again shortly; at the check: true when the socket's queue has shrunk since (the client reads).
bool Connection::socket_drained(bool first) noexcept {
  int outq = 0;
  if (::ioctl(sock_.fd, SIOCOUTQ, &outq) != 0) return false;
  const bool drained = !first && std::int64_t(outq) < outq_at_deadline_;
  outq_at_deadline_ = outq;
  return first || drained;
}

bool Connection::reading() const noexcept {
  return state_ == State::Open && !awaiting_ && !close_after_flush_ && queued() <= kOutHighWater;
}

void Connection::on_recv(char* data, std::size_t n) noexcept {
  // Lingering, or the last response is queued: what the peer still sends is read and dropped.
  if (state_ != State::Open || close_after_flush_) return;
  if (tls_.active()) return on_tls_recv(data, n);
  guarded([&] { on_plain(data, n); });
}

// Records in, plaintext out into the loop's scratch buffer, which the HTTP code then reads like a receive buffer
// (what it does not finish is copied into in_, as always). Every record the session holds is decrypted now, so
// nothing waits inside OpenSSL for a receive that may never come.
void Connection::on_tls_recv(const char* data, std::size_t n) noexcept {
  if (!tls_.feed(data, n)) {
    if (ctx_->metrics) ctx_->metrics->alloc_failures.add();
    abort();
    return;
  }
  if (!tls_.established()) {
    const tls::Session::Status st = tls_.handshake();
    if (st == tls::Session::Status::Failed) return tls_failed();
    if (st == tls::Session::Status::Ok) end_handshake();
    if (ctx_->metrics && st == tls::Session::Status::Ok) {
      ctx_->metrics->tls_handshakes.add();
      if (tls_.resumed()) ctx_->metrics->tls_resumed.add();
    }
    if (st == tls::Session::Status::WantMore) {  // the handshake's own records go out
      guarded([&] {
        flush();
        update_waits();
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
      break;
    }
    guarded([&] { on_plain(ctx_->tls_plain.get(), std::size_t(r)); });
  }
  guarded([&] {
    flush();
    update_waits();
  });
}

// A bad handshake or record: nothing sent in it can be trusted, and nothing can be answered.
// A refused handshake leaves OpenSSL's alert (protocol version, certificate required...) in the session: it
// goes out, then the connection closes the usual way (half-close, linger), so the client learns why. Nothing
// more is read. Without an alert to send, or after the handshake, it closes at once.
void Connection::tls_failed() noexcept {
  const bool handshake = !tls_.established();
  if (ctx_->metrics) (handshake ? ctx_->metrics->tls_handshake_failures : ctx_->metrics->tls_record_failures).add();
  if (!handshake || state_ != State::Open || sock_.send_inflight || tls_.pending() == 0) {
    abort();
    return;
  }
  in_.clear();
  close_after_flush_ = true;
  guarded([&] {
    flush();
    update_waits();
  });
}

void Connection::on_plain(char* data, std::size_t n) {
  {
    if (in_.empty()) {
      std::size_t used = process(data, n);
      if (used < n) keep_unfinished(data + used, n - used);
    } else {
      // One request (head + body) plus the pipelined input that arrives while the receive is being ended.
      if (in_.size() + n > ctx_->limits.max_head + ctx_->max_body + 4 * kInHighWater) {
        abort();
        return;
      }
      in_.append(data, n);
      resume();
    }
    flush();
    update_waits();
  }
}

void Connection::resume() {
  if (in_.empty() || state_ != State::Open) return;
  std::size_t used = process(in_.data(), in_.size());
  keep_unfinished(in_.data() + used, in_.size() - used);
}

// Moves the unfinished request at req into in_: the head, the body decoded so far, then the undecoded rest.
// req may point into in_ itself.
void Connection::keep_unfinished(char* req, std::size_t avail) {
  const std::size_t live = reader_.live();
  const std::size_t raw = reader_.raw_off();
  if (in_.size() && req >= in_.data() && req <= in_.data() + in_.size()) {
    std::memmove(in_.data(), req, live);
    std::memmove(in_.data() + live, req + raw, avail - raw);
    in_.resize_down(live + avail - raw);
  } else {
    in_.clear();
    in_.append(req, live);
    in_.append(req + raw, avail - raw);
  }
  reader_.compacted();
}

std::size_t Connection::process(char* buf, std::size_t len) {
  std::size_t pos = 0;
  while (pos < len && reading()) {
    char* req = buf + pos;
    const http::ReadStep step = reader_.read(req, len - pos, ctx_->limits);
    if (step.status == http::ReadStatus::Bad) {
      write_error(step.error);
      return len;
    }
    if (step.status != http::ReadStatus::Done) {
      write_continue();
      break;
    }
    continue_sent_ = false;
    dispatch(reader_.head(), reader_.body(req));
    pos += step.total;
  }
  return pos;
}

static std::uint64_t monotonic_us() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::uint64_t(ts.tv_sec) * 1'000'000 + std::uint64_t(ts.tv_nsec) / 1000;
}

void Connection::count(int status, std::size_t body_bytes) {
  const std::uint64_t took = req_started_us_ ? monotonic_us() - req_started_us_ : 0;
  if (ctx_->metrics) ctx_->metrics->record(req_route_, status, took);
  if (core::ByteBuffer* log = ctx_->access_log) {
    char tail[80];
    const int n = std::snprintf(tail, sizeof tail, " %d %zu %.6f\n", status, body_bytes, double(took) / 1e6);
    log->append(ctx_->log_time);
    log->append(" ", 1);
    log->append(peer_);
    log->append(" ", 1);
    if (log_request_.empty()) log->append("- -");  // refused before it was a request (400, 408, 431...)
    else log->append(log_request_.data(), log_request_.size());
    log->append(tail, std::size_t(n));
    log_request_.clear();
  }
  req_started_us_ = 0;
}

void Connection::dispatch(const http::RequestHead& head, std::string_view body) {
  ++seq_;
  req_keep_alive_ = head.keep_alive && !draining_;
  req_minor_ = head.minor;
  req_head_only_ = head.method == "HEAD";
  Router::Match m = ctx_->router->find(head.method, head.path, params_);
  req_route_ = m.route;
  if (ctx_->metrics || ctx_->access_log) req_started_us_ = monotonic_us();
  if (ctx_->access_log) {
    log_request_.clear();
    log_request_.append(head.method);
    log_request_.append(" ", 1);
    log_request_.append(head.target);
  }
  if (!m.handler) {
    if (m.allow.empty()) {
      write_error_status(404, "not found");
    } else {
      const Header allow{"Allow", m.allow};
      write_error_status(405, "method not allowed", {&allow, 1});
    }
    return;
  }
  Request request(head, body, ctx_->backend_name, ctx_->replies);
  if (!decode(head, request)) {
    write_error_status(400, "malformed percent-escape in the path or query");
    return;
  }
  set_awaiting(true);
  in_dispatch_ = true;
  try {
    Responder res(ctx_->replies, slot_, sock_.gen, seq_);
    bool go_on = true;
    for (const Middleware& mw : ctx_->router->middleware())
      if (!(go_on = mw(request, res))) break;
    if (go_on) (*m.handler)(request, res);
  } catch (...) {
    if (streaming_) {
      abort();  // the head and maybe some body are out: a 500 now would land inside the body
    } else if (awaiting_) {
      set_awaiting(false);
      write_error_status(500, "internal error");
    }
  }
  in_dispatch_ = false;
  if (awaiting_ && state_ == State::Open) ctx_->handler_timers.set(*this, Timer::Handler, ctx_->now_ms);
}

// Route parameters are decoded now, into decode_ where each sits in the path; query values later, on demand,
// where each sits in the query (Request::query_param), so nothing moves while the handler holds views. A bad
// escape or an encoded NUL anywhere in either is refused before any handler runs.
bool Connection::decode(const http::RequestHead& head, Request& request) {
  request.conn_ = this;
  request.params_ = &params_;
  const bool escaped = head.target.find_first_of("%+") != std::string_view::npos;
  if (!escaped) return true;  // nothing to decode: the views into the request are the values
  if (!http::valid_escapes(head.query)) return false;
  char* space = decode_.prepare(head.path.size() + head.query.size() + 1);  // capacity is kept: no allocation
  for (std::size_t i = 0; i < params_.count; ++i) {
    const std::string_view raw = params_.values[i];
    if (raw.find('%') == std::string_view::npos) continue;
    char* out = space + (raw.data() - head.path.data());
    const long n = http::percent_decode(raw, out, false);
    if (n < 0) return false;
    params_.values[i] = {out, std::size_t(n)};
  }
  request.query_space_ = space + head.path.size();
  return true;
}

unsigned Connection::loop_index() const noexcept { return ctx_->loop_index; }

TlsInfo Connection::tls_info() const noexcept {
  if (!tls_.active()) return {};
  return {true, tls_.version(), tls_.peer_subject()};
}

std::string_view Connection::peer() const noexcept {
  if (!peer_[0] && sock_.fd >= 0) describe_peer(sock_.fd, peer_, sizeof peer_);
  return peer_;
}

bool Connection::stream_begin(std::uint32_t seq, const Response& head) noexcept {
  if (!awaiting_ || streaming_ || seq != seq_ || state_ != State::Open) return false;
  bool ok = false;
  guarded([&] {
    // Chunked to HTTP/1.1; to HTTP/1.0 the close ends the body.
    const bool head_ok = write_head(head, req_minor_ == 1 ? http::BodyFraming::Chunked : http::BodyFraming::Close);
    // Refused (write_head wrote a 500 instead), or HEAD, 204, 304: the head is the whole response. The stream is
    // over now, so write() and alive() say false at once, and a producer driven by on_writable stops instead of
    // spinning on writes that take nothing and always succeed.
    if (!head_ok || req_head_only_ || !http::status_has_body(head.status)) {
      set_awaiting(false);
      ctx_->handler_timers.clear(*this);
      if (head_ok) {
        if (!req_keep_alive_) close_after_flush_ = true;
        count(head.status, 0);
      }
      if (!in_dispatch_) continue_later();
      flush();
      update_waits();
      ok = head_ok;
      return;
    }
    streaming_ = true;
    if (ctx_->awaited) {  // begun here on the loop: writes from other threads may follow (never undo an end)
      std::uint64_t t = awaited_token(sock_.gen, seq_);
      ctx_->awaited[slot_].compare_exchange_strong(t, t | kAwaitedStreaming, std::memory_order_relaxed);
    }
    stream_status_ = head.status;
    stream_bytes_ = 0;
    // Answered, as far as the client knows; a producer that stops writing is cut at the same deadline.
    ctx_->handler_timers.set(*this, Timer::Handler, ctx_->now_ms);
    flush();
    update_waits();
    ok = true;
  });
  return ok;
}

bool Connection::stream_write(std::uint32_t seq, std::string_view data, bool end) noexcept {
  if (!end && queued() > kOutHighWater) return false;
  return stream_append(seq, data, end);
}

bool Connection::stream_write_taken(std::uint32_t seq, std::string_view data) noexcept {
  return stream_append(seq, data, false);
}

bool Connection::stream_append(std::uint32_t seq, std::string_view data, bool end) noexcept {
  if (!streaming_ || seq != seq_ || state_ != State::Open) return false;
  bool ok = false;
  guarded([&] {
    OutQueue& q = out_[filling_];
    const std::size_t from = q.bytes.size();
    const bool body = !req_head_only_ && http::status_has_body(stream_status_);
    if (!end && body && !data.empty()) {
      if (req_minor_ == 1) {
        char size[24];
        const int n = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
        q.bytes.append(size, std::size_t(n));
        q.bytes.append(data);
        q.bytes.append("\r\n", 2);
      } else {
        q.bytes.append(data);
      }
      stream_bytes_ += data.size();
    }
    if (end) {
      if (body && req_minor_ == 1) q.bytes.append("0\r\n\r\n");
      streaming_ = false;
      set_awaiting(false);
      writable_ = nullptr;
      ctx_->handler_timers.clear(*this);
      if (!req_keep_alive_) close_after_flush_ = true;
      count(stream_status_, stream_bytes_);
    } else {
      ctx_->handler_timers.set(*this, Timer::Handler, ctx_->now_ms);
    }
    q.note_bytes(from);
    if (end && !in_dispatch_) continue_later();
    flush();
    update_waits();
    ok = true;
  });
  return ok;
}

void Connection::stream_on_writable(std::uint32_t seq, std::function<void()> fn) {
  if (!streaming_ || seq != seq_ || state_ != State::Open) return;
  writable_ = std::move(fn);
  if (queued() <= kOutLowWater && !writable_due_) {
    writable_due_ = true;
    ctx_->writable_due.push_back({slot_, sock_.gen});
  }
}

bool Connection::stream_backed_up() const noexcept {
  return streaming_ && state_ == State::Open && queued() > kOutHighWater;
}

void Connection::run_writable() noexcept {
  writable_due_ = false;
  if (!streaming_ || !writable_ || state_ != State::Open) return;
  std::function<void()> fn = std::move(writable_);
  writable_ = nullptr;
  try {
    fn();
  } catch (...) {
    abort();  // a producer that throws mid-stream: the body cannot be finished
  }
}

// An answer that came from outside this connection's own dispatch (another thread, an upstream, another
// connection's handler, a writable callback): the requests queued behind it are parsed and their handlers run
// later in the turn (Worker::run_continuations), never on the stack of whoever answered, which may be another
// connection's handler holding views and state that those handlers would overwrite.
void Connection::continue_later() {
  if (ready_due_) return;
  ctx_->ready.push_back({slot_, sock_.gen});
  ready_due_ = true;
}

void Connection::run_ready() noexcept {
  ready_due_ = false;
  if (state_ != State::Open) return;
  guarded([&] {
    resume();
    flush();
    update_waits();
  });
}

bool Connection::reply(std::uint32_t seq, const Response& r) noexcept {
  if (!awaiting_ || streaming_ || seq != seq_ || state_ != State::Open) return false;
  set_awaiting(false);
  ctx_->handler_timers.clear(*this);
  guarded([&] {
    write_response(r);
    if (!in_dispatch_) continue_later();  // answered later: carry on with requests that queued up meanwhile
  });
  return true;
}


// A response that would corrupt the stream (CR/LF in a header) or contradict the server's framing is not sent;
// the client gets a 500 and the embedder one log line a second at most.
void Connection::refuse_response(std::string_view why) {
  if (ctx_->metrics) ctx_->metrics->bad_responses.add();
  const std::uint64_t second = ctx_->now_ms / 1000;
  if (second != ctx_->last_bad_response_log_s) {
    ctx_->last_bad_response_log_s = second;
    char line[160];
    std::snprintf(line, sizeof line, "handler response refused with 500: %.*s", int(why.size()), why.data());
    if (ctx_->log) (*ctx_->log)(line);
    else std::fprintf(stderr, "userd: %s\n", line);
  }
  write_error_status(500, "invalid response from handler");
}

// The status line and headers of r, framed as asked (Length: r.body's). A head the handler got wrong is not
// written: refuse_response writes a 500 instead, and this returns false.
bool Connection::write_head(const Response& r, http::BodyFraming framing) {
  const std::optional<std::uint64_t> length =
      framing == http::BodyFraming::Length ? std::optional<std::uint64_t>(r.body.size()) : std::nullopt;
  // A handler answers with a final status (RFC 9110 15: three digits, 2xx to 5xx); an interim 1xx as the
  // answer would leave the client waiting for the final one, and 600 or more is no status at all.
  if (r.status < 200 || r.status > 599) {
    refuse_response("status outside 200-599");
    return false;
  }
  const http::HeaderCheck check = http::check_headers(r.headers, r.content_type, length);
  if (!check.ok) {
    refuse_response(check.why);
    return false;
  }
  if (check.close || framing == http::BodyFraming::Close) req_keep_alive_ = false;
  OutQueue& q = out_[filling_];
  const std::size_t from = q.bytes.size();
  http::ResponseHead h;
  h.status = r.status;
  h.content_type = check.has_content_type ? std::string_view() : r.content_type;
  h.content_length = r.body.size();
  h.headers = r.headers;
  h.date = ctx_->date.value();
  h.connection = connection_header(req_keep_alive_, req_minor_);
  h.framing = framing;
  http::write_response_head(q.bytes, h);
  q.note_bytes(from);
  return true;
}

void Connection::write_response(const Response& r) {
  if (!write_head(r, http::BodyFraming::Length)) return;
  OutQueue& q = out_[filling_];
  const bool with_body = !req_head_only_ && http::status_has_body(r.status) && !r.body.empty();
  if (with_body && r.body_is_static && r.body.size() >= kCopyBelow) {
    q.segments.push_back({r.body.data(), 0, r.body.size()});
    q.total += r.body.size();
  } else if (with_body) {
    const std::size_t from = q.bytes.size();
    q.bytes.append(r.body);
    q.note_bytes(from);
  }
  if (!req_keep_alive_) close_after_flush_ = true;
  count(r.status, with_body ? r.body.size() : 0);
}

void Connection::write_error_status(int status, std::string_view message, std::span<const Header> extra) {
  OutQueue& q = out_[filling_];
  const std::size_t from = q.bytes.size();
  const std::size_t body = http::write_error_response(q.bytes, status, message, ctx_->date.value(),
                                                      connection_header(req_keep_alive_, req_minor_), req_head_only_, extra);
  q.note_bytes(from);
  if (!req_keep_alive_) close_after_flush_ = true;
  count(status, body);
}

// A request we cannot trust the framing of: answer, then close (the rest of the stream is not read).
void Connection::write_error(http::HttpError e) { refuse(http::status_for(e), http::describe(e)); }

// The answer to something that never became a routed request (bad framing, a deadline): an HTTP/1.1 error that
// closes the connection, whatever the request being read had asked for.
void Connection::refuse(int status, std::string_view message) {
  reader_.reset(ctx_->max_body);
  req_route_ = ctx_->router->route_count();
  req_keep_alive_ = false;
  req_head_only_ = false;
  req_minor_ = 1;
  write_error_status(status, message);
}

// RFC 9110 10.1.1: a client that sent "Expect: 100-continue" may wait for this before sending the body.
void Connection::write_continue() {
  if (!reader_.head_done() || !reader_.head().expect_continue || continue_sent_ || reader_.head().minor == 0) return;
  continue_sent_ = true;
  OutQueue& q = out_[filling_];
  const std::size_t from = q.bytes.size();
  q.bytes.append(kContinue);
  q.note_bytes(from);
}

void Connection::flush() {
  if (sock_.send_inflight || (state_ != State::Open)) return;
  OutQueue& q = out_[filling_];
  if (q.total == 0 && !(tls_.active() && tls_.pending())) {
    if (awaiting_) return;
    if (peer_eof_) {
      abort();
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

bool Connection::sealing() const noexcept {
  return seal_seg_ < out_[filling_ ^ 1].segments.size() || tls_.pending() > 0;
}

// TLS: the frozen queue becomes records kTlsAhead at a time, each batch sent before the next is encrypted, so a
// client that reads slowly holds about one batch of ciphertext, like the plaintext a plain connection holds.
// Small segments are gathered into one record (a head and its body: one record, not two); a large one is
// encrypted from where it lives.
void Connection::seal_next() {
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

void Connection::submit_send() noexcept {
  const std::size_t n = std::min(iov_.size() - iov_next_, kMaxIov);
  sock_.send_inflight = true;
  ctx_->backend->send(sock_.fd, io::tag(io::Op::Send, slot_, sock_.gen), iov_.data() + iov_next_, unsigned(n), &msg_);
}

void Connection::on_send(int res) noexcept {
  sock_.send_inflight = false;
  if (state_ != State::Open) {
    maybe_release();
    return;
  }
  if (res <= 0) {
    abort();
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
    update_timer();
    return;
  }
  if (tls_.active() && sealing()) {  // the next batch of the frozen queue, or records the session queued meanwhile
    guarded([&] {
      seal_next();
      update_timer();
    });
    return;
  }
  out_[filling_ ^ 1].clear();
  guarded([&] {
    resume();
    flush();
    update_waits();
    if (streaming_ && (writable_ || inbox_waits_) && !writable_due_ && queued() <= kOutLowWater) {
      writable_due_ = true;
      ctx_->writable_due.push_back({slot_, sock_.gen});
    }
  });
}

void Connection::on_recv_end(int res) noexcept {
  sock_.recv_armed = false;
  const bool stopped = recv_stopping_;
  recv_stopping_ = false;
  if (state_ == State::Closing) {
    maybe_release();
    return;
  }
  if (res == 0) {  // the peer closed its side: answer what it asked, then close
    peer_eof_ = true;
    // Closed inside a TLS record: what it sent last can never be read (a truncation, or an attack on one).
    if (tls_.established() && tls_.partial_record() && ctx_->metrics) ctx_->metrics->tls_record_failures.add();
    if (state_ == State::Lingering) abort();
    else guarded([&] { flush(); });
    return;
  }
  if (res > 0 || res == -ENOBUFS || (res == -ECANCELED && stopped)) {
    // Ended on purpose (backpressure), without an error (CQ overflow), or the buffers were empty for a moment:
    // armed again unless paused; it goes out with the next submit, after this turn's buffers are back.
    update_recv();
    return;
  }
  abort();
}

void Connection::finish() noexcept {
  if (state_ != State::Open) return;
  if (peer_eof_) {
    abort();
    return;
  }
  // Lingering close: half-close so the client sees our last response and EOF, and keep reading (dropping it)
  // until it closes or the deadline passes, so unread input does not turn into a reset that destroys the response.
  state_ = State::Lingering;
  ctx_->backend->shutdown(sock_.fd, SHUT_WR);
  update_waits();  // a receive ended by backpressure is armed again, to read and drop
}

void Connection::abort() noexcept {
  if (state_ == State::Closing || state_ == State::Free) return;
  state_ = State::Closing;
  streaming_ = false;
  set_awaiting(false);  // from now on alive() and send() say false, from any thread
  writable_ = nullptr;  // what the producer's callback holds goes now
  ctx_->timers.clear(*this);
  ctx_->handler_timers.clear(*this);
  sock_.end(*ctx_->backend);
  maybe_release();
}

void Connection::teardown() noexcept {
  end_handshake();
  ctx_->timers.clear(*this);
  ctx_->handler_timers.clear(*this);
  if (sock_.fd >= 0) ::close(sock_.fd);
  sock_.fd = -1;
  state_ = State::Free;
}

void Connection::maybe_release() noexcept {
  if (state_ != State::Closing || !sock_.release(*ctx_->backend)) return;
  state_ = State::Free;
  release_due_ = true;
  end_handshake();
  if (tls_.active()) ctx_->released_bytes += kTlsSessionBytes;  // OpenSSL's frees count toward the heap trim
  set_awaiting(false);
  reader_.reset(ctx_->max_body);
  in_.clear();
  out_[0].clear();
  out_[1].clear();
  iov_.clear();
  log_request_.clear();
  tls_.reset();
  tls_out_.clear();
  release_buffers(kKeepOnClose);
}

}  // namespace userd::server
