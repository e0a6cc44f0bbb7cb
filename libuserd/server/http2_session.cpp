// server/http2_session.cpp: the HTTP/2 session. nghttp2's callbacks only collect a stream's head and body and
// mark it ready; requests are dispatched after mem_recv returns (a stream reset in the same batch is skipped),
// and frames go out through mem_send only while the transport's queue is below its high-water mark, so that
// nghttp2's own flood guards (outbound ACKs, SETTINGS) see what the client makes us queue.
#include "libuserd/server/http2_session.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <new>
#include <utility>

#include "libuserd/http/response_writer.hpp"
#include "libuserd/server/connection.hpp"
#include "libuserd/server/exchanges.hpp"

namespace userd::server {
namespace {
// RFC 9113 8.2.2: connection-specific fields have no meaning in HTTP/2; a handler's are dropped. Date and
// Content-Length are the server's own.
char lower_ascii(char c) noexcept { return c >= 'A' && c <= 'Z' ? char(c + 32) : c; }

// A field name as HTTP/2 sends it (RFC 9113 8.2.1: lowercase), appended to out.
void append_lower(core::ByteBuffer& out, std::string_view name) {
  const std::size_t at = out.size();
  out.append(name);
  for (std::size_t i = 0; i < name.size(); ++i) out.data()[at + i] = lower_ascii(out.data()[at + i]);
}

// The decimal digits of v into out (at least 20 bytes): their count.
std::size_t decimal(std::uint64_t v, char* out) noexcept {
  char tmp[20];
  std::size_t n = 0;
  do tmp[n++] = char('0' + v % 10);
  while (v /= 10);
  for (std::size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
  return n;
}

bool dropped_in_h2(std::string_view lower) noexcept {
  return lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" ||
         lower == "transfer-encoding" || lower == "upgrade" || lower == "date" || lower == "content-length";
}
}  // namespace

// nghttp2's callbacks: user_data is the session.
struct H2Callbacks {
  static Http2Session& self(void* user) { return *static_cast<Http2Session*>(user); }
  static Http2Session::Stream* stream(nghttp2_session* s, std::int32_t id) {
    return static_cast<Http2Session::Stream*>(nghttp2_session_get_stream_user_data(s, id));
  }
  // The stream whose header block is being read: each of its fields would otherwise cost a stream-map lookup.
  static Http2Session::Stream* reading(nghttp2_session* s, Http2Session& h, std::int32_t id) {
    return h.reading_ && h.reading_->id == id ? h.reading_ : stream(s, id);
  }

  // RFC 9113 5.1.1: a new stream's id is above every earlier one. nghttp2 1.52 ignores HEADERS on a lower id it
  // no longer knows (h2spec http2/5.1.1/2); this makes it the connection error it is.
  static int begin_frame(nghttp2_session* s, const nghttp2_frame_hd* hd, void* user) {
    Http2Session& h = self(user);
    if (hd->type == NGHTTP2_HEADERS && (hd->stream_id & 1) && hd->stream_id < h.max_opened_ &&
        !nghttp2_session_find_stream(s, hd->stream_id))
      nghttp2_session_terminate_session(s, NGHTTP2_PROTOCOL_ERROR);
    return 0;
  }

  static int begin_headers(nghttp2_session* s, const nghttp2_frame* f, void* user) {
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    Http2Session& h = self(user);
    h.max_opened_ = std::max(h.max_opened_, f->hd.stream_id);
    Http2Session::Stream* st = h.take_stream();
    if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // resets this stream only
    st->id = f->hd.stream_id;
    st->body_deadline_ms = h.ctx_->now_ms + h.ctx_->timers.duration(Timer::Body);
    nghttp2_session_set_stream_user_data(s, st->id, st);
    h.reading_ = st;
    return 0;
  }

  static int header(nghttp2_session* s, const nghttp2_frame* f, const std::uint8_t* name, std::size_t namelen,
                    const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user) {
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  // trailers: ignored
    Http2Session::Stream* st = reading(s, self(user), f->hd.stream_id);
    if (!st || st->refused) return 0;
    // RFC 9113 6.5.2: each field counts its name, value and 32; the list is bounded like an HTTP/1.1 head.
    st->head_bytes += namelen + valuelen + 32;
    if (st->head_bytes > self(user).ctx_->limits.max_head) {
      st->refused = true;
      st->refuse_status = 431;
      return 0;
    }
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const auto off = std::uint32_t(st->fields.size());
    try {
      st->fields.append(reinterpret_cast<const char*>(name), namelen);
      st->fields.append(reinterpret_cast<const char*>(value), valuelen);
    } catch (const std::bad_alloc&) {
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    const auto voff = std::uint32_t(off + namelen), vlen = std::uint32_t(valuelen);
    if (n == ":method") {
      st->method_off = voff, st->method_len = vlen;
    } else if (n == ":path") {
      st->path_off = voff, st->path_len = vlen;
    } else if (n == ":authority") {
      st->authority_off = voff, st->authority_len = vlen;
    } else if (!n.empty() && n[0] == ':') {
      // :scheme (nghttp2 checks the pseudo-fields themselves)
    } else if (st->field_offsets.size() >= http::kMaxHeaders - 1) {
      st->refused = true;
      st->refuse_status = 431;
    } else {
      try {
        st->field_offsets.push_back({off, std::uint32_t(namelen), voff, vlen});
      } catch (const std::bad_alloc&) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      }
    }
    return 0;
  }

  // Windows are given back by hand (no automatic WINDOW_UPDATE), once bytes are used: at once for a buffered
  // body (its route's limit bounds it) and for what is dropped; for a streamed body when its consumer took them,
  // both its stream's and the connection's, so that what all of a connection's paused consumers hold together
  // is bounded by the connection's window, not by streams times windows.
  static int data_chunk(nghttp2_session* s, std::uint8_t, std::int32_t id, const std::uint8_t* data, std::size_t len,
                        void* user) {
    Http2Session& h = self(user);
    Http2Session::Stream* st = stream(s, id);
    const bool dropped = !st || st->refused || st->body_failed || (st->dispatched && !st->consumer.active());
    if (dropped || !st->streamed) nghttp2_session_consume(s, id, len);
    if (dropped) return 0;  // refused, answered or gone: nobody reads the rest
    st->received += len;
    if (st->received > st->body_limit) {
      if (st->dispatched) {  // its consumer is told, and the request answered 413, after mem_recv
        st->body_failed = true;
        st->body_error = BodyError::TooLarge;
        h.mark_body(*st);
        return 0;
      }
      // Answered now, not at the end of a body that may never end; the stream is then reset (RFC 9113 8.1).
      st->refused = true;
      st->refuse_status = 413;
      return h.mark_ready(*st) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    try {
      st->body.append(reinterpret_cast<const char*>(data), len);
    } catch (const std::bad_alloc&) {
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (st->streamed) {
      st->body_deadline_ms = h.ctx_->now_ms + h.ctx_->timers.duration(Timer::Body);  // between chunks
      h.mark_body(*st);
    }
    return 0;
  }

  static int frame_recv(nghttp2_session* s, const nghttp2_frame* f, void* user) {
    Http2Session& h = self(user);
    const std::uint8_t t = f->hd.type;
    if (t == NGHTTP2_SETTINGS && (f->hd.flags & NGHTTP2_FLAG_ACK)) h.settings_unacked_ = false;
    if (t == NGHTTP2_RST_STREAM && !h.spend(h.reset_tokens_)) return 0;
    const bool no_progress = t == NGHTTP2_PING || t == NGHTTP2_SETTINGS || t == NGHTTP2_WINDOW_UPDATE ||
                             t == NGHTTP2_PRIORITY || t == NGHTTP2_RST_STREAM ||
                             (t == NGHTTP2_DATA && f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM));
    if (no_progress && !h.spend(h.frame_tokens_)) return 0;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
    Http2Session::Stream* st = reading(s, h, f->hd.stream_id);
    if (!st) return 0;
    if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      // A request head with a body to come: routed, and its middleware run, before its body is read.
      if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST || st->head_due || st->refused)
        return 0;
      h.classify(*st);
      st->head_due = true;
      try {
        h.ready_.push_back(st->id);
      } catch (const std::bad_alloc&) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      return 0;
    }
    st->end_seen = true;
    if (st->dispatched && st->streamed) h.mark_body(*st);  // the end goes to its consumer
    return h.mark_ready(*st) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
  }

