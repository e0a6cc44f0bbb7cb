// server/worker.cpp: the loop: wait for a batch of completions, refresh the clock once, route each completion.
#include "libuserd/server/worker.hpp"

#include <malloc.h>

#include <algorithm>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>

#include "libuserd/io/tag.hpp"

namespace userd::server {
namespace {
// The loop wakes at least this often to expire connection deadlines and upstream exchanges, and to retry a
// paused accept: the precision of those deadlines.
constexpr int kTickMs = 100;
// Buffer memory given back by closing or idle connections before the worker returns free heap pages to the
// kernel.
constexpr std::size_t kTrimAfter = 1 << 20;
// Stream data written from other threads waits until its connection takes it (below the connection's own
// high-water mark): at most kStreamPending of it per stream, so a client that stops reading holds back only its
// own producer, and kLoopPending per loop, so many such clients cannot add up. Past either, write() says false.
constexpr std::size_t kStreamPending = 256 * 1024;
constexpr std::size_t kLoopPending = 4 << 20;
// How long after a send deadline the socket's queue is looked at again to tell a slow reader from a gone one:
// a client that stopped is cut this much after send_timeout_ms.
constexpr unsigned kSendCheckMs = 1000;
// Embedders' callbacks a loop holds: run_soon's waiting for the next turn, and timers. A bound each, so that a
// runaway producer is told (false) instead of growing the loop's memory.
constexpr std::size_t kMaxSoon = 4096;
constexpr std::size_t kMaxTimers = 65536;
// Free slots that keep their buffers for the connections to come: enough for steady churn to allocate nothing.
constexpr std::size_t kWarmSlots = 256;
// Rounds of continuations per loop turn: a resumed request whose handler answers another held request queues
// that one's continuation, and so on; past this many rounds the rest waits for the next turn (which then does
// not block), so one turn's work stays bounded.
constexpr int kContinuationRounds = 8;
}  // namespace

Worker::Worker(const ServerConfig& cfg, const Router& router, int listen_fd, int tls_fd, tls::Context tls,
               const std::vector<upstream::Target>& upstreams, const std::vector<Cidr>* proxy_from,
               const CompressShared* compress)
    : cfg_(cfg), proxy_from_(proxy_from), tls_(std::move(tls)), metrics_(router.route_count()), targets_(upstreams) {
  listeners_[0].fd = listen_fd;
  listeners_[1].fd = tls_fd;
  listeners_[0].proxy = cfg.proxy_protocol;
  listeners_[1].proxy = cfg.tls && cfg.tls->proxy_protocol;
  const bool tls_upstream = std::any_of(upstreams.begin(), upstreams.end(), [](const auto& t) { return bool(t.tls); });
  if (tls_fd >= 0 || tls_upstream) {  // records are decrypted and gathered here, the pools' too
    ctx_.tls_plain.reset(new char[LoopContext::kTlsScratch]);
    ctx_.tls_seal.reset(new char[LoopContext::kTlsScratch]);
  }
  ctx_.router = &router;
  ctx_.metrics = &metrics_;
  if (cfg.access_log_fd >= 0) ctx_.access_log = &access_log_;
  ctx_.replies = this;
  ctx_.limits.max_head = cfg.max_head;
  ctx_.limits.max_target = cfg.max_target;
  ctx_.max_body = cfg.max_body;
  ctx_.timers.set_duration(Timer::Linger, cfg.linger_ms);
  ctx_.timers.set_duration(Timer::Header, cfg.header_timeout_ms);
  ctx_.timers.set_duration(Timer::Body, cfg.body_timeout_ms);
  ctx_.timers.set_duration(Timer::Idle, cfg.idle_timeout_ms);
  ctx_.timers.set_duration(Timer::Send, cfg.send_timeout_ms);
  ctx_.timers.set_duration(Timer::SendCheck, std::min(cfg.send_timeout_ms, kSendCheckMs));
  ctx_.handler_timers.set_duration(Timer::Handler, cfg.handler_timeout_ms);
  ctx_.handler_timeout_ms = cfg.handler_timeout_ms;
  if (cfg.http2) {
    ctx_.h2 = std::make_unique<H2Shared>();
    ctx_.h2_max_streams = cfg.http2_max_streams;
    exchanges_ = std::make_unique<ExchangeTable>(std::size_t(cfg.max_conns) * cfg.http2_max_streams);
    ctx_.exchanges = exchanges_.get();
  }
  if (cfg.log) ctx_.log = &cfg.log;
  if (compress) {
    compress_ = std::make_unique<LoopCompression>(*compress);
    ctx_.compress = compress_.get();
  }
  awaited_.reset(new std::atomic<std::uint64_t>[cfg.max_conns ? cfg.max_conns : 1]());
  ctx_.awaited = awaited_.get();
  stream_pending_.reset(new std::atomic<std::size_t>[cfg.max_conns ? cfg.max_conns : 1]());
}

Worker::~Worker() {
  backend_.reset();  // tears the ring down first: armed operations hold references to the sockets
  for (auto& c : conns_) c->teardown();
  for (auto& p : pools_) p->teardown();
  for (Listener& l : listeners_)
    if (l.fd >= 0) ::close(l.fd);
  if (SSL_CTX* c = next_tls_.exchange(nullptr)) SSL_CTX_free(c);
}

void Worker::replace_tls(tls::Context ctx) noexcept {
  if (SSL_CTX* old = next_tls_.exchange(ctx.release(), std::memory_order_acq_rel)) SSL_CTX_free(old);
}

void Worker::adopt_tls() noexcept {
  if (SSL_CTX* c = next_tls_.exchange(nullptr, std::memory_order_acq_rel)) tls_ = tls::Context(c);
}

void Worker::refresh_clock() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  ctx_.now_ms = std::uint64_t(ts.tv_sec) * 1000 + std::uint64_t(ts.tv_nsec) / 1000000;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  ctx_.date.update(ts.tv_sec);
  if (ctx_.access_log && ts.tv_sec != log_second_) {
    log_second_ = ts.tv_sec;
    std::tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    std::strftime(ctx_.log_time, sizeof ctx_.log_time, "%Y-%m-%dT%H:%M:%SZ", &tm);
  }
}

