// server/connection.cpp: the slot's glue between its transport and its session: which deadline applies, the
// receive's backpressure, and the order in which a connection ends (the session lets go of its answers first,
// then the transport closes the socket).
#include "libuserd/server/connection.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdio>
#include <cstring>

namespace userd::server {
namespace {
// Buffers grown past this (a large request, a burst of pipelined ones) are given back when the connection goes
// idle; when it closes, everything past kKeepOnClose is. Steady keep-alive traffic never grows them this far,
// so it allocates nothing.
constexpr std::size_t kKeepCapacity = 64 * 1024;
constexpr std::size_t kKeepOnClose = 8 * 1024;

// "address:port", "[v6]:port", or "-:0" for an address of no kind a peer has.
void describe_address(const sockaddr_storage& ss, char* out, std::size_t cap) noexcept {
  char host[INET6_ADDRSTRLEN] = "-";
  unsigned port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
  }
  std::snprintf(out, cap, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

// "address:port" of the peer, for the access log (one getpeername per connection, only when logging).
void describe_peer(int fd, char* out, std::size_t cap) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) ss.ss_family = AF_UNSPEC;
  describe_address(ss, out, cap);
}
}  // namespace

bool Connection::open(int fd, std::uint32_t slot, SSL_CTX* tls, bool proxy) noexcept {
  if (!t_.open(fd, slot, tls, proxy)) return false;
  session_ = &h1_;
  h1_.start();
  shed_ = false;
  peer_[0] = '\0';
  if (ctx_->access_log) describe_peer(fd, peer_, sizeof peer_);
  update_timer();
  return true;
}

void Connection::switch_to_h2(const char* magic, char* data, std::size_t n) {
  if (!h2_) h2_ = std::make_unique<Http2Session>(*ctx_, *this, t_);
  if (!h2_->start()) throw std::bad_alloc();
  session_ = h2_.get();
  if (ctx_->metrics) ctx_->metrics->http2_connections.add();
  if (magic) {  // the preface HTTP/1.1 recognised: nghttp2 checks it again, as it would any client's
    char copy[24];
    std::memcpy(copy, magic, sizeof copy);
    h2_->on_bytes(copy, sizeof copy);
  }
  if (n) h2_->on_bytes(data, n);
}

void Connection::update_waits() noexcept {
  t_.update_recv(session_->input_stuck(t_.recv_paused()));
  update_timer();
}

// The deadline that applies now: the transport's own (linger, send, a stalled handshake), else the session's.
// Set only when the kind changes: a head trickling in keeps the deadline of its first byte (slowloris), while any
// response resets the idle deadline. Output that makes no progress has the send deadline (restarted by every
// completion that moved bytes); a request its handler holds has the handler deadline, on a list of its own.
void Connection::update_timer() noexcept {
  Timer want;
  if (!t_.deadline(want)) want = session_->deadline();
  if (want == Timer::Idle && timer_link.which != Timer::Idle) {
    t_.release_buffers(kKeepCapacity);
    session_->release_buffers(kKeepCapacity);
  }
  const bool progress = t_.take_send_progress();
  // A send being checked (SendCheck) stays on that check until a completion moves bytes.
  const bool checking = want == Timer::Send && timer_link.which == Timer::SendCheck && !progress;
  if (!checking && (timer_link.which != want || (want == Timer::Send && progress)))
    ctx_->timers.set(*this, want, ctx_->now_ms);
}

void Connection::on_timeout(Timer t) noexcept {
  if (t == Timer::Handler) return session_->on_timeout(t);
  if ((t == Timer::Send || t == Timer::SendCheck) && t_.is_open() && t_.sending() && t_.socket_drained(t == Timer::Send)) {
    // A send completes only when the kernel has room for more (a third of the buffer free), which for a slow but
    // steady reader of a large answer can take longer than the deadline: the socket's own queue shrinking is
    // progress too. Looked at only here, at a deadline, never per send.
    ctx_->timers.set(*this, t == Timer::Send ? Timer::SendCheck : Timer::Send, ctx_->now_ms);
    return;
  }
  if ((t == Timer::Send || t == Timer::SendCheck) && t_.is_open() && !t_.sending() && session_->on_send_timeout())
    return;
  if ((t == Timer::Send || t == Timer::SendCheck) && ctx_->metrics) ctx_->metrics->send_timeouts.add();
  if (!t_.is_open() || (t != Timer::Header && t != Timer::Body)) {
    abort();  // idle, linger, or output that made no progress
    return;
  }
  if (t_.proxy_pending()) {  // no PROXY header yet: nothing to answer in, nobody known to answer
    t_.proxy_failed();
    return;
  }
  if (t_.tls().active() && !t_.tls().established()) {  // no HTTP yet to answer in
    t_.tls_failed();
    return;
  }
  session_->on_timeout(t);
}

void Connection::end(bool reset) noexcept {
  if (t_.state() == State::Closing || t_.state() == State::Free) return;
  session_->on_abort();
  ctx_->timers.clear(*this);
  ctx_->handler_timers.clear(*this);
  if (reset) t_.reset_now();
  else t_.close_now();
}

void Connection::on_released() noexcept {
  session_->on_released();
  t_.release_buffers(kKeepOnClose);
  session_->release_buffers(kKeepOnClose);
}

void Connection::teardown() noexcept {
  ctx_->timers.clear(*this);
  ctx_->handler_timers.clear(*this);
  t_.teardown();
}

void Connection::shed() noexcept {
  if (shed_ || t_.state() != State::Free) return;
  t_.release_buffers(0);
  h1_.release_buffers(0);
  h1_.shed();
  h2_.reset();  // its nghttp2 session is gone already; its spare streams go now
  shed_ = true;
}

unsigned Connection::loop_index() const noexcept { return ctx_->loop_index; }

TlsInfo Connection::tls_info() const noexcept {
  if (!t_.tls().active()) return {};
  return {true, t_.tls().version(), t_.tls().peer_subject()};
}

void Connection::on_proxy_source(const sockaddr_storage& a) noexcept { describe_address(a, peer_, sizeof peer_); }

std::string_view Connection::peer() const noexcept {
  if (!peer_[0] && t_.fd() >= 0) describe_peer(t_.fd(), peer_, sizeof peer_);
  return peer_;
}

}  // namespace userd::server