  static int frame_sent(nghttp2_session* s, const nghttp2_frame* f, void*) {
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
      return 0;
    // Answered before the client sent all of its body (refused, answered early, a 413 or 408): RFC 9113 8.1
    // lets the server stop the rest with a NO_ERROR reset.
    Http2Session::Stream* st = stream(s, f->hd.stream_id);
    if (st && !st->end_seen) nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    return 0;
  }

  static int stream_close(nghttp2_session* s, std::int32_t id, std::uint32_t, void* user) {
    Http2Session::Stream* st = stream(s, id);
    if (!st) return 0;
    nghttp2_session_set_stream_user_data(s, id, nullptr);
    self(user).give_back(st);  // a handler still holding its Responder now holds a no-op
    return 0;
  }

  // DATA bodies are never copied into nghttp2: it asks how much (read), then we queue the frame's header and
  // the body bytes ourselves (send), from where a static body lives or from the stream's copy.
  static ssize_t read(nghttp2_session*, std::int32_t, std::uint8_t*, std::size_t length, std::uint32_t* flags,
                      nghttp2_data_source* src, void*) {
    auto* st = static_cast<Http2Session::Stream*>(src->ptr);
    const std::size_t n = std::min(length, st->resp_len - st->resp_off);
    st->resp_off += n;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->resp_off == st->resp_len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return ssize_t(n);
  }

  static ssize_t stream_read(nghttp2_session* s, std::int32_t id, std::uint8_t*, std::size_t length,
                             std::uint32_t* flags, nghttp2_data_source* src, void*) {
    auto* st = static_cast<Http2Session::Stream*>(src->ptr);
    const std::size_t n = std::min(length, st->sbuf.size() - st->soff);
    if (n == 0 && !st->stream_end) return NGHTTP2_ERR_DEFERRED;  // resumed by the next write
    st->soff += n;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->stream_end && st->soff == st->sbuf.size()) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      // Trailers end the stream instead of this DATA frame (RFC 9113 8.1: a HEADERS frame after the body).
      if (!st->trailer_nva.empty() &&
          nghttp2_submit_trailer(s, id, st->trailer_nva.data(), st->trailer_nva.size()) == 0)
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return ssize_t(n);
  }

  static int send_data(nghttp2_session*, nghttp2_frame* f, const std::uint8_t* framehd, std::size_t length,
                       nghttp2_data_source* src, void* user) {
    auto* st = static_cast<Http2Session::Stream*>(src->ptr);
    Transport::OutQueue& q = self(user).t_->out();
    // read() just moved past this frame's bytes
    const char* body = st->streaming ? st->sbuf.data() + (st->soff - length) : st->resp_body + (st->resp_off - length);
    try {
      q.append({reinterpret_cast<const char*>(framehd), 9});
      if (f->data.padlen > 0) {
        const char pad = char(f->data.padlen - 1);
        q.append({&pad, 1});
      }
      if (st->resp_static) q.append_external(body, length);
      else q.append({body, length});
      if (f->data.padlen > 1) {
        static const char zeros[256] = {};
        q.append({zeros, f->data.padlen - 1});
      }
    } catch (const std::bad_alloc&) {
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    Http2Session& h = self(user);
    h.frame_tokens_ = std::min(h.frame_tokens_ + 2, Http2Session::kFrameBurst);  // each DATA earns a WINDOW_UPDATE
    st->framed_ms = h.ctx_->now_ms;
    if (st->streaming && st->soff == st->sbuf.size()) {  // all framed (copied into the queue): start over
      st->sbuf.clear();
      st->soff = 0;
    }
    return 0;
  }
};


namespace {
constexpr std::size_t kStreamBuffer = 64 * 1024;  // a stream's written-but-unframed bytes, before write() says false
// Receive windows. A streamed body's stream gets kStreamedWindow (what its consumer may have waiting, at most)
// so that an upload is not held to 64 KiB a round trip; the connection's is wide enough for a few of them at
// once, and bounds nothing we hold (each stream's own window does).
constexpr std::int32_t kStreamedWindow = 256 * 1024;
constexpr std::int32_t kConnectionWindow = 1 << 20;
constexpr std::size_t kHeader = 16;  // keeps nghttp2's blocks 16-byte aligned, as malloc's
constexpr std::uint8_t kLarge = 0xff;
}  // namespace

H2Pool::H2Pool() noexcept {
  mem_.mem_user_data = this;
  mem_.malloc = [](std::size_t n, void* self) { return static_cast<H2Pool*>(self)->alloc(n); };
  mem_.free = [](void* p, void* self) { static_cast<H2Pool*>(self)->free(p); };
  mem_.calloc = [](std::size_t k, std::size_t n, void* self) -> void* {
    if (n && k > SIZE_MAX / n) return nullptr;
    void* p = static_cast<H2Pool*>(self)->alloc(k * n);
    if (p) std::memset(p, 0, k * n);
    return p;
  };
  mem_.realloc = [](void* p, std::size_t n, void* self) { return static_cast<H2Pool*>(self)->realloc(p, n); };
}

H2Pool::~H2Pool() {
  for (Free*& f : free_)
    while (f) std::free(reinterpret_cast<char*>(std::exchange(f, f->next)) - kHeader);
}

void* H2Pool::alloc(std::size_t n) noexcept {
  const unsigned w = n <= (std::size_t{1} << kMinShift) ? kMinShift : unsigned(std::bit_width(n - 1));
  const unsigned c = std::min(w - kMinShift, kClasses);  // the smallest class that holds n, or kClasses: too large
  char* block;
  if (c == kClasses) {
    if (n > SIZE_MAX - kHeader || !(block = static_cast<char*>(std::malloc(kHeader + n)))) return nullptr;
    block[0] = char(kLarge);
    return block + kHeader;
  }
  if (Free* f = free_[c]) {
    free_[c] = f->next;
    --count_[c];
    return f;
  }
  if (!(block = static_cast<char*>(std::malloc(kHeader + (std::size_t{1} << (kMinShift + c)))))) return nullptr;
  block[0] = char(c);
  return block + kHeader;
}

void H2Pool::free(void* p) noexcept {
  if (!p) return;
  char* block = static_cast<char*>(p) - kHeader;
  const auto c = std::uint8_t(block[0]);
  if (c == kLarge || count_[c] >= kKeepBytes >> (kMinShift + c)) {
    std::free(block);
    return;
  }
  free_[c] = new (p) Free{free_[c]};
  ++count_[c];
}

void* H2Pool::realloc(void* p, std::size_t n) noexcept {
  if (!p) return alloc(n);
  const auto c = std::uint8_t(static_cast<char*>(p)[-std::ptrdiff_t(kHeader)]);
  if (c == kLarge) {
    if (n > SIZE_MAX - kHeader) return nullptr;
    char* block = static_cast<char*>(std::realloc(static_cast<char*>(p) - kHeader, kHeader + n));
    return block ? block + kHeader : nullptr;
  }
  const std::size_t have = std::size_t{1} << (kMinShift + c);
  if (n <= have) return p;
  void* q = alloc(n);
  if (!q) return nullptr;
  std::memcpy(q, p, have);
  free(p);
  return q;
}

H2Shared::H2Shared() {
  if (nghttp2_session_callbacks_new(&callbacks) != 0 || nghttp2_option_new(&options) != 0) throw std::bad_alloc();
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, H2Callbacks::begin_headers);
  nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, H2Callbacks::begin_frame);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, H2Callbacks::header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, H2Callbacks::data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, H2Callbacks::frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, H2Callbacks::stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, H2Callbacks::frame_sent);
  nghttp2_session_callbacks_set_send_data_callback(callbacks, H2Callbacks::send_data);
  nghttp2_option_set_no_auto_window_update(options, 1);  // data_chunk gives windows back
  // Debian 12 backports both limits into 1.52 (configure-time symbol checks): a budget of received resets
  // (CVE-2023-44487) and of CONTINUATION frames per header block (CVE-2024-28182), as upstream 1.57 and 1.61.