void Worker::run(std::unique_ptr<io::Backend> backend) noexcept {
  begin(std::move(backend));
  while (turn()) {
  }
  ended_.store(true, std::memory_order_release);
  flush_access_log();
}

void Worker::begin(std::unique_ptr<io::Backend> backend) noexcept {
  backend_ = std::move(backend);
  ctx_.backend = backend_.get();
  ctx_.backend_name = backend_->name();
  for (std::size_t i = 0; i < targets_.size(); ++i)
    pools_.push_back(std::make_unique<upstream::Pool>(targets_[i], std::uint16_t(i), ctx_));
  loop_thread_ = std::this_thread::get_id();
  wakeable_.store(backend_.get(), std::memory_order_release);
  refresh_clock();
  last_tick_ms_ = ctx_.now_ms;
  for (unsigned i = 0; i < 2; ++i)
    if (listeners_[i].fd >= 0) arm_accept(i);
}

bool Worker::turn() noexcept {
  if (stop_.load(std::memory_order_relaxed) && !draining_) {
    begin_drain();
    drain_deadline_ = ctx_.now_ms + cfg_.drain_timeout_ms;
  }
  if (draining_ && (conns_.size() == free_.size() || ctx_.now_ms >= drain_deadline_)) return false;
  // Continuations left over from the last turn (see run_continuations) run after a wait that does not block.
  const int n = backend_->wait(batch_, wait_timeout());
  refresh_clock();
  if (next_tls_.load(std::memory_order_relaxed)) adopt_tls();
  for (int i = 0; i < n; ++i) on_completion(batch_[std::size_t(i)]);
  run_continuations();
  if (!timed_.empty() && timed_.front().due_ms <= ctx_.now_ms) {
    run_timers();
    run_continuations();
  }
  if (ctx_.now_ms - last_tick_ms_ >= std::uint64_t(kTickMs)) {
    tick();
    run_continuations();
  } else if (access_log_.size() > 64 * 1024) {
    flush_access_log();
  }
  return true;
}

