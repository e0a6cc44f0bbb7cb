// server/http1_session.cpp: the HTTP/1.1 session. Requests are parsed straight out of the bytes the transport
// hands in; only an unfinished request (or requests queued behind one awaiting its answer) is copied into the
// session's own buffer, so a receive buffer goes back to the kernel as soon as the transport's call returns.
#include "libuserd/server/http1_session.hpp"

#include <cstdio>
#include <cstring>

#include "libuserd/server/connection.hpp"

namespace userd::server {
namespace {
// Input backpressure: when a request waits for its handler and more than kInHighWater of pipelined input sits
// behind it, the socket is no longer read; reading resumes below kInLowWater.
constexpr std::size_t kInHighWater = 64 * 1024;
constexpr std::size_t kInLowWater = 16 * 1024;
// A static body this large is sent from where it lives (sendmsg with head and body iovecs) instead of being
// copied next to its head. Measured on the 3.7 KB dataset (benchmarks/NOTES.md): 3 % less CPU per request on
// io_uring, equal on epoll, and no 4 KiB copy per connection and queue. Tiny bodies are cheaper to copy.
constexpr std::size_t kCopyBelow = 1024;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
// RFC 9113 3.4: what an HTTP/2 client with prior knowledge sends first.
constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

http::ConnectionHeader connection_header(bool keep_alive, std::uint8_t minor) noexcept {
  if (!keep_alive) return http::ConnectionHeader::Close;
  return minor == 0 ? http::ConnectionHeader::KeepAlive : http::ConnectionHeader::None;
}
}  // namespace

void Http1Session::start() noexcept {
  in_dispatch_ = draining_ = ready_due_ = false;
  fresh_ = ctx_->h2 != nullptr;
  set_awaiting(false);
  reader_.reset(ctx_->max_body);
  reader_.stop_at_head(true);
  continue_sent_ = false;
  streaming_ = writable_due_ = inbox_waits_ = false;
  admitted_ = body_unread_ = in_feed_ = body_expect_ = false;
  body_.drop();
  senc_.release();
}

// Off-loop senders check this before queueing an answer (Worker::post): the request a Responder names is still
// awaited only while its token is published. One relaxed store per change, on the loop thread.
void Http1Session::set_awaiting(bool on) noexcept {
  awaiting_ = on;
  if (!on) body_.drop();  // answered: the rest of a streamed body is nobody's, and is not read
  t_->hold(on);
  if (ctx_->awaited)
    ctx_->awaited[t_->slot()].store(on ? awaited_token(t_->gen(), seq_) : 0, std::memory_order_relaxed);
}

void Http1Session::after_output() noexcept {
  t_->flush();
  conn_->update_waits();
}

Timer Http1Session::deadline() const noexcept {
  // A streamed body's deadline runs between chunks while its consumer takes them (feed re-arms it).
  if (body_.active()) return body_.wants() ? Timer::Body : Timer::None;
  if (awaiting_) return Timer::None;
  if (reader_.head_done()) return Timer::Body;
  if (!in_.empty()) return Timer::Header;
  return Timer::Idle;
}

bool Http1Session::input_stuck(bool paused) const noexcept {
  return !reading() && in_.size() > (paused ? kInLowWater : kInHighWater);
}

void Http1Session::release_buffers(std::size_t keep) noexcept {
  for (core::ByteBuffer* b : {&in_, &ex_.log_request}) {
    if (b->capacity() <= keep || !b->empty()) continue;
    ctx_->released_bytes += b->capacity();
    b->release();
  }
}

void Http1Session::shed() noexcept {
  if (!decode_.capacity()) return;
  ctx_->released_bytes += decode_.capacity();
  decode_.release();
}

void Http1Session::drain() noexcept {
  const bool idle = !awaiting_ && !t_->sending() && !t_->queued() && in_.empty() && !reader_.head_done();
  if (idle) {
    conn_->abort();
    return;
  }
  draining_ = true;
  if (awaiting_) req_keep_alive_ = false;  // its answer says Connection: close
  else if (!reader_.head_done() && in_.empty()) t_->close_after_flush();  // only output left
  t_->guarded([&] { after_output(); });
}

void Http1Session::on_timeout(Timer t) noexcept {
  if (t == Timer::Handler) {
    if (streaming_ && (writable_ || inbox_waits_ || t_->queued() > Transport::kOutLowWater)) {
      // The producer waits for us: held back by a client that reads slowly (the send deadline judges that
      // client), not stalled on its own.
      ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
      return;
    }
    if (streaming_) {  // the producer stopped writing: the body cannot be finished
      if (ctx_->metrics) ctx_->metrics->handler_timeouts.add();
      conn_->abort();
      return;
    }
    // The handler keeps its Responder, which no longer matches a request awaiting an answer: a no-op.
    if (!t_->is_open() || !awaiting_) return;
    body_.fail(ctx_->later, BodyError::Timeout);  // a consumer that held its body paused that long
    set_awaiting(false);
    if (ctx_->metrics) ctx_->metrics->handler_timeouts.add();
    t_->guarded([&] {
      write_error_status(503, "handler timed out");
      resume();
      after_output();
    });
    return;
  }
  if (t == Timer::Body && body_.active()) {  // nothing arrived between two chunks in time
    t_->guarded([&] {
      body_failed(BodyError::Timeout);
      after_output();
    });
    return;
  }
  // Header or body not complete in time: nothing more is read from this client.
  in_.clear();
  t_->guarded([&] {
    refuse(408, t == Timer::Header ? "request header timeout" : "request body timeout");
    after_output();
  });
}

// A half-closed client may have sent its whole body first (it waits for the answer): only a body that what is
// held cannot finish fails.
bool Http1Session::body_starved() const noexcept {
  return body_.active() && t_->peer_eof() && (body_chunked_ ? in_.empty() : in_.size() < body_left_);
}

void Http1Session::on_eof() noexcept {
  if (!body_starved()) return;
  t_->guarded([&] {
    body_failed(BodyError::ClientGone);
    after_output();
  });
}

void Http1Session::on_abort() noexcept {
  body_.fail(ctx_->later, BodyError::ClientGone);
  streaming_ = false;
  set_awaiting(false);  // from now on alive() and send() say false, from any thread
  writable_ = nullptr;  // what the producer's callback holds goes now
}

void Http1Session::on_released() noexcept {
  set_awaiting(false);
  senc_.release();
  body_.drop();
  admitted_ = body_unread_ = false;
  reader_.reset(ctx_->max_body);
  in_.clear();
  ex_.log_request.clear();
}

bool Http1Session::reading() const noexcept {
  return t_->is_open() && !awaiting_ && !t_->closing_after_flush() && t_->queued() <= Transport::kOutHighWater;
}

// The connection's first bytes: HTTP/2 when they are its preface (recognised across receives, a prefix held in
// in_ meanwhile) or when TLS chose h2; anything else is HTTP/1.1, from its first byte. True: taken.
bool Http1Session::preface(char* data, std::size_t n) {
  if (t_->tls().active()) {
    fresh_ = false;
    if (!t_->tls().alpn_h2()) return false;
    conn_->switch_to_h2(nullptr, data, n);
    return true;
  }
  const std::size_t have = in_.size();
  const std::size_t take = std::min(n, kPreface.size() - have);
  if (std::memcmp(data, kPreface.data() + have, take) != 0) {
    fresh_ = false;
    return false;
  }
  if (have + take < kPreface.size()) {
    in_.append(data, n);
    conn_->update_waits();
    return true;
  }
  fresh_ = false;
  in_.clear();
  conn_->switch_to_h2(kPreface.data(), data + take, n - take);
  return true;
}

void Http1Session::on_bytes(char* data, std::size_t n) {
  if (fresh_ && preface(data, n)) return;
  // The last answer is out or on its way: what the client still sends (an unread body, requests after a
  // close) is dropped as it comes, for as long as the transport lingers.
  if (t_->closing_after_flush()) return;
  if (in_.empty()) {
    std::size_t used = process(data, n);
    if (used < n) keep_unfinished(data + used, n - used);
  } else {
    // One request (head + body) plus the pipelined input that arrives while the receive is being ended.
    if (in_.size() + n > ctx_->limits.max_head + reader_.max_body() + 4 * kInHighWater) {
      conn_->abort();
      return;
    }
    in_.append(data, n);
    resume();
  }
  t_->set_bulk(body_.active());  // a streamed body in progress is read 64 KiB a receive
  after_output();
}

void Http1Session::on_sent() noexcept {
  t_->guarded([&] {
    resume();
    after_output();
    if (streaming_ && (writable_ || inbox_waits_) && !writable_due_ && t_->queued() <= Transport::kOutLowWater)
      writable_soon();
  });
}

void Http1Session::writable_soon() noexcept {
  writable_due_ = true;
  ctx_->writable_due.push_back({t_->slot(), t_->gen()});
}

void Http1Session::resume() {
  if (body_.active()) body_end_empty();
  if (in_.empty() || !t_->is_open()) return;
  std::size_t used = process(in_.data(), in_.size());
  keep_unfinished(in_.data() + used, in_.size() - used);
  if (body_starved()) body_failed(BodyError::ClientGone);
}

// Moves the unfinished request at req into in_: the head, the body decoded so far, then the undecoded rest.
// req may point into in_ itself.
void Http1Session::keep_unfinished(char* req, std::size_t avail) {
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

std::size_t Http1Session::process(char* buf, std::size_t len) {
  std::size_t pos = 0;
  while (pos < len) {
    if (body_.active()) {  // a streamed body: to its consumer while it wants it, else it waits as bytes
      if (!body_.wants() || !t_->is_open()) break;
      pos += feed(buf + pos, len - pos);
      if (t_->closing_after_flush()) return len;  // answered or failed mid-body: the rest is dropped
      continue;
    }
    if (!reading()) break;
    char* req = buf + pos;
    const http::ReadStep step = reader_.read(req, len - pos, ctx_->limits);
    if (step.status == http::ReadStatus::Bad) {
      write_error(step.error);
      return len;
    }
    if (step.status == http::ReadStatus::Head) {
      if (admit(reader_.head())) {  // a streamed route's handler has run: the body goes to it from here
        pos += step.total;
        reader_.reset(ctx_->max_body);
      }
      if (t_->closing_after_flush()) return len;
      continue;
    }
    if (step.status != http::ReadStatus::Done) {
      if (!admitted_) write_continue();  // a body read before it is refused (404, a bad escape): as asked
      break;
    }
    continue_sent_ = false;
    dispatch(reader_.head(), reader_.body(req));
    pos += step.total;
  }
  return pos;
}

// A request with a body to come, its head in: routed, and its middleware run, now. True when its route streams
// the body and its handler ran (the session now feeds the body to it); false when the message reads on (a
// buffered route whose middleware passed, or one answered once the body is in: 404, 405, 400, 413 by the
// reader) or was answered here.
bool Http1Session::admit(const http::RequestHead& head) {
  const Router::Match m = Dispatch::route(*ctx_, ex_, head, params_);
  if (!m.handler) return false;  // 404 or 405 once the body is in, as for any request
  const std::uint64_t limit = Dispatch::body_limit(*ctx_, *m.options);
  reader_.set_max_body(limit);
  if (!head.chunked && head.content_length > limit) return false;  // the reader answers 413 next
  Request request = Dispatch::request(*ctx_, head, {});
  if (!Dispatch::prepare(request, *conn_, head, params_, decode_)) {
    reader_.set_max_body(ctx_->max_body);  // answered 400 once the body is in
    return false;
  }
  ++seq_;
  req_keep_alive_ = head.keep_alive && !draining_;
  req_minor_ = head.minor;
  req_head_only_ = head.method == "HEAD";
  req_coding_ = ctx_->compress ? ctx_->compress->accepted({head.headers.data(), head.header_count}) : http::Coding::Identity;
  body_unread_ = true;
  const bool streamed = m.options->stream_body;
  if (streamed) {
    Dispatch::stream_body(request, *ctx_, t_->slot(), t_->gen(), seq_);
    body_.start();
    body_chunked_ = head.chunked;
    body_left_ = head.content_length;
    if (body_chunked_) chunks_.reset(limit);
    body_expect_ = head.expect_continue && head.minor == 1;
  }
  set_awaiting(true);
  in_dispatch_ = true;
  Responder res = Dispatch::responder(*ctx_, t_->slot(), t_->gen(), seq_);
  bool go_on = false;
  bool ok = Dispatch::admit(*ctx_, request, res, go_on);
  if (ok && go_on && streamed) ok = Dispatch::handle(*m.handler, request, res);
  in_dispatch_ = false;
  if (!go_on) body_.drop();  // refused (or threw) before the body was asked for
  if (ok && go_on && !streamed) {
    admitted_ = true;
    admitted_handler_ = m.handler;
    set_awaiting(false);
    write_continue();
    return false;
  }
  handled(ok);
  return streamed && go_on && t_->is_open() && !t_->closing_after_flush();
}

// After a handler (or middleware) ran: a throw is a 500 if nothing was sent yet, else the connection ends; a
// request still awaited gets its handler deadline.
void Http1Session::handled(bool ok) {
  if (!ok) {
    body_.drop();
    if (streaming_) {
      conn_->abort();  // the head and maybe some body are out: a 500 now would land inside the body
    } else if (awaiting_) {
      set_awaiting(false);
      write_error_status(500, "internal error");
    }
  }
  arm_handler();
}

// The handler deadline runs while a request is awaited, except while its streamed body flows to a consumer
// that takes it (the body deadline judges the client then).
void Http1Session::arm_handler() noexcept {
  if (!awaiting_ || !t_->is_open()) return ctx_->handler_timers.clear(*conn_);
  if (body_.wants()) return ctx_->handler_timers.clear(*conn_);
  if (conn_->handler_link.which == Timer::None) ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
}

// The next piece of a streamed body, from p: decoded (chunked, in place) and handed to the consumer. Returns the
// input bytes used.
std::size_t Http1Session::feed(char* p, std::size_t n) {
  std::string_view chunk;
  bool last;
  std::size_t used;
  if (!body_chunked_) {
    used = std::size_t(std::min<std::uint64_t>(n, body_left_));
    body_left_ -= used;
    chunk = {p, used};
    last = body_left_ == 0;
  } else {
    const http::ChunkStep step = chunks_.decode(p, n, p);
    if (step.status == http::ChunkStatus::Bad || step.status == http::ChunkStatus::TooLarge) {
      body_failed(step.status == http::ChunkStatus::Bad ? BodyError::Malformed : BodyError::TooLarge);
      return n;
    }
    used = step.consumed;
    chunk = {p, step.produced};
    last = step.status == http::ChunkStatus::Done;
    if (chunk.empty() && !last) return used;
  }
  if (last) body_unread_ = false;
  if (conn_->timer_link.which == Timer::Body) ctx_->timers.set(*conn_, Timer::Body, ctx_->now_ms);
  in_feed_ = true;
  const bool ok = body_.deliver(chunk, last);
  in_feed_ = false;
  if (!t_->is_open()) return n;
  handled(ok);
  return used;
}

// A streamed body that cannot complete: its consumer is told; the request, unless answered, gets the error's
// status; the connection closes after it (the rest of the body is never read).
void Http1Session::body_failed(BodyError e) {
  body_.fail(ctx_->later, e);
  body_unread_ = true;
  if (streaming_) {
    conn_->abort();
    return;
  }
  if (!awaiting_) {
    t_->close_after_flush();
    return;
  }
  set_awaiting(false);
  ctx_->handler_timers.clear(*conn_);
  switch (e) {
    case BodyError::Timeout: write_error_status(408, "request body timeout"); break;
    case BodyError::TooLarge: write_error_status(413, "request body too large"); break;
    case BodyError::Malformed: write_error_status(400, "invalid chunked encoding"); break;
    case BodyError::ClientGone: t_->close_after_flush(); break;
  }
}

// A BodyReader's call. One that makes the consumer want bytes (on_data, resume) reads on later in the turn,
// never inside the caller's stack, which may be the consumer itself or another connection's handler.
bool Http1Session::body(std::uint32_t id, BodyCall& c) {
  if (id != seq_ || !body_.active() || !t_->is_open()) return false;
  const bool wanted = body_.wants();
  const bool r = body_.apply(c);
  if (c.op == BodyCall::Op::Alive) return r;
  t_->guarded([&] {
    if (body_.asked() && body_expect_) {  // RFC 9110 10.1.1: the client waits for this before sending its body
      body_expect_ = false;
      t_->out().append(kContinue);
    }
    arm_handler();
    if (wanted == body_.wants() && c.op != BodyCall::Op::OnData) return;
    if (!in_dispatch_ && !in_feed_) {
      if (body_.wants()) continue_later();
      after_output();
    }
  });
  return r;
}

void Http1Session::count(int status, std::size_t body_bytes) { Dispatch::record(*ctx_, ex_, *conn_, status, body_bytes); }

void Http1Session::dispatch(const http::RequestHead& head, std::string_view body) {
  if (admitted_) {  // its middleware ran at its head; the head may have moved since: its captures are found again
    admitted_ = false;
    body_unread_ = false;
    (void)ctx_->router->find(head.method, head.path, params_);
    Request request = Dispatch::request(*ctx_, head, body);
    (void)Dispatch::prepare(request, *conn_, head, params_, decode_);  // it passed at the head
    set_awaiting(true);
    in_dispatch_ = true;
    const bool ok = Dispatch::handle(*admitted_handler_, request, Dispatch::responder(*ctx_, t_->slot(), t_->gen(), seq_));
    in_dispatch_ = false;
    handled(ok);
    return;
  }
  ++seq_;
  req_keep_alive_ = head.keep_alive && !draining_;
  req_minor_ = head.minor;
  req_head_only_ = head.method == "HEAD";
  req_coding_ = ctx_->compress ? ctx_->compress->accepted({head.headers.data(), head.header_count}) : http::Coding::Identity;
  const Router::Match m = Dispatch::route(*ctx_, ex_, head, params_);
  if (!m.handler) {
    if (m.allow.empty()) {
      write_error_status(404, "not found");
    } else {
      const Header allow{"Allow", m.allow};
      write_error_status(405, "method not allowed", {&allow, 1});
    }
    return;
  }
  Request request = Dispatch::request(*ctx_, head, body);
  if (!Dispatch::prepare(request, *conn_, head, params_, decode_)) {
    write_error_status(400, "malformed percent-escape in the path or query");
    return;
  }
  // A streamed route's request without a body (one with a body was admitted at its head): its consumer gets the
  // empty end once it asks.
  const bool streamed = m.options->stream_body;
  if (streamed) {
    Dispatch::stream_body(request, *ctx_, t_->slot(), t_->gen(), seq_);
    body_.start();
    body_chunked_ = body_expect_ = false;
    body_left_ = 0;
  }
  set_awaiting(true);
  in_dispatch_ = true;
  const bool ok = Dispatch::run(*ctx_, *m.handler, request, Dispatch::responder(*ctx_, t_->slot(), t_->gen(), seq_));
  in_dispatch_ = false;
  handled(ok);
  if (streamed) body_end_empty();
}

// A streamed body with nothing in it: its consumer gets the end as soon as it wants it.
void Http1Session::body_end_empty() {
  if (body_.wants() && !body_chunked_ && body_left_ == 0 && t_->is_open()) (void)feed(nullptr, 0);
  if (t_->is_open()) arm_handler();
}

bool Http1Session::stream_begin(std::uint32_t seq, const Response& head) noexcept {
  if (!awaiting_ || streaming_ || seq != seq_ || !t_->is_open()) return false;
  bool ok = false;
  t_->guarded([&] {
    // Chunked to HTTP/1.1; to HTTP/1.0 the close ends the body.
    Coded coded;
    const bool head_ok =
        write_head(head, req_minor_ == 1 ? http::BodyFraming::Chunked : http::BodyFraming::Close, coded);
    // Refused (write_head wrote a 500 instead), or HEAD, 204, 304: the head is the whole response. The stream is
    // over now, so write() and alive() say false at once, and a producer driven by on_writable stops instead of
    // spinning on writes that take nothing and always succeed.
    if (!head_ok || req_head_only_ || !http::status_has_body(head.status)) {
      set_awaiting(false);
      ctx_->handler_timers.clear(*conn_);
      if (head_ok) {
        if (!req_keep_alive_) t_->close_after_flush();
        count(head.status, 0);
      }
      if (!in_dispatch_ && !in_feed_) continue_later();
      after_output();
      ok = head_ok;
      return;
    }
    streaming_ = true;
    if (ctx_->awaited) publish_streaming(ctx_->awaited[t_->slot()], t_->gen(), seq_);
    stream_status_ = head.status;
    stream_bytes_ = 0;
    // Answered, as far as the client knows; a producer that stops writing is cut at the same deadline.
    ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
    after_output();
    ok = true;
  });
  return ok;
}

bool Http1Session::stream_write(std::uint32_t seq, std::string_view data, bool end,
                                std::span<const Header> trailers) noexcept {
  if (!end && t_->queued() > Transport::kOutHighWater) return false;
  return stream_append(seq, data, end, trailers);
}

bool Http1Session::stream_write_taken(std::uint32_t seq, std::string_view data) noexcept {
  return stream_append(seq, data, false, {});
}

bool Http1Session::stream_append(std::uint32_t seq, std::string_view data, bool end,
                                 std::span<const Header> trailers) noexcept {
  if (!streaming_ || seq != seq_ || !t_->is_open()) return false;
  bool ok = false;
  t_->guarded([&] {
    Transport::OutQueue& q = t_->out();
    const std::size_t from = q.bytes.size();
    const bool body = !req_head_only_ && http::status_has_body(stream_status_);
    if (senc_ && body) {
      if (!stream_coded(data, end)) return;  // the encoder failed: the connection is reset
    } else if (!end && body && !data.empty()) {
      append_body(data);
    }
    if (end) {
      if (body && req_minor_ == 1) {  // the last chunk, then the trailer section (RFC 9112 7.1.2)
        q.bytes.append("0\r\n", 3);
        for (const Header& h : trailers) {
          q.bytes.append(h.name);
          q.bytes.append(": ", 2);
          q.bytes.append(h.value);
          q.bytes.append("\r\n", 2);
        }
        q.bytes.append("\r\n", 2);
      }
      streaming_ = false;
      set_awaiting(false);
      writable_ = nullptr;
      senc_.release();
      ctx_->handler_timers.clear(*conn_);
      if (!req_keep_alive_) t_->close_after_flush();
      count(stream_status_, stream_bytes_);
    } else {
      ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
    }
    q.note_bytes(from);
    if (end && !in_dispatch_ && !in_feed_) continue_later();
    after_output();
    ok = true;
  });
  return ok;
}

// A piece of a streamed body: one chunk to HTTP/1.1, as it is to HTTP/1.0 (the close ends it).
void Http1Session::append_body(std::string_view data) {
  if (data.empty()) return;
  Transport::OutQueue& q = t_->out();
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

// A compressed stream's write: data coded and flushed, so the client can decode all it got; at the end, the
// coding's end.
bool Http1Session::stream_coded(std::string_view data, bool end) {
  core::ByteBuffer& z = ctx_->compress->scratch();
  z.clear();
  if (!senc_.get()->write(data, end, z)) {  // out of memory: the body cannot be finished
    Dispatch::refused(*ctx_, "compression failed");
    (void)stream_abort(seq_);
    return false;
  }
  append_body({z.data(), z.size()});
  ctx_->compress->trim();
  return true;
}

void Http1Session::stream_on_writable(std::uint32_t seq, std::function<void()> fn) {
  if (!streaming_ || seq != seq_ || !t_->is_open()) return;
  writable_ = std::move(fn);
  if (t_->queued() <= Transport::kOutLowWater && !writable_due_) writable_soon();
}

// A reset, not a close: to an HTTP/1.0 client the close is the body's end, and a chunked body cut at a chunk's
// boundary is indistinguishable from one still on its way until the client's own timeout.
bool Http1Session::stream_abort(std::uint32_t seq) noexcept {
  if (!streaming_ || seq != seq_ || !t_->is_open()) return false;
  streaming_ = false;
  set_awaiting(false);
  writable_ = nullptr;
  senc_.release();
  count(stream_status_, stream_bytes_);
  conn_->reset();
  return true;
}

bool Http1Session::stream_backed_up(std::uint32_t) const noexcept {
  return streaming_ && t_->is_open() && t_->queued() > Transport::kOutHighWater;
}

void Http1Session::run_writable() noexcept {
  writable_due_ = false;
  if (!streaming_ || !writable_ || !t_->is_open()) return;
  std::function<void()> fn = std::move(writable_);
  writable_ = nullptr;
  try {
    fn();
  } catch (...) {
    conn_->abort();  // a producer that throws mid-stream: the body cannot be finished
  }
}

// An answer that came from outside this session's own dispatch (another thread, an upstream, another
// connection's handler, a writable callback): the requests queued behind it are parsed and their handlers run
// later in the turn (Worker::run_continuations), never on the stack of whoever answered, which may be another
// connection's handler holding views and state that those handlers would overwrite.
void Http1Session::continue_later() {
  if (ready_due_) return;
  ctx_->ready.push_back({t_->slot(), t_->gen()});
  ready_due_ = true;
}

void Http1Session::run_ready() noexcept {
  ready_due_ = false;
  if (!t_->is_open()) return;
  t_->guarded([&] {
    resume();
    after_output();
  });
}

bool Http1Session::reply(std::uint32_t seq, const Response& r) noexcept {
  if (!awaiting_ || streaming_ || seq != seq_ || !t_->is_open()) return false;
  set_awaiting(false);
  ctx_->handler_timers.clear(*conn_);
  t_->guarded([&] {
    write_response(r);
    if (!in_dispatch_ && !in_feed_) continue_later();  // answered later: carry on with requests that queued up meanwhile
  });
  return true;
}

// A response that would corrupt the stream (CR/LF in a header) or contradict the server's framing is not sent;
// the client gets a 500 instead.
void Http1Session::refuse_response(std::string_view why) {
  Dispatch::refused(*ctx_, why);
  write_error_status(500, "invalid response from handler");
}

// The status line and headers of r, framed as asked (Length: r.body's). A head the handler got wrong is not
// written: refuse_response writes a 500 instead, and this returns false.
bool Http1Session::write_head(const Response& r, http::BodyFraming framing, Coded& coded) {
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
  if (check.close || framing == http::BodyFraming::Close || body_unread_) req_keep_alive_ = false;
  Transport::OutQueue& q = t_->out();
  const std::size_t from = q.bytes.size();
  http::ResponseHead h;
  h.status = r.status;
  h.content_type = check.has_content_type ? std::string_view() : r.content_type;
  h.content_length = r.body.size();
  h.headers = r.headers;
  h.date = ctx_->date.value();
  h.connection = connection_header(req_keep_alive_, req_minor_);
  h.framing = framing;
  coded = {http::Coding::Identity, false, r.body, r.body_is_static};
  if (ctx_->compress) {
    if (framing == http::BodyFraming::Length) {
      coded = ctx_->compress->plan(r, check, req_coding_, req_head_only_);
      h.content_length = coded.body.size();
    } else {
      senc_ = ctx_->compress->stream(r, check, req_coding_, req_head_only_, coded.vary);
      if (senc_) coded.coding = senc_.get()->coding();
    }
    if (coded.coding != http::Coding::Identity) h.content_encoding = http::coding_name(coded.coding);
    h.vary_accept_encoding = coded.vary;
  }
  http::write_response_head(q.bytes, h);
  q.note_bytes(from);
  return true;
}

void Http1Session::write_response(const Response& r) {
  Coded c;
  if (!write_head(r, http::BodyFraming::Length, c)) return;
  Transport::OutQueue& q = t_->out();
  const bool with_body = !req_head_only_ && http::status_has_body(r.status) && !c.body.empty();
  if (with_body && c.body_static && c.body.size() >= kCopyBelow) q.append_external(c.body.data(), c.body.size());
  else if (with_body) q.append(c.body);
  if (ctx_->compress) ctx_->compress->trim();
  if (!req_keep_alive_) t_->close_after_flush();
  count(r.status, with_body ? c.body.size() : 0);
}

void Http1Session::write_error_status(int status, std::string_view message, std::span<const Header> extra) {
  if (body_unread_) req_keep_alive_ = false;  // answered before its body was read: the rest is not read
  Transport::OutQueue& q = t_->out();
  const std::size_t from = q.bytes.size();
  const std::size_t body = http::write_error_response(q.bytes, status, message, ctx_->date.value(),
                                                      connection_header(req_keep_alive_, req_minor_), req_head_only_, extra);
  q.note_bytes(from);
  if (!req_keep_alive_) t_->close_after_flush();
  count(status, body);
}

// A request we cannot trust the framing of: answer, then close (the rest of the stream is not read).
void Http1Session::write_error(http::HttpError e) { refuse(http::status_for(e), http::describe(e)); }

// The answer to something that never became a routed request (bad framing, a deadline): an HTTP/1.1 error that
// closes the connection, whatever the request being read had asked for.
void Http1Session::refuse(int status, std::string_view message) {
  reader_.reset(ctx_->max_body);
  ex_.route = ctx_->router->route_count();
  ex_.protocol = 1;
  req_keep_alive_ = false;
  req_head_only_ = false;
  req_minor_ = 1;
  write_error_status(status, message);
}

// RFC 9110 10.1.1: a client that sent "Expect: 100-continue" may wait for this before sending the body.
void Http1Session::write_continue() {
  if (!reader_.head_done() || !reader_.head().expect_continue || continue_sent_ || reader_.head().minor == 0) return;
  continue_sent_ = true;
  t_->out().append(kContinue);
}

}  // namespace userd::server