#ifdef USERD_HAVE_NGHTTP2_OPTION_SET_STREAM_RESET_RATE_LIMIT
  nghttp2_option_set_stream_reset_rate_limit(options, 1000, 33);
#endif
#ifdef USERD_HAVE_NGHTTP2_OPTION_SET_MAX_CONTINUATIONS
  nghttp2_option_set_max_continuations(options, 8);
#endif
}

H2Shared::~H2Shared() {
  nghttp2_session_callbacks_del(callbacks);
  nghttp2_option_del(options);
}

Http2Session::~Http2Session() {
  if (s_) nghttp2_session_del(s_);
}

// Budgets (h2o's reset budget, Envoy's ProtocolConstraints): RST_STREAM frames received (CVE-2023-44487: a
// reset frees its stream's concurrency slot at once, so MAX_CONCURRENT_STREAMS alone bounds nothing), and frames
// that make no progress (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, empty DATA). Each refills with
// time, and the frame budget with the work it accompanies (a request, a DATA frame sent); spent, the connection
// ends with GOAWAY ENHANCE_YOUR_CALM.
bool Http2Session::spend(std::uint32_t& tokens) noexcept {
  if (tokens > 0) {
    --tokens;
    return true;
  }
  nghttp2_session_terminate_session(s_, NGHTTP2_ENHANCE_YOUR_CALM);
  return false;
}

void Http2Session::refill() noexcept {
  const std::uint64_t ms = ctx_->now_ms - budget_ms_;
  if (ms < 100) return;
  budget_ms_ = ctx_->now_ms;
  reset_tokens_ = std::uint32_t(std::min<std::uint64_t>(reset_tokens_ + ms * kResetPerSecond / 1000, kResetBurst));
  frame_tokens_ = std::uint32_t(std::min<std::uint64_t>(frame_tokens_ + ms * kFramePerSecond / 1000, kFrameBurst));
}

bool Http2Session::start() noexcept {
  if (nghttp2_session_server_new3(&s_, ctx_->h2->callbacks, this, ctx_->h2->options, ctx_->h2->pool.mem()) != 0)
    return false;
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, ctx_->h2_max_streams},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, std::uint32_t(ctx_->limits.max_head)},
  };
  if (nghttp2_submit_settings(s_, NGHTTP2_FLAG_NONE, settings, 2) != 0) return false;
  if (nghttp2_session_set_local_window_size(s_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow) != 0) return false;
  draining_ = in_recv_ = false;
  settings_unacked_ = true;
  settings_deadline_ms_ = ctx_->now_ms + ctx_->timers.duration(Timer::Header);
  max_opened_ = 0;
  reset_tokens_ = kResetBurst;
  frame_tokens_ = kFrameBurst;
  budget_ms_ = ctx_->now_ms;
  publish();
  return true;
}

// The slot's own token names no request: each stream a handler holds publishes its own (ctx.exchanges).
void Http2Session::publish() noexcept {
  if (ctx_->awaited) ctx_->awaited[t_->slot()].store(0, std::memory_order_relaxed);
  t_->hold(false);
}

// The stream is answered (or can no longer be): answers from other threads for it are refused from now on.
void Http2Session::stop_awaiting(Stream& st) noexcept {
  st.awaiting = false;
  st.consumer.drop();  // answered: the rest of a streamed body is nobody's
  let_go(st);
  if (st.xslot) ctx_->exchanges->unpublish(st.xslot);
}

// The stream is gone: its exchange is reused.
void Http2Session::close_exchange(Stream& st) noexcept {
  if (st.xslot) ctx_->exchanges->close(st.xslot);
  st.xslot = 0;
}