// Continuations left over from the last turn (see run_continuations) run after a wait that does not block; the
// next timer shortens the wait to its deadline.
int Worker::wait_timeout() const noexcept {
  if (!ctx_.ready.empty() || !ctx_.writable_due.empty()) return 0;
  if (timed_.empty()) return kTickMs;
  const std::uint64_t due = timed_.front().due_ms;
  return due <= ctx_.now_ms ? 0 : int(std::min<std::uint64_t>(due - ctx_.now_ms, kTickMs));
}

namespace {
bool later(const auto& a, const auto& b) noexcept {  // std::push_heap's order for a min-heap
  return a.due_ms != b.due_ms ? a.due_ms > b.due_ms : a.order > b.order;
}
}  // namespace

bool Worker::run_after(std::uint64_t ms, std::function<void()> fn) noexcept {
  // Also while draining: a timer may be what finishes a request in flight; the loop's end drops what is left.
  if (std::this_thread::get_id() != loop_thread_ || !fn || timed_.size() >= kMaxTimers) return false;
  try {
    timed_.push_back({ctx_.now_ms + ms, timed_order_++, std::move(fn)});
  } catch (const std::bad_alloc&) {
    return false;
  }
  std::push_heap(timed_.begin(), timed_.end(), [](const Timed& a, const Timed& b) { return later(a, b); });
  return true;
}

// Every timer due now, in deadline order; one that a callback adds for now runs on the next turn.
void Worker::run_timers() noexcept {
  const std::uint64_t now = ctx_.now_ms, last = timed_order_;
  while (!timed_.empty() && timed_.front().due_ms <= now && timed_.front().order < last) {
    std::pop_heap(timed_.begin(), timed_.end(), [](const Timed& a, const Timed& b) { return later(a, b); });
    std::function<void()> fn = std::move(timed_.back().fn);
    timed_.pop_back();
    try {
      fn();
    } catch (...) {
      // an embedder's callback that throws loses only itself
    }
  }
}

bool Worker::run_soon(std::function<void()> fn) noexcept {
  if (!fn || ended_.load(std::memory_order_acquire)) return false;
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (soon_.size() >= kMaxSoon) return false;
    try {
      soon_.push_back(std::move(fn));
    } catch (const std::bad_alloc&) {
      return false;
    }
    was_empty = soon_.size() == 1 && inbox_.empty();
  }
  if (was_empty)
    if (io::Backend* b = wakeable_.load(std::memory_order_acquire)) b->wake();
  return true;
}

// Whole lines in one write: with O_APPEND, threads' writes do not interleave within a line.
void Worker::flush_access_log() noexcept {
  std::size_t done = 0;
  while (done < access_log_.size()) {
    ssize_t w = ::write(cfg_.access_log_fd, access_log_.data() + done, access_log_.size() - done);
    if (w <= 0 && errno == EINTR) continue;
    if (w <= 0) break;  // a full disk or a closed pipe loses these lines, not the server
    done += std::size_t(w);
  }
  access_log_.clear();
}

// Stop accepting (shutdown wakes the armed accept with an error, and later connects are refused), close idle
// connections, and let the others finish their request.
void Worker::begin_drain() noexcept {
  draining_ = true;
  for (Listener& l : listeners_) {
    l.paused = false;
    if (l.fd >= 0) ::shutdown(l.fd, SHUT_RDWR);
  }
  for (auto& c : conns_) {
    if (c->released()) continue;
    c->drain();
    after(*c);
  }
}

void Worker::stop() noexcept {
  stop_.store(true, std::memory_order_relaxed);
  if (io::Backend* b = wakeable_.load(std::memory_order_acquire)) b->wake();
}

void Worker::arm_accept(unsigned which) noexcept {
  backend_->accept(listeners_[which].fd, io::tag(io::Op::Accept, which));
  listeners_[which].armed = true;
  listeners_[which].paused = false;
}

void Worker::arm_paused_accepts() noexcept {
  if (draining_) return;
  for (unsigned i = 0; i < 2; ++i)
    if (listeners_[i].paused) arm_accept(i);
}

void Worker::tick() noexcept {
  last_tick_ms_ = ctx_.now_ms;
  if (!access_log_.empty()) flush_access_log();
  arm_paused_accepts();
  auto expired = [this](Connection& c, Timer t) {
    c.on_timeout(t);
    after(c);
  };
  ctx_.timers.expire(ctx_.now_ms, expired);
  ctx_.handler_timers.expire(ctx_.now_ms, expired);
  for (auto& p : pools_) p->tick();
  // Freed buffers sit in malloc's free lists, so RSS stays up after a burst of connections unless the heap is
  // trimmed; a tick is off the request path, and only a burst's worth of freeing pays for it.
  if (ctx_.released_bytes >= kTrimAfter) {
    ctx_.released_bytes = 0;
    malloc_trim(0);
  }
}

Connection* Worker::find(std::uint32_t slot, std::uint16_t gen) const noexcept {
  if (slot & kExchangeSlot) {  // an HTTP/2 request: its connection, while its stream is open
    std::uint16_t conn_gen;
    if (!exchanges_ || !exchanges_->owner(slot, slot, conn_gen) || conn_gen != gen) return nullptr;
  }
  if (slot >= conns_.size()) return nullptr;
  Connection* c = conns_[slot].get();
  return c->gen() == gen && !c->released() ? c : nullptr;
}

// Every path that may end a connection calls this, some of them twice for one release (an end() inside a
// writable callback, then the callback's caller): the slot goes on free_ once, or two accepts would share it.
void Worker::after(Connection& c) noexcept {
  if (!c.take_release()) return;
  if (!stalled_.empty()) drop_stalled(c.slot());
  free_.push_back(c.slot());
  // A burst leaves many free slots, each keeping small buffers for its next connection. free_ is a stack: the
  // slot that now sits kWarmSlots below its top is reused last, so it gives its buffers back (once).
  if (free_.size() > kWarmSlots) conns_[free_[free_.size() - 1 - kWarmSlots]]->shed();
  metrics_.connections_open.sub();
  arm_paused_accepts();  // a descriptor came free
}

void Worker::on_completion(const io::Completion& c) noexcept {
  switch (io::tag_op(c.tag)) {
    case io::Op::Accept:
      on_accept(c);
      return;
    case io::Op::Recv: {
      Connection* conn = find(io::tag_slot(c.tag), io::tag_gen(c.tag));
      if (conn && c.res > 0) conn->on_recv(c.data, std::size_t(c.res));
      if (c.has_buffer) backend_->recycle(c.buffer_id);
      if (conn && !c.more) conn->on_recv_end(c.res);
      if (conn) after(*conn);
      return;
    }
    case io::Op::Send: {
      Connection* conn = find(io::tag_slot(c.tag), io::tag_gen(c.tag));
      if (!conn) return;
      conn->on_send(c.res);
      after(*conn);
      return;
    }
    case io::Op::UpConnect:
    case io::Op::UpRecv:
    case io::Op::UpSend: {
      const std::size_t pool = io::tag_slot(c.tag) >> 16;
      if (pool < pools_.size()) pools_[pool]->on_completion(c);
      if (c.has_buffer) backend_->recycle(c.buffer_id);
      return;
    }
    case io::Op::Wake:
      drain_inbox();
      [[fallthrough]];
    case io::Op::None:
      if (c.has_buffer) backend_->recycle(c.buffer_id);
      return;
  }
}

void Worker::on_accept(const io::Completion& c) noexcept {
  const unsigned which = io::tag_slot(c.tag) & 1;
  if (!c.more) listeners_[which].armed = false;
  if (c.res >= 0 && conns_.size() - free_.size() >= cfg_.max_conns) {
    metrics_.connections_refused.add();  // over the limit: the newcomer is closed, the others keep what they hold
    backend_->close(c.res);
  } else if (c.res >= 0 && draining_) {
    backend_->close(c.res);  // accepted just before the listener shut: the server is going away
  } else if (c.res >= 0 && listeners_[which].proxy && !source_allowed(c.res)) {
    metrics_.proxy_refused.add();  // only the balancers may say who a connection is from
    backend_->close(c.res);
  } else if (c.res >= 0 && which == 1 && ctx_.handshakes >= cfg_.max_tls_handshakes) {
    metrics_.tls_handshakes_refused.add();  // a flood of handshakes: the connections already past theirs go on
    backend_->close(c.res);
  } else if (c.res >= 0) {
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
      assert(conns_[slot]->released());  // a slot is on free_ once, and only while its connection is free
    } else {
      try {  // after() pushes every slot back on free_ without allocating
        free_.reserve(conns_.size() + 1);
        conns_.push_back(std::make_unique<Connection>(ctx_));
      } catch (const std::bad_alloc&) {
        metrics_.alloc_failures.add();
        backend_->close(c.res);
        return arm_accept_after(which, c);
      }
      slot = std::uint32_t(conns_.size() - 1);
    }
    if (!conns_[slot]->open(c.res, slot, which == 1 ? tls_.get() : nullptr, listeners_[which].proxy)) {
      metrics_.alloc_failures.add();  // no memory for its TLS state
      free_.push_back(slot);
      backend_->close(c.res);
      return arm_accept_after(which, c);
    }
    metrics_.connections_accepted.add();
    metrics_.connections_open.add();
  }
  arm_accept_after(which, c);
}