Http2Session::Stream* Http2Session::take_stream() noexcept {
  if (live_.size() >= ctx_->h2_max_streams || draining_) return nullptr;
  try {
    if (spare_.empty()) spare_.push_back(std::make_unique<Stream>());
    live_.reserve(ctx_->h2_max_streams);
    spare_.reserve(live_.size() + spare_.size());  // give_back never grows it
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  Stream* st = spare_.back().release();
  spare_.pop_back();
  st->id = 0;
  st->seq = st->xslot = 0;
  st->ready = st->awaiting = st->answered = st->head_only = st->refused = false;
  st->head_due = st->dispatched = st->admitted = st->end_seen = st->streamed = st->body_due = st->expect = false;
  st->delivering = false;
  st->body_failed = false;
  st->body_limit = ctx_->max_body;
  st->received = 0;
  st->handler = nullptr;
  st->consumer.drop();
  st->refuse_status = 0;
  st->head_bytes = 0;
  st->fields.clear();
  st->field_offsets.clear();
  st->method_len = st->path_len = st->authority_len = 0;
  st->body.clear();
  st->resp_body = nullptr;
  st->resp_len = st->resp_off = 0;
  st->coding = http::Coding::Identity;
  st->senc.release();
  st->ex.protocol = 2;
  st->ex.log_request.clear();
  st->streaming = st->stream_end = false;
  st->sbuf.clear();
  st->soff = st->stalled = 0;
  st->trailer_nva.clear();
  live_.push_back(st);
  return st;
}

void Http2Session::give_back(Stream* st) noexcept {
  if (reading_ == st) reading_ = nullptr;
  if (current_ == st) current_ = nullptr;
  st->writable = nullptr;  // what the producer's callback holds goes now
  st->senc.release();
  st->consumer.fail(ctx_->later, BodyError::ClientGone);  // reset, or closed with the connection
  let_go(*st);
  close_exchange(*st);
  if (st->stalled) writable_soon();  // the worker drops what it holds for this stream, now
  live_.erase(std::find(live_.begin(), live_.end(), st));
  spare_.emplace_back(st);  // reserved in take_stream's growth: live_ plus spare_ never exceed what was made
}

// Its request is complete (or refused): dispatched once mem_recv returns. False: out of memory.
bool Http2Session::mark_ready(Stream& st) noexcept {
  if (st.ready) return true;
  st.ready = true;
  try {
    ready_.push_back(st.id);
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

// The stream a handler runs for answers it as a rule while it runs: that one first, then a scan of the open ones.
Http2Session::Stream* Http2Session::find(std::uint32_t seq) const noexcept {
  if (seq == 0) return nullptr;
  if (current_ && current_->seq == seq) return current_;
  for (Stream* st : live_)
    if (st->seq == seq) return st;
  return nullptr;
}

bool Http2Session::awaiting(std::uint32_t id) const noexcept {
  const Stream* st = find(id);
  return st && st->awaiting;
}

void Http2Session::on_bytes(char* data, std::size_t n) {
  if (!s_) return;
  refill();
  in_recv_ = true;
  const ssize_t r = nghttp2_session_mem_recv(s_, reinterpret_cast<const std::uint8_t*>(data), n);
  in_recv_ = false;
  if (r < 0) return failed();
  dispatch_ready();
  pump();
  conn_->update_waits();
}

// nghttp2 gave up on the connection (a flood, a bad preface, memory): what it queued (a GOAWAY) goes out, then
// the connection closes; nothing more is read.
void Http2Session::failed() noexcept {
  pump();
  t_->close_after_flush();
  t_->flush();
  conn_->update_waits();
}

void Http2Session::on_sent() noexcept {
  if (ctx_->now_ms - stuck_checked_ms_ >= 1000 && s_) reset_stuck();
  pump();
  conn_->update_waits();
  if (t_->queued() <= Transport::kOutLowWater && (inbox_waits_ || std::any_of(live_.begin(), live_.end(), [](const Stream* st) {
        return bool(st->writable);
      })))
    writable_soon();
}

void Http2Session::pump() noexcept {
  if (!s_ || !t_->is_open()) return;
  t_->guarded([&] {
    while (t_->queued() < Transport::kOutHighWater) {
      const std::uint8_t* p = nullptr;
      const ssize_t n = nghttp2_session_mem_send(s_, &p);
      if (n < 0) {
        t_->close_after_flush();
        break;
      }
      if (n == 0) break;
      t_->out().append({reinterpret_cast<const char*>(p), std::size_t(n)});
    }
    if (!nghttp2_session_want_read(s_) && !nghttp2_session_want_write(s_)) t_->close_after_flush();
    if (draining_ && live_.empty()) t_->close_after_flush();
    t_->flush();
  });
}

void Http2Session::dispatch_ready() {
  // A stream reset in the same batch as its request (rapid reset) is closed by now: never dispatched.
  for (std::size_t i = 0; i < ready_.size(); ++i)
    if (Stream* st = H2Callbacks::stream(s_, ready_[i])) dispatch(*st, !st->ready);
  ready_.clear();
  deliver_bodies();
}

// A request head with a body to come: what its route makes of the body (streamed, and its limit), found while
// nghttp2 reads the body's frames. A lookup, no handler call.
void Http2Session::classify(Stream& st) noexcept {
  if (!st.method_len || !st.path_len) return;
  const std::string_view target(st.fields.data() + st.path_off, st.path_len);
  const std::string_view method(st.fields.data() + st.method_off, st.method_len);
  const Router::Match m = ctx_->router->find(method, target.substr(0, target.find('?')), ctx_->h2->params);
  if (!m.handler) return;
  st.streamed = m.options->stream_body;
  st.body_limit = Dispatch::body_limit(*ctx_, *m.options);
}

void Http2Session::mark_body(Stream& st) noexcept {
  if (st.body_due) return;
  try {
    bodies_.push_back(st.id);
    st.body_due = true;
  } catch (const std::bad_alloc&) {  // taken up again when its consumer next asks or more data comes
  }
}

// Streamed bodies with something due go to their consumers, after mem_recv (never inside nghttp2's callbacks):
// what arrived, in one chunk, then its stream's window is given back for it; or its end; or its failure.
void Http2Session::deliver_bodies() {
  if (bodies_.empty() || !s_) return;
  std::int32_t due[64];
  while (!bodies_.empty()) {
    const std::size_t n = std::min(bodies_.size(), std::size(due));
    std::copy_n(bodies_.end() - std::ptrdiff_t(n), n, due);
    bodies_.resize(bodies_.size() - n);
    for (std::size_t i = 0; i < n; ++i) {
      Stream* st = H2Callbacks::stream(s_, due[i]);
      if (!st) continue;
      st->body_due = false;
      if (!st->dispatched || !st->consumer.active()) continue;
      current_ = st;
      if (st->body_failed) {
        st->consumer.fail(ctx_->later, st->body_error);
        let_go(*st);
        if (st->awaiting && !st->streaming) submit_error(*st, 413, "request body too large");
        else nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        continue;
      }
      if (!st->consumer.wants() || (st->body.empty() && !st->end_seen)) continue;  // due again when it asks
      const std::size_t len = st->body.size();
      const std::uint32_t seq = st->seq;
      in_dispatch_ = true;  // an answer from the consumer goes out once this is done
      st->delivering = true;
      const bool ok = st->consumer.deliver({st->body.data(), len}, st->end_seen);
      st->delivering = false;
      in_dispatch_ = false;
      st->body.clear();  // nothing closes the stream meanwhile: that takes a mem_send or mem_recv
      nghttp2_session_consume(s_, st->id, len);
      handled(*st, seq, ok);
    }
  }
}

// After middleware, a handler or a consumer ran for st: a throw is a 500 if nothing was sent yet, else the
// stream is reset; a request still awaited has its handler deadline, except while its body flows to a
// consumer that takes it.
void Http2Session::handled(Stream& st, std::uint32_t seq, bool ok) {
  Stream* still = find(seq);
  if (still != &st) return;
  if (!ok && st.awaiting) {
    if (st.streaming) {  // the head and maybe some body are out: that stream cannot be finished
      stop_awaiting(st);
      nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR);
    } else {
      submit_error(st, 500, "internal error");
    }
  }
  if (st.awaiting && !st.consumer.wants() && conn_->handler_link.which == Timer::None)
    ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
}

// A streamed body's bytes its consumer will never take: their windows are given back, or the connection's
// would shrink for good.
void Http2Session::let_go(Stream& st) noexcept {
  if (!st.streamed || st.body.empty() || st.delivering || !s_) return;
  nghttp2_session_consume_connection(s_, st.body.size());
  nghttp2_session_consume_stream(s_, st.id, st.body.size());
  st.body.clear();
}

// RFC 9113 8.1: an interim 100 before the final answer, once the body is wanted.
void Http2Session::send_continue(Stream& st) {
  st.expect = false;
  static const nghttp2_nv status{const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(":status")),
                                 const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>("100")), 7, 3,
                                 NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  if (nghttp2_submit_headers(s_, NGHTTP2_FLAG_NONE, st.id, nullptr, &status, 1, nullptr) == NGHTTP2_ERR_NOMEM)
    throw std::bad_alloc();
}

bool Http2Session::make_head(Stream& st) {
  http::RequestHead& h = ctx_->h2->head;
  const char* b = st.fields.data();
  // Field by field: a value-initialised head would write its whole header array (3 KiB) per request.
  h.header_count = 0;
  h.has_content_length = h.chunked = h.expect_continue = false;
  if (!st.method_len || !st.path_len) return false;
  h.method = {b + st.method_off, st.method_len};
  h.target = {b + st.path_off, st.path_len};
  const std::size_t q = h.target.find('?');
  h.path = h.target.substr(0, q);
  h.query = q == std::string_view::npos ? std::string_view() : h.target.substr(q + 1);
  if (h.path.empty() || h.path[0] != '/') return false;
  bool host = false;
  for (const Stream::Field& f : st.field_offsets) {
    const Header& field = h.headers[h.header_count++] = {{b + f.name_off, f.name_len}, {b + f.value_off, f.value_len}};
    host |= field.name == "host";
    if (field.name == "expect" && http::iequals(field.value, "100-continue")) h.expect_continue = true;
  }
  // RFC 9113 8.3.1: :authority is the target's authority; a handler reads it as Host, as over HTTP/1.1.
  if (!host && st.authority_len) h.headers[h.header_count++] = {"host", {b + st.authority_off, st.authority_len}};
  h.major = 2;
  h.minor = 0;
  h.keep_alive = true;
  h.content_length = st.body.size();
  return true;
}

// at_head: the request's head is in and its body to come. Its route and middleware run now; a streamed route's
// handler too, and its body then goes to the consumer as it comes. A buffered route's handler runs when the
// body is in (admitted); anything answered without a handler (404, 405, 400) is answered then too, as for a
// request that came whole.
void Http2Session::dispatch(Stream& st, bool at_head) {
  // A stream is on ready_ twice when its head and its end came in one batch: the first call does it all.
  if (st.dispatched || st.answered || (at_head && (st.admitted || st.refused))) return;
  if (!ctx_->exchanges) st.seq = ++next_seq_ ? next_seq_ : ++next_seq_;  // 0 names no request
  current_ = &st;
  if (st.refused) {
    st.ex.route = ctx_->router->route_count();
    submit_error(st, st.refuse_status, st.refuse_status == 431 ? "request header fields too large"
                                                               : "request body too large");
    return;  // a 413 resets the stream once it is out (frame_sent), so the rest of the body is not sent

  }
  if (!make_head(st)) {
    if (at_head) return;
    st.ex.route = ctx_->router->route_count();
    return submit_error(st, 400, "malformed request");
  }
  const http::RequestHead& head = ctx_->h2->head;
  RouteParams& params = ctx_->h2->params;
  st.head_only = head.method == "HEAD";
  if (ctx_->compress) st.coding = ctx_->compress->accepted({head.headers.data(), head.header_count});
  const bool admitted = st.admitted;
  if (!admitted) frame_tokens_ = std::min(frame_tokens_ + 20, kFrameBurst);
  const Router::Match m =
      admitted ? ctx_->router->find(head.method, head.path, params) : Dispatch::route(*ctx_, st.ex, head, params);
  if (!m.handler) {
    if (at_head) return;
    if (m.allow.empty()) return submit_error(st, 404, "not found");
    const Header allow{"allow", m.allow};
    return submit_error(st, 405, "method not allowed", {&allow, 1});
  }
  const bool streamed = m.options->stream_body;
  Request request = Dispatch::request(*ctx_, head, streamed ? std::string_view() : std::string_view(st.body.data(), st.body.size()));
  if (!Dispatch::prepare(request, *conn_, head, params, st.decode)) {
    if (at_head) return;
    return submit_error(st, 400, "malformed percent-escape in the path or query");
  }
  // Its Responder names an exchange of its own when the loop keeps a table (a worker), else the connection.
  std::uint32_t rslot = t_->slot();
  if (ctx_->exchanges) {
    const ExchangeTable::Opened x = ctx_->exchanges->open(t_->slot(), t_->gen());
    if (!x.slot) throw std::bad_alloc();  // more than connections times streams: cannot happen
    rslot = st.xslot = x.slot;
    st.seq = x.seq;
  }
  st.awaiting = true;
  const std::uint32_t seq = st.seq;
  if (streamed) {
    Dispatch::stream_body(request, *ctx_, rslot, t_->gen(), seq);
    st.streamed = true;
    st.consumer.start();
    st.expect = head.expect_continue && !st.end_seen;
    if (!st.end_seen) (void)nghttp2_session_set_local_window_size(s_, NGHTTP2_FLAG_NONE, st.id, kStreamedWindow);
    mark_body(st);  // what came with the head goes to the consumer once the handler asked for it
  }
  Responder res = Dispatch::responder(*ctx_, rslot, t_->gen(), seq);
  in_dispatch_ = true;
  bool ok, go_on = true;
  if (admitted) {
    ok = Dispatch::handle(*st.handler, request, res);
  } else {
    ok = Dispatch::admit(*ctx_, request, res, go_on);
    if (ok && go_on && (streamed || !at_head)) ok = Dispatch::handle(*m.handler, request, res);
  }
  in_dispatch_ = false;
  Stream* still = find(seq);
  if (still == &st && ok && go_on && at_head && !streamed) {  // its handler runs once the body is in
    st.admitted = true;
    st.handler = m.handler;
    stop_awaiting(st);
    close_exchange(st);
    if (head.expect_continue) send_continue(st);
    return;
  }
  if (still == &st) {
    st.dispatched = true;
    if (!go_on) st.consumer.drop();
    if (st.awaiting) st.deadline_ms = ctx_->now_ms + ctx_->handler_timeout_ms;
  }
  handled(st, seq, ok);
}

// A BodyReader's call. Bytes for a consumer that asks again go to it later in the turn (ctx.ready), never
// inside the caller's stack.
bool Http2Session::body(std::uint32_t id, BodyCall& c) {
  Stream* st = find(id);
  if (!st || !st->consumer.active() || !t_->is_open()) return false;
  const bool r = st->consumer.apply(c);
  if (c.op == BodyCall::Op::Alive) return r;
  t_->guarded([&] {
    if (st->consumer.asked() && st->expect) send_continue(*st);
    if (c.op == BodyCall::Op::Pause) st->deadline_ms = ctx_->now_ms + ctx_->handler_timeout_ms;
    if (st->awaiting && !st->consumer.wants() && conn_->handler_link.which == Timer::None)
      ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
    if (st->consumer.wants()) {
      st->body_deadline_ms = ctx_->now_ms + ctx_->timers.duration(Timer::Body);
      mark_body(*st);
      if (!in_recv_ && !in_dispatch_ && !ready_due_) {
        ready_due_ = true;
        ctx_->ready.push_back({t_->slot(), t_->gen()});
      }
    }
  });
  after_answer();
  return r;
}

void Http2Session::run_ready() noexcept {
  ready_due_ = false;
  if (!s_ || !t_->is_open()) return;
  t_->guarded([&] { deliver_bodies(); });
  pump();
  conn_->update_waits();
}

bool Http2Session::reply(std::uint32_t id, const Response& r) noexcept {
  Stream* st = find(id);
  if (!st || !st->awaiting || st->streaming || !t_->is_open()) return false;
  t_->guarded([&] {
    if (r.status < 200 || r.status > 599) {
      Dispatch::refused(*ctx_, "status outside 200-599");
      return submit_error(*st, 500, "invalid response from handler");
    }
    const http::HeaderCheck check = http::check_headers(r.headers, r.content_type, r.body.size());
    if (!check.ok) {
      Dispatch::refused(*ctx_, check.why);
      return submit_error(*st, 500, "invalid response from handler");
    }
    const Coded coded = ctx_->compress ? ctx_->compress->plan(r, check, st->coding, st->head_only)
                                       : Coded{http::Coding::Identity, false, r.body, r.body_is_static};
    submit(*st, r.status, check.has_content_type ? std::string_view() : r.content_type, r.headers, coded);
    if (ctx_->compress) ctx_->compress->trim();  // submit copied a body coded into its scratch
  });
  after_answer();
  return true;
}

void Http2Session::submit_error(Stream& st, int status, std::string_view message, std::span<const Header> extra) {
  char body[160];
  const int n = std::snprintf(body, sizeof body, "{\"error\":\"%.*s\"}", int(message.size()), message.data());
  submit(st, status, "application/json", extra, Coded{http::Coding::Identity, false, {body, std::size_t(n)}, false});
}

// The response's fields are lowercased into the stream's buffer (HTTP/2 field names are lowercase), framed by
// nghttp2; its body goes out as DATA frames from where it lives (static) or from the stream's copy.
void Http2Session::submit(Stream& st, int status, std::string_view content_type, std::span<const Header> headers,
                          const Coded& coded) {
  const std::string_view body = coded.body;
  const bool body_static = coded.body_static;
  stop_awaiting(st);
  st.answered = true;
  st.framed_ms = ctx_->now_ms;
  const bool with_body = !st.head_only && http::status_has_body(status) && !body.empty();
  st.resp_off = 0;
  st.resp_len = with_body ? body.size() : 0;
  st.resp_static = body_static && with_body;
  if (with_body && !body_static) {
    st.resp_body_copy.clear();
    st.resp_body_copy.append(body);
    st.resp_body = st.resp_body_copy.data();
  } else {
    st.resp_body = body.data();
  }
  nghttp2_data_provider prd{};
  prd.source.ptr = &st;
  prd.read_callback = H2Callbacks::read;
  submit_head(st, status, content_type, headers, &body, with_body ? &prd : nullptr, coded.coding, coded.vary);
  Dispatch::record(*ctx_, st.ex, *conn_, status, st.resp_len);
}

void Http2Session::submit_head(Stream& st, int status, std::string_view content_type, std::span<const Header> headers,
                               const std::string_view* length_of, const nghttp2_data_provider* prd,
                               http::Coding coding, bool vary) {
  char num[24];
  const std::size_t sn = decimal(std::uint64_t(status), num);  // 3 digits: status is 200-599
  const std::size_t ln = length_of ? decimal(length_of->size(), num + 4) : 0;
  st.resp_fields.clear();
  struct Off {
    std::size_t n, nl, v, vl;
  };
  Off offs[http::kMaxHeaders + 6];
  std::size_t count = 0;
  auto add = [&](std::string_view name, std::string_view value, bool lower, std::string_view prefix = {}) {
    if (count == std::size(offs)) return;
    const std::size_t at = st.resp_fields.size();
    if (lower) append_lower(st.resp_fields, name);
    else st.resp_fields.append(name);
    st.resp_fields.append(prefix);
    st.resp_fields.append(value);
    offs[count++] = {at, name.size(), at + name.size(), prefix.size() + value.size()};
  };
  const bool coded = coding != http::Coding::Identity;
  add(":status", {num, sn}, false);
  if (!content_type.empty() && http::status_has_body(status)) add("content-type", content_type, false);
  if (length_of && http::status_has_body(status)) add("content-length", {num + 4, ln}, false);
  const std::size_t date_at = count;
  add("date", ctx_->date.value(), false);
  for (const Header& h : headers) {
    char lower[64];
    const std::size_t k = std::min(h.name.size(), sizeof lower);
    for (std::size_t i = 0; i < k; ++i) lower[i] = lower_ascii(h.name[i]);
    if (h.name.size() <= sizeof lower && dropped_in_h2({lower, k})) continue;
    add(h.name, h.value, true, coded && http::weakened_etag(h) ? "W/" : "");
  }
  if (coded) add("content-encoding", http::coding_name(coding), false);
  if (vary) add("vary", "accept-encoding", false);
  // Not copied by nghttp2: resp_fields (names already lowercase) lives until the stream closes, after its HEADERS
  // went out or were dropped unsent. The date is never indexed: a new value each second would fill the HPACK
  // table with dates and make the steady state allocate until it is full. The array itself nghttp2 copies.
  nghttp2_nv nva[std::size(offs)];
  const char* b = st.resp_fields.data();
  for (std::size_t i = 0; i < count; ++i)
    nva[i] = {reinterpret_cast<std::uint8_t*>(const_cast<char*>(b + offs[i].n)),
              reinterpret_cast<std::uint8_t*>(const_cast<char*>(b + offs[i].v)), offs[i].nl, offs[i].vl,
              std::uint8_t(NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE |
                           (i == date_at ? NGHTTP2_NV_FLAG_NO_INDEX : 0))};
  const int rv = nghttp2_submit_response(s_, st.id, nva, count, prd);
  if (rv == NGHTTP2_ERR_NOMEM) throw std::bad_alloc();
}

void Http2Session::after_answer() noexcept {
  if (in_recv_ || in_dispatch_) return;
  pump();
  conn_->update_waits();
}

bool Http2Session::streaming(std::uint32_t id) const noexcept {
  const Stream* st = find(id);
  return st && st->streaming;
}

// A Stream over HTTP/2: the head now, then DATA frames as the producer writes, within the stream's flow-control
// window and kStreamBuffer of written-but-unframed bytes per stream; write() says false past that, on_writable
// runs once it drains.
bool Http2Session::stream_begin(std::uint32_t id, const Response& head) noexcept {
  Stream* st = find(id);
  if (!st || !st->awaiting || st->streaming || !t_->is_open()) return false;
  bool ok = false;
  t_->guarded([&] {
    if (head.status < 200 || head.status > 599) {
      Dispatch::refused(*ctx_, "status outside 200-599");
      return submit_error(*st, 500, "invalid response from handler");
    }
    const http::HeaderCheck check = http::check_headers(head.headers, head.content_type, std::nullopt);
    if (!check.ok) {
      Dispatch::refused(*ctx_, check.why);
      return submit_error(*st, 500, "invalid response from handler");
    }
    const std::string_view ct = check.has_content_type ? std::string_view() : head.content_type;
    bool vary = false;
    if (ctx_->compress) st->senc = ctx_->compress->stream(head, check, st->coding, st->head_only, vary);
    const http::Coding coding = st->senc ? st->senc.get()->coding() : http::Coding::Identity;
    if (st->head_only || !http::status_has_body(head.status)) {  // the head is the whole answer
      stop_awaiting(*st);
      st->answered = true;
      submit_head(*st, head.status, ct, head.headers, nullptr, nullptr, coding, vary);
      Dispatch::record(*ctx_, st->ex, *conn_, head.status, 0);
      ok = true;
      return;
    }
    st->sbuf.clear();
    st->soff = 0;
    st->stream_end = false;
    st->stream_status = head.status;
    st->stream_bytes = 0;
    nghttp2_data_provider prd{};
    prd.source.ptr = st;
    prd.read_callback = H2Callbacks::stream_read;
    submit_head(*st, head.status, ct, head.headers, nullptr, &prd, coding, vary);
    st->streaming = true;
    st->framed_ms = ctx_->now_ms;
    if (st->xslot) publish_streaming(ctx_->exchanges->get(st->xslot)->token, t_->gen(), st->seq);
    st->answered = true;
    st->deadline_ms = ctx_->now_ms + ctx_->handler_timeout_ms;
    ok = true;
  });
  after_answer();
  return ok;
}

bool Http2Session::stream_write(std::uint32_t id, std::string_view data, bool end,
                                std::span<const Header> trailers) noexcept {
  return stream_append(id, data, end, true, trailers);
}

bool Http2Session::stream_write_taken(std::uint32_t id, std::string_view data) noexcept {
  return stream_append(id, data, false, false, {});
}

bool Http2Session::stream_append(std::uint32_t id, std::string_view data, bool end, bool bounded,
                                 std::span<const Header> trailers) noexcept {
  Stream* st = find(id);
  if (!st || !st->streaming || st->stream_end || !t_->is_open()) return false;
  if (bounded && !end && (st->sbuf.size() - st->soff > kStreamBuffer || t_->queued() > Transport::kOutHighWater))
    return false;
  bool ok = false, coding_failed = false;
  t_->guarded([&] {
    if (st->senc) {  // coded and flushed, so the client can decode all it got
      const std::size_t before = st->sbuf.size();
      if (!st->senc.get()->write(data, end, st->sbuf)) {
        coding_failed = true;
        return;
      }
      st->stream_bytes += st->sbuf.size() - before;
      if (end) st->senc.release();
    } else {
      st->sbuf.append(data);
      st->stream_bytes += data.size();
    }
    st->deadline_ms = ctx_->now_ms + ctx_->handler_timeout_ms;
    if (end && !trailers.empty()) {
      st->trailer_fields.clear();
      for (const Header& h : trailers) {
        append_lower(st->trailer_fields, h.name);
        st->trailer_fields.append(h.value);
      }
      st->trailer_nva.clear();
      std::size_t at = 0;
      for (const Header& h : trailers) {
        auto* b = reinterpret_cast<std::uint8_t*>(st->trailer_fields.data());
        st->trailer_nva.push_back({b + at, b + at + h.name.size(), h.name.size(), h.value.size(),
                                   NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE});
        at += h.name.size() + h.value.size();
      }
    }
    if (end) {
      st->stream_end = true;
      stop_awaiting(*st);
      st->writable = nullptr;
      Dispatch::record(*ctx_, st->ex, *conn_, st->stream_status, st->stream_bytes);
    }
    nghttp2_session_resume_data(s_, st->id);
    ok = true;
  });
  if (coding_failed) {  // out of memory: the body cannot be finished
    Dispatch::refused(*ctx_, "compression failed");
    (void)stream_abort(id);
    return false;
  }
  after_answer();
  return ok;
}

void Http2Session::stream_on_writable(std::uint32_t id, std::function<void()> fn) {
  Stream* st = find(id);
  if (!st || !st->streaming || st->stream_end || !t_->is_open()) return;
  st->writable = std::move(fn);
  if (st->sbuf.size() - st->soff <= Transport::kOutLowWater && t_->queued() <= Transport::kOutLowWater) writable_soon();
}

bool Http2Session::stream_abort(std::uint32_t id) noexcept {
  Stream* st = find(id);
  if (!st || !st->streaming || st->stream_end || !t_->is_open()) return false;
  t_->guarded([&] {
    stop_awaiting(*st);
    st->writable = nullptr;
    st->senc.release();
    st->stream_end = true;  // nothing more is taken; what is buffered goes nowhere once the reset is out
    Dispatch::record(*ctx_, st->ex, *conn_, st->stream_status, st->stream_bytes);
    nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
  });
  after_answer();
  return true;
}

// Per stream: one whose client does not open its window holds back only its own producer.
bool Http2Session::stream_backed_up(std::uint32_t id) const noexcept {
  if (!t_->is_open()) return false;
  if (t_->queued() > Transport::kOutHighWater) return true;
  const Stream* st = find(id);
  return st && st->sbuf.size() - st->soff > kStreamBuffer;
}

bool Http2Session::stream_waits(std::uint32_t id) const noexcept {
  const Stream* st = find(id);
  return st && st->stalled;
}

void Http2Session::stream_stalled(std::uint32_t id, int delta) noexcept {
  if (Stream* st = find(id)) st->stalled = std::uint32_t(int(st->stalled) + delta);
}

void Http2Session::writable_soon() noexcept {
  if (writable_due_) return;
  writable_due_ = true;
  ctx_->writable_due.push_back({t_->slot(), t_->gen()});
}

void Http2Session::run_writable() noexcept {
  writable_due_ = false;
  if (!t_->is_open() || t_->queued() > Transport::kOutLowWater) return;
  // Callbacks may end or open streams: run those that are due now, by id.
  std::uint32_t due[256];
  std::size_t n = 0;
  for (Stream* st : live_)
    if (st->writable && st->sbuf.size() - st->soff <= Transport::kOutLowWater && n < std::size(due)) due[n++] = st->seq;
  for (std::size_t i = 0; i < n; ++i) {
    Stream* st = find(due[i]);
    if (!st || !st->writable) continue;
    std::function<void()> fn = std::move(st->writable);
    st->writable = nullptr;
    try {
      fn();
    } catch (...) {  // a producer that throws mid-stream: that stream cannot be finished
      if (Stream* again = find(due[i])) {
        stop_awaiting(*again);
        nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, again->id, NGHTTP2_INTERNAL_ERROR);
      }
    }
  }
  pump();
  conn_->update_waits();
}