// One getpeername per connection, on PROXY listeners with a source list only.
bool Worker::source_allowed(int fd) const noexcept {
  if (!proxy_from_ || proxy_from_->empty()) return true;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  return getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && cidr_match(*proxy_from_, ss);
}

void Worker::arm_accept_after(unsigned which, const io::Completion& c) noexcept {
  if (listeners_[which].armed || draining_) return;
  // Out of descriptors or memory: re-arming now would fail again at once and spin. Wait for a close or a tick.
  if (c.res == -EMFILE || c.res == -ENFILE || c.res == -ENOMEM || c.res == -ENOBUFS) {
    listeners_[which].paused = true;
    log_accept_pause(-c.res);
  } else {
    arm_accept(which);
  }
}

// At most one line a second per thread: a descriptor shortage lasts, and each paused accept would say it again.
void Worker::log_accept_pause(int err) noexcept {
  const std::uint64_t second = ctx_.now_ms / 1000;
  ++accept_pauses_;
  if (second == last_pause_log_s_) return;
  last_pause_log_s_ = second;
  char line[160];
  std::snprintf(line, sizeof line, "accept paused: %s (%llu times); serving the connections already open",
                std::strerror(err), static_cast<unsigned long long>(accept_pauses_));
  if (cfg_.log) cfg_.log(line);
  else std::fprintf(stderr, "userd: %s\n", line);
}

// Off the loop thread an answer is queued for the loop (post); on it, it goes to the connection at once. Either
// way claim() first: a request is answered once, whichever threads try.
template <class F>
bool Worker::answer(Kind kind, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r,
                    F&& op) noexcept {
  if (std::this_thread::get_id() != loop_thread_) {
    try {
      return post(kind, slot, gen, seq, r);
    } catch (const std::bad_alloc&) {
      return false;
    }
  }
  if (const auto* a = published(slot).token; a && (a->load(std::memory_order_relaxed) & kAwaitedAnswered)) return false;
  Connection* conn = find(slot, gen);
  if (!conn) return false;
  const bool ok = op(*conn);
  after(*conn);
  return ok;
}

bool Worker::reply(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r) noexcept {
  return answer(Kind::Reply, slot, gen, seq, r, [&](Connection& c) { return c.reply(seq, r); });
}

// Off the loop thread: the answer is copied (the caller's views may die as soon as send() returns) and the loop
// is woken to deliver it. True means queued: the loop drops it if that request is no longer awaited by then.
// While the server drains, answers to requests in flight are still taken: that is what the drain waits for.
// Only once the loop has ended is there nobody to deliver them.
bool Worker::post(Kind kind, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r) {
  std::atomic<std::size_t>* pending = published(slot).pending;
  if (ended_.load(std::memory_order_acquire) || !pending) return false;
  // A producer that outruns its client is told (false) instead of growing what waits (kStreamPending). A
  // write bigger than the bound is still taken when nothing waits, so that any write can get through.
  const std::size_t cost = kind == Kind::Write ? pending_cost(r.body.size()) : 0;
  if (kind == Kind::Write) {
    const std::size_t stream = pending->load(std::memory_order_relaxed);
    const std::size_t loop = pending_bytes_.load(std::memory_order_relaxed);
    if ((stream && stream + cost > kStreamPending) || (loop && loop + cost > kLoopPending)) return false;
  }
  // Everything that can fail (the copies, room in the inbox) comes first: a request is claimed, and its budget
  // charged, only once nothing can stop its answer from being queued.
  const bool by_view = kind == Kind::Reply && r.body_is_static;
  Posted p{kind, slot, gen, seq, 0, r.status, std::string(r.content_type), by_view ? std::string() : std::string(r.body),
           {}, {}};
  if (by_view) p.static_body = r.body;
  p.compressible = r.compressible;
  p.add_headers(r.headers);
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (inbox_.size() == inbox_.capacity()) inbox_.reserve(std::max<std::size_t>(16, 2 * inbox_.capacity()));
    // The client left, or the request was answered (or ended, or timed out): nothing to queue. Every other kind
    // moves the request on (claim), so the inbox holds at most a begin and an answer per request, plus bounded
    // stream data. The loop checks again when it takes it, since the connection may change meanwhile.
    if (!claim(kind, slot, gen, seq)) return false;
    if (cost) {
      pending_bytes_.fetch_add(cost, std::memory_order_relaxed);
      pending->fetch_add(cost, std::memory_order_relaxed);
    }
    was_empty = inbox_.empty() && soon_.empty();
    inbox_.push_back(std::move(p));  // reserved: does not throw
  }
  if (was_empty)  // one wake per batch: the loop takes everything queued until it drains
    if (io::Backend* b = wakeable_.load(std::memory_order_acquire)) b->wake();
  return true;
}

std::size_t Worker::pending_cost(std::size_t body) noexcept { return body + sizeof(Posted); }

// The token and the waiting stream data of the request a Responder names: its connection's slot (HTTP/1.1), or
// its own exchange (HTTP/2). Both null when the slot names neither.
Worker::Published Worker::published(std::uint32_t slot) const noexcept {
  if (slot & kExchangeSlot) {
    ExchangeTable::Entry* e = exchanges_ ? exchanges_->get(slot) : nullptr;
    return e ? Published{&e->token, &e->pending} : Published{};
  }
  return slot < cfg_.max_conns ? Published{&awaited_[slot], &stream_pending_[slot]} : Published{};
}

// What a delivered or dropped write stops holding against the bounds.
void Worker::settle(const Posted& p) noexcept {
  if (p.kind != Kind::Write) return;
  const std::size_t cost = pending_cost(p.body.size());
  pending_bytes_.fetch_sub(cost, std::memory_order_relaxed);
  if (std::atomic<std::size_t>* pending = published(p.slot).pending) pending->fetch_sub(cost, std::memory_order_relaxed);
}

void Worker::drain_inbox() noexcept {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    std::swap(inbox_, draining_inbox_);
    std::swap(soon_, soon_now_);
  }
  for (auto& fn : soon_now_) {
    try {
      fn();
    } catch (...) {
      // as for timers: only this callback is lost
    }
  }
  soon_now_.clear();
  for (Posted& p : draining_inbox_) {
    Connection* conn = find(p.slot, p.gen);
    if (!conn) {
      settle(p);
      continue;
    }
    // Stream data its connection cannot take yet waits, and so does everything after it on that stream (the
    // end too): the producer was told yes, so it is delivered later, in order, never dropped.
    if ((p.kind == Kind::Write || p.kind == Kind::End) &&
        (conn->stream_waits(p.seq) || (p.kind == Kind::Write && conn->stream_backed_up(p.seq)))) {
      try {
        p.conn_slot = conn->slot();
        stalled_.push_back(std::move(p));
        conn->inbox_waits(true);
        conn->stream_stalled(stalled_.back().seq, +1);
        continue;
      } catch (const std::bad_alloc&) {
        if (conn->stream_waits(p.seq)) {  // behind data that waits: sent now it would be out of order, dropped a hole
          settle(p);
          conn->abort();
          after(*conn);
          continue;
        }
        // nothing waits ahead of it: the connection takes it now, over its mark
      }
    }
    deliver(p, *conn);
    after(*conn);
  }
  draining_inbox_.clear();
}