// RFC 9113 6.5.3: a SETTINGS ACK that never comes is a connection error (SETTINGS_TIMEOUT), after the header
// timeout (10 s by default, nghttpd's too), or at the body deadline if a request is being read then. Each
// stream's request must be in within the body timeout of its HEADERS: the connection's Body deadline is the
// earliest, re-armed for the rest when it passes (so a stream's 408 comes within one to two body timeouts).
// An answer with bytes nghttp2 will not frame while nothing waits for the socket is held by flow control: its
// client keeps the stream's (or the connection's) window shut. That has the send deadline, judged per stream.
Timer Http2Session::deadline() const noexcept {
  bool held = false;
  for (const Stream* st : live_) {
    if (!st->ready) return Timer::Body;  // a request still being read (and the SETTINGS ACK, when it passes)
    held |= stuck(*st);
  }
  if (settings_unacked_ && !draining_) return Timer::Header;
  if (held && t_->queued() == 0) return Timer::Send;
  return live_.empty() ? Timer::Idle : Timer::None;
}

bool Http2Session::stuck(const Stream& st) noexcept {
  return st.answered && (st.streaming ? st.sbuf.size() > st.soff : st.resp_off < st.resp_len);
}

// The connection's send deadline judges a connection whose output is idle; one whose other streams flow has its
// stuck streams looked at here instead, once a second, as its sends complete.
bool Http2Session::on_send_timeout() noexcept {
  if (!s_) return false;
  reset_stuck();
  pump();
  conn_->update_waits();
  return true;
}