// Hands a posted answer to its connection, which drops it if that request is no longer the one awaited.
void Worker::deliver(Posted& p, Connection& conn) noexcept {
  try {
    posted_headers_.clear();
    std::size_t off = 0;
    for (std::size_t i = 0; i + 1 < p.header_lengths.size(); i += 2) {
      const std::string_view name(p.header_bytes.data() + off, p.header_lengths[i]);
      const std::string_view value(p.header_bytes.data() + off + p.header_lengths[i], p.header_lengths[i + 1]);
      off += p.header_lengths[i] + p.header_lengths[i + 1];
      posted_headers_.push_back({name, value});
    }
  } catch (const std::bad_alloc&) {
    settle(p);
    return;  // the request stays awaited: its handler deadline answers it
  }
  Response r;
  r.status = p.status;
  r.content_type = p.content_type;
  r.body = p.static_body.data() ? p.static_body : std::string_view(p.body);
  r.body_is_static = p.static_body.data() != nullptr;
  r.compressible = p.compressible;
  r.headers = posted_headers_;
  switch (p.kind) {
    case Kind::Reply: conn.reply(p.seq, r); break;
    case Kind::Begin: conn.stream_begin(p.seq, r); break;
    case Kind::Write: conn.stream_write_taken(p.seq, p.body); break;
    case Kind::End: conn.stream_write(p.seq, {}, true, posted_headers_); break;
  }
  settle(p);
}

// The connection's output drained below its low-water mark: what waited for it goes now, in order, until the
// connection is full again.
void Worker::deliver_stalled(Connection& conn) noexcept {
  conn.inbox_waits(false);
  // A stream still backed up keeps its data, and everything after it on that stream, in order; the
  // connection's other streams go on. Past kBlocked such streams, all the rest waits for the next turn.
  constexpr std::size_t kBlocked = 64;
  std::uint32_t blocked[kBlocked];
  std::size_t nblocked = 0;
  bool waits = false;
  std::size_t keep = 0;
  for (std::size_t i = 0; i < stalled_.size(); ++i) {
    Posted& p = stalled_[i];
    const bool ours = p.conn_slot == conn.slot() && p.gen == conn.gen();
    bool hold = !ours;
    if (ours) {
      hold = nblocked == kBlocked || std::find(blocked, blocked + nblocked, p.seq) != blocked + nblocked;
      if (!hold && p.kind == Kind::Write && conn.stream_backed_up(p.seq)) {
        blocked[nblocked++] = p.seq;
        hold = true;
      }
      waits |= hold;
    }
    if (hold) {
      if (keep != i) stalled_[keep] = std::move(p);
      ++keep;
      continue;
    }
    conn.stream_stalled(p.seq, -1);
    deliver(p, conn);
  }
  stalled_.erase(stalled_.begin() + std::ptrdiff_t(keep), stalled_.end());
  if (waits) conn.inbox_waits(true);
}

// The slot's connection is gone (its generation has already moved on): what waited for it is dropped and its
// charge returned (its producer's next write says false). Nothing of the slot's next connection can be here yet.
void Worker::drop_stalled(std::uint32_t slot) noexcept {
  std::size_t keep = 0;
  for (std::size_t i = 0; i < stalled_.size(); ++i) {
    if (stalled_[i].conn_slot == slot) {
      settle(stalled_[i]);
      continue;
    }
    if (keep != i) stalled_[keep] = std::move(stalled_[i]);
    ++keep;
  }
  stalled_.erase(stalled_.begin() + std::ptrdiff_t(keep), stalled_.end());
}

bool Worker::stream_begin(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& head) noexcept {
  return answer(Kind::Begin, slot, gen, seq, head, [&](Connection& c) { return c.stream_begin(seq, head); });
}

bool Worker::stream_write(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, std::string_view data,
                          bool end, std::span<const Header> trailers) noexcept {
  Response r;
  r.body = data;
  r.headers = trailers;  // an end's trailers travel as a posted answer's headers
  return answer(end ? Kind::End : Kind::Write, slot, gen, seq, r, [&](Connection& c) {
    if (!c.stream_waits(seq)) return c.stream_write(seq, data, end, trailers);
    // On the loop, with data from another thread still waiting for this stream: a write would overtake it
    // (false: on_writable runs once it is out), and so would the end, which instead waits behind it.
    if (!end || !c.streaming(seq)) return false;
    try {
      Posted p{Kind::End, slot, gen, seq, c.slot(), 0, {}, {}, {}, {}};
      p.add_headers(trailers);
      stalled_.push_back(std::move(p));
    } catch (const std::bad_alloc&) {
      return false;
    }
    c.stream_stalled(seq, +1);
    claim(Kind::End, slot, gen, seq);  // answered from now on: later writes and ends are refused
    return true;
  });
}

// The transition a request's published token makes for an answer from another thread: a reply or a stream's
// begin needs a request nobody answered yet, writes and the end need a begun stream; reply and end leave it
// answered. A compare-and-swap, so that of two threads only one wins.
bool Worker::claim(Kind kind, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept {
  std::atomic<std::uint64_t>* awaited = published(slot).token;
  if (!awaited) return false;
  const std::uint64_t t = awaited_token(gen, seq);
  std::uint64_t from = kind == Kind::Write || kind == Kind::End ? t | kAwaitedStreaming : t;
  const std::uint64_t to = kind == Kind::Reply || kind == Kind::End ? t | kAwaitedAnswered
                           : kind == Kind::Begin                   ? t | kAwaitedStreaming
                                                                   : from;
  if (from == to) return awaited->load(std::memory_order_relaxed) == from;
  return awaited->compare_exchange_strong(from, to, std::memory_order_relaxed);
}

void Worker::stream_on_writable(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, std::function<void()> fn) {
  if (std::this_thread::get_id() != loop_thread_) return;  // documented: loop thread only
  if (Connection* conn = find(slot, gen)) conn->stream_on_writable(seq, std::move(fn));
}

bool Worker::stream_abort(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept {
  if (std::this_thread::get_id() != loop_thread_) return false;  // documented: loop thread only
  Connection* conn = find(slot, gen);
  if (!conn || conn->stream_waits(seq) || !conn->stream_abort(seq)) return false;
  after(*conn);
  return true;
}

bool Worker::body(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, BodyCall& c) {
  if (std::this_thread::get_id() != loop_thread_) return false;  // documented: loop thread only
  Connection* conn = find(slot, gen);
  if (!conn || !conn->body(seq, c)) return false;
  after(*conn);
  return true;
}

// Continuations, after the turn's completions and never from inside another connection's call: connections
// answered from elsewhere go on with their queued requests (ready), and streams whose output drained below the
// low-water mark get their waiting data and their producers' callbacks (writable_due). Each list is taken whole
// per round, so what a round adds runs in the next one.
void Worker::run_continuations() noexcept {
  for (int round = 0; round < kContinuationRounds; ++round) {
    if (ctx_.ready.empty() && ctx_.writable_due.empty() && ctx_.later.empty()) return;
    if (!ctx_.later.empty()) {
      std::vector<std::function<void()>> now;
      std::swap(now, ctx_.later);
      for (std::function<void()>& fn : now) try {
          fn();
        } catch (...) {  // an embedder's callback that throws loses only itself
        }
    }
    std::swap(ctx_.ready, ready_now_);
    for (const auto& [slot, gen] : ready_now_)
      if (Connection* conn = find(slot, gen)) {
        conn->run_ready();
        after(*conn);
      }
    ready_now_.clear();
    std::swap(ctx_.writable_due, writable_now_);
    for (const auto& [slot, gen] : writable_now_)
      if (Connection* conn = find(slot, gen)) {
        if (conn->inbox_waiting()) deliver_stalled(*conn);
        conn->run_writable();
        after(*conn);
      }
    writable_now_.clear();
  }
}

FetchRefused Worker::fetch(std::size_t upstream, const UpstreamRequest& request, Responder res,
                           const UpstreamCallback& done) noexcept {
  if (std::this_thread::get_id() != loop_thread_) return FetchRefused::NotOnLoop;
  if (upstream >= pools_.size()) return FetchRefused::NoUpstream;
  return pools_[upstream]->fetch(request, res, done);
}

bool Worker::awaiting(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) const noexcept {
  // Off the loop thread the connection is not ours to look at: the token its loop publishes says it.
  if (std::this_thread::get_id() != loop_thread_) {
    const std::atomic<std::uint64_t>* awaited = published(slot).token;
    if (ended_.load(std::memory_order_acquire) || !awaited) return false;
    const std::uint64_t v = awaited->load(std::memory_order_relaxed), t = awaited_token(gen, seq);
    return v == t || v == (t | kAwaitedStreaming);
  }
  Connection* conn = find(slot, gen);
  return conn && conn->awaiting(seq);
}

}  // namespace userd::server