// RFC 9113 5.4.2: a stream whose client has taken no DATA of it for the send timeout is reset (CANCEL) and its
// producer sees it gone; the connection and its other streams go on.
void Http2Session::reset_stuck() noexcept {
  stuck_checked_ms_ = ctx_->now_ms;
  const std::uint64_t limit = ctx_->timers.duration(Timer::Send);
  for (Stream* st : live_) {
    if (!stuck(*st) || ctx_->now_ms - st->framed_ms < limit) continue;
    if (ctx_->metrics) ctx_->metrics->send_timeouts.add();
    stop_awaiting(*st);
    st->writable = nullptr;
    st->resp_off = st->resp_len;  // nothing more of it is framed
    st->sbuf.clear();
    st->soff = 0;
    nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
  }
}

bool Http2Session::input_stuck(bool) const noexcept { return false; }  // nghttp2 takes all it is given

void Http2Session::on_timeout(Timer t) noexcept {
  if (settings_unacked_ && ctx_->now_ms >= settings_deadline_ms_) {
    nghttp2_session_terminate_session(s_, NGHTTP2_SETTINGS_TIMEOUT);
    return failed();
  }
  bool held = false;
  t_->guarded([&] {
    for (std::size_t i = 0; i < live_.size(); ++i) {
      Stream& st = *live_[i];
      if (t == Timer::Handler && st.awaiting && st.consumer.wants()) {
        held = true;  // its body flows to a consumer that takes it: the body deadline judges the client
      } else if (t == Timer::Handler && st.awaiting && st.streaming &&
          (st.deadline_ms > ctx_->now_ms || st.writable || st.sbuf.size() > st.soff)) {
        held = true;  // written lately, or held back by its client (the send deadline judges the client)
      } else if (t == Timer::Handler && st.awaiting && st.streaming) {
        if (ctx_->metrics) ctx_->metrics->handler_timeouts.add();
        stop_awaiting(st);  // the producer stopped writing: this stream cannot be finished
        nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR);
      } else if (t == Timer::Handler && st.awaiting && st.deadline_ms > ctx_->now_ms) {
        held = true;  // dispatched after the oldest: its own deadline is later
      } else if (t == Timer::Handler && st.awaiting) {
        if (ctx_->metrics) ctx_->metrics->handler_timeouts.add();
        st.consumer.fail(ctx_->later, BodyError::Timeout);  // a consumer that held its body paused that long
        submit_error(st, 503, "handler timed out");
      } else if (t != Timer::Handler && st.consumer.active()) {
        if (!st.consumer.wants() || st.body_deadline_ms > ctx_->now_ms) continue;  // paused: not the client's
        st.consumer.fail(ctx_->later, BodyError::Timeout);
        if (st.awaiting && !st.streaming) submit_error(st, 408, "request body timeout");
        else nghttp2_submit_rst_stream(s_, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_CANCEL);
      } else if (t != Timer::Handler && !st.ready && !st.answered && !st.dispatched &&
                 st.body_deadline_ms <= ctx_->now_ms) {
        st.ex.route = ctx_->router->route_count();
        st.ready = st.refused = true;  // never dispatched; the rest of its body is dropped
        st.refuse_status = 408;
        submit_error(st, 408, "request body timeout");  // then reset, once it is out (frame_sent)
      }
    }
  });
  if (held) ctx_->handler_timers.set(*conn_, Timer::Handler, ctx_->now_ms);
  pump();
  conn_->update_waits();
}

// RFC 9113 6.8: GOAWAY with the last stream we took; those finish, then the connection closes.
void Http2Session::drain() noexcept {
  draining_ = true;
  if (s_) nghttp2_submit_goaway(s_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s_), NGHTTP2_NO_ERROR, nullptr, 0);
  pump();
  conn_->update_waits();
}


void Http2Session::on_abort() noexcept {
  for (Stream* st : live_) st->consumer.fail(ctx_->later, BodyError::ClientGone);
  for (Stream* st : live_) stop_awaiting(*st);
  if (ctx_->awaited) ctx_->awaited[t_->slot()].store(0, std::memory_order_relaxed);
}

void Http2Session::on_released() noexcept {
  on_abort();
  if (s_) nghttp2_session_del(s_);  // closes no stream through our callbacks
  s_ = nullptr;
  for (Stream* st : live_) {
    close_exchange(*st);
    spare_.emplace_back(st);
  }
  live_.clear();
  ready_.clear();
  bodies_.clear();
  ready_due_ = false;
}

}  // namespace userd::server
