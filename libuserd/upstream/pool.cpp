// upstream/pool.cpp: the upstream connection state machine, HTTP/1.1 over a client Transport:
// Free -> Connecting -> Busy [-> Streaming] -> Settling -> Idle -> Busy ... -> Closing -> Free; and the bodies
// that stream through it (to the upstream from a client's reader, from the upstream to an UpstreamBody's taker).
#include "libuserd/upstream/pool.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <csignal>
#include <cstring>
#include <new>

#include "libuserd/io/tag.hpp"
#include "libuserd/server/connection.hpp"

namespace userd::upstream {
namespace {
// At most one re-resolution of the upstream's name this often, after a connect failed.
constexpr std::uint64_t kResolveEveryMs = 5000;
// How long an address that refused a connection is passed over when another one is there.
constexpr std::uint64_t kRefusedMs = 5000;
// Request bytes (bodies included) that may wait in the queue per pool: what bounds it is this, not only the
// number of jobs, since an embedder's request may carry a large body. A slot whose string grew past kKeepSlot
// for one large request gives the memory back when that request leaves the queue.
constexpr std::size_t kQueueBytes = 16 << 20;
constexpr std::size_t kKeepSlot = 16 << 10;

void trim(std::string& s) noexcept {
  if (s.capacity() > kKeepSlot) std::string().swap(s);
}
}  // namespace

Pool::Pool(const Target& target, std::uint16_t index, server::LoopContext& ctx)
    : target_(target), index_(index), ctx_(ctx), now_ms_(ctx.now_ms) {
  const unsigned n = target.cfg.max_conns ? target.cfg.max_conns : 1;
  conns_.reserve(n);
  for (unsigned i = 0; i < n; ++i) conns_.push_back(std::make_unique<Conn>(*this, i, ctx));
  free_.reserve(n);
  idle_.reserve(n);
  for (unsigned i = n; i-- > 0;) free_.push_back(i);
  const std::size_t q = target.cfg.max_queue ? target.cfg.max_queue : 1;
  queue_.resize(q);
  queue_bytes_.resize(q);
  addrs_ = target.addrs;
  refused_until_.assign(addrs_.size(), 0);
  in6_addr scratch;
  const char* host = target.cfg.host.c_str();
  named_ = inet_pton(AF_INET, host, &scratch) != 1 && inet_pton(AF_INET6, host, &scratch) != 1;
}

std::vector<Target::Address> unique_addresses(const addrinfo* list) {
  std::vector<Target::Address> out;
  for (const addrinfo* a = list; a; a = a->ai_next) {
    Target::Address addr;
    std::memcpy(&addr.addr, a->ai_addr, a->ai_addrlen);
    addr.len = a->ai_addrlen;
    bool seen = false;
    for (const auto& o : out) seen = seen || (o.len == addr.len && std::memcmp(&o.addr, &addr.addr, addr.len) == 0);
    if (!seen) out.push_back(addr);
  }
  return out;
}

Pool::~Pool() {
  if (session_) SSL_SESSION_free(session_);
  end_resolve();
}

// A name is resolved at start; a connect that fails may mean its addresses moved (a redeploy behind DNS), so
// the pool asks the resolver again, in the background (getaddrinfo_a: the loop never blocks), at most once per
// kResolveEveryMs, and takes the answer on a later tick. Numeric hosts are never asked about.
struct Pool::Resolve {
  gaicb req{};
  addrinfo hints{};
  std::string host, service;
};

void Pool::maybe_resolve() noexcept {
  if (!named_ || resolving_ || now_ms_ < next_resolve_ms_) return;
  next_resolve_ms_ = now_ms_ + kResolveEveryMs;
  auto* r = new (std::nothrow) Resolve;
  if (!r) return;
  try {
    r->host = target_.cfg.host;
    r->service = std::to_string(target_.cfg.port);
  } catch (const std::bad_alloc&) {
    delete r;
    return;
  }
  r->hints.ai_family = AF_UNSPEC;
  r->hints.ai_socktype = SOCK_STREAM;
  r->hints.ai_flags = AI_NUMERICSERV;
  r->req.ar_name = r->host.c_str();
  r->req.ar_service = r->service.c_str();
  r->req.ar_request = &r->hints;
  gaicb* list[1] = {&r->req};
  sigevent none{};
  none.sigev_notify = SIGEV_NONE;
  if (getaddrinfo_a(GAI_NOWAIT, list, 1, &none) != 0) {
    delete r;
    return;
  }
  resolving_ = r;
  stats_.resolves.add();
}

// On the tick: the answer, once it has come. Addresses that resolve replace the old ones (refusals forgotten);
// a failure keeps them.
void Pool::take_resolve() noexcept {
  if (!resolving_ || gai_error(&resolving_->req) == EAI_INPROGRESS) return;
  addrinfo* res = resolving_->req.ar_result;
  if (gai_error(&resolving_->req) == 0 && res) {
    try {
      std::vector<Target::Address> fresh = unique_addresses(res);
      if (!fresh.empty()) {
        std::vector<std::uint64_t> refused(fresh.size(), 0);
        addrs_.swap(fresh);
        refused_until_.swap(refused);
        next_addr_ = 0;
      }
    } catch (const std::bad_alloc&) {
      // the old addresses stay
    }
  }
  if (res) freeaddrinfo(res);
  delete resolving_;
  resolving_ = nullptr;
}

// A resolve still running when the pool goes: cancelled, or waited for a moment; if glibc still holds it after
// that, it is left to glibc (freeing it would let the resolver thread write into freed memory).
void Pool::end_resolve() noexcept {
  if (!resolving_) return;
  if (gai_cancel(&resolving_->req) == EAI_NOTCANCELED) {
    const gaicb* list[1] = {&resolving_->req};
    timespec wait{1, 0};
    gai_suspend(list, 1, &wait);
  }
  if (gai_error(&resolving_->req) == EAI_INPROGRESS) {
    resolving_ = nullptr;
    return;
  }
  if (resolving_->req.ar_result) freeaddrinfo(resolving_->req.ar_result);
  delete resolving_;
  resolving_ = nullptr;
}

void Pool::teardown() noexcept {
  for (auto& c : conns_) c->t.teardown();
}

namespace {

bool pool_owned(std::string_view name) noexcept {
  return http::iequals(name, "host") || http::iequals(name, "content-length") ||
         http::iequals(name, "transfer-encoding") || http::iequals(name, "connection");
}
bool idempotent(std::string_view m) noexcept {
  return m == "GET" || m == "HEAD" || m == "PUT" || m == "DELETE" || m == "OPTIONS" || m == "TRACE";
}

}  // namespace

FetchRefused Pool::fetch(const UpstreamRequest& req, Responder res, const UpstreamCallback& done) noexcept {
  // What would split or contradict the request is refused here, not sent.
  if (!done || !http::is_token(req.method) || req.target.empty() || req.target.front() != '/' ||
      !http::is_target(req.target))
    return FetchRefused::BadRequest;
  for (const Header& h : req.headers)
    if (!http::is_token(h.name) || !http::is_field_value(h.value) || pool_owned(h.name)) return FetchRefused::BadRequest;
  Job job;
  job.res = res;
  job.done = done;
  job.deadline = now_ms_ + target_.cfg.timeout_ms;
  job.idempotent = idempotent(req.method);
  job.head = req.method == "HEAD";
  job.stream = req.stream_response;
  if (req.body_from) {
    if (!req.body_from.alive()) return FetchRefused::BadRequest;  // its body ended or failed: nothing to send
    job.from = req.body_from;
    job.from_chunked = req.body_length < 0;
    job.from_length = job.from_chunked ? 0 : std::uint64_t(req.body_length);
  }
  try {
    request_.clear();
    request_.append(req.method).append(" ").append(req.target).append(" HTTP/1.1\r\nHost: ");
    request_.append(target_.host_header).append("\r\n");
    for (const Header& h : req.headers) request_.append(h.name).append(": ").append(h.value).append("\r\n");
    if (job.from) {
      if (job.from_chunked) request_.append("Transfer-Encoding: chunked\r\n");
      else request_.append("Content-Length: ").append(std::to_string(req.body_length)).append("\r\n");
    } else if (!req.body.empty() || req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
      request_.append("Content-Length: ").append(std::to_string(req.body.size())).append("\r\n");
    }
    request_.append("\r\n");
    if (!job.from) request_.append(req.body);
    if (count_ == 0 && (!idle_.empty() || !free_.empty())) {
      dispatch(job, request_);
      return FetchRefused::None;
    }
    return enqueue(job, request_, false) ? FetchRefused::None : FetchRefused::QueueFull;
  } catch (const std::bad_alloc&) {
    return FetchRefused::NoMemory;  // the caller answers, as for a full queue
  }
}

// Only from pump() or fetch(), with a connection idle or free, or from a retry.
void Pool::dispatch(const Job& job, std::string_view request) {
  // A retry goes to a fresh connection: the idle ones may be as dead as the one that failed.
  if (!job.retried && !idle_.empty()) {
    std::uint32_t i = idle_.back();
    idle_.pop_back();
    start(i, job, request);
    return;
  }
  if (!free_.empty()) {
    std::uint32_t i = free_.back();
    free_.pop_back();
    open(i, job, request);
    return;
  }
  // A retry with only idle connections left: close one to make room, and wait for it. The request is copied
  // into the queue before the close can hand the slot on.
  const bool queued = enqueue(job, request, true);
  if (!idle_.empty()) close(idle_.back());
  if (!queued) deliver(job, UpstreamReply{UpstreamError::Overloaded, 0, {}, {}});
}

bool Pool::enqueue(const Job& job, std::string_view request, bool front) {
  if (count_ == queue_.size() || queued_bytes_ + request.size() > kQueueBytes) {
    stats_.errors[std::size_t(UpstreamError::Overloaded)].add();
    return false;
  }
  const std::size_t slot = front ? (head_ + queue_.size() - 1) % queue_.size() : (head_ + count_) % queue_.size();
  queue_bytes_[slot].assign(request);  // may throw: nothing is changed until it has not
  queue_[slot] = job;
  queued_bytes_ += request.size();
  if (front) head_ = slot;
  ++count_;
  return true;
}

// Gives waiting requests the connections that came free. Not re-entrant: a release or a callback during it
// leaves the loop here to see the connection.
void Pool::pump() {
  if (pumping_) return;
  pumping_ = true;
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{pumping_};
  while (count_ > 0 && (!idle_.empty() || !free_.empty())) {
    const Job j = queue_[head_];
    pumping_bytes_.swap(queue_bytes_[head_]);  // both keep their capacity: no allocation
    trim(queue_bytes_[head_]);
    queued_bytes_ -= pumping_bytes_.size();
    head_ = (head_ + 1) % queue_.size();
    --count_;
    // A client that left while its request waited is not asked for: after a burst, the queue would otherwise
    // keep the upstream busy with answers nobody reads, and make new requests wait behind them.
    if (!j.res.alive()) {
      deliver(j, UpstreamReply{UpstreamError::Overloaded, 0, {}, {}});
      continue;
    }
    dispatch(j, pumping_bytes_);
    trim(pumping_bytes_);
  }
}

void Pool::start(std::uint32_t i, const Job& job, std::string_view request) {
  Conn& c = *conns_[i];
  c.out.clear();
  c.out.append(request);
  c.request_out = false;
  c.job = job;
  c.got_bytes = false;
  c.in.clear();
  ++c.seq;
  c.body.reset();
  c.up = Upload{};
  c.reader.stop_at_head(job.stream);
  c.reader.reset(job.stream ? UINT64_MAX : target_.cfg.max_body, job.head);
  if (c.state == State::Connecting) return;  // sent once connected
  c.state = State::Busy;
  try {
    hand(i);
  } catch (const std::bad_alloc&) {  // the caller learns it (fetch: NoMemory); nobody is called back
    close(i);
    throw;
  }
}

// The request goes to the transport once it can carry it: connected, and on HTTPS with the handshake done.
void Pool::hand(std::uint32_t i) {
  Conn& c = *conns_[i];
  if (c.request_out || c.state != State::Busy || (c.t.tls().active() && !c.t.tls().established())) return;
  c.t.out().append_external(c.out.data(), c.out.size());  // c.out lives until the next request on it
  c.request_out = true;
  c.t.flush();
  if (c.job.from && !c.up.on) start_upload(i);
}

void Pool::update_waits(std::uint32_t i) noexcept {
  Conn& c = *conns_[i];
  c.t.guarded([&] { hand(i); });
  c.t.update_recv(stuck(c));  // a receive that ended (ENOBUFS, a full CQ) is armed again
}

// Plaintext of the response (decrypted on HTTPS): kept with padding behind it, since the body is handed out in
// place.
void Pool::on_bytes(std::uint32_t i, const char* data, std::size_t n) {
  Conn& c = *conns_[i];
  if (c.state == State::Streaming) {
    std::memcpy(c.in.prepare(n + kUpstreamBodyPadding), data, n);
    c.in.commit(n);
    c.job.deadline = now_ms_ + target_.cfg.timeout_ms;  // the upstream moves: its next wait starts now
    // Handed out once per loop turn, not per receive (2 KiB each from io_uring's buffer ring): a piece per
    // turn is what keeps the cost per byte of writing it on, framing it and sending it low. What a turn
    // gathers is bounded by the receive buffers the turn completed.
    if (!c.body.pump_due && c.body.taken && !c.body.stuck()) {
      c.body.pump_due = true;
      const std::uint32_t seq = c.seq;
      ctx_.later.push_back([this, i, seq] {
        if (conns_[i]->seq == seq) conns_[i]->body.pump_due = false;
        repump(i, seq);
      });
    }
    return;
  }
  if (c.state != State::Busy || !c.job.done) return close(i);  // bytes nobody asked for: the stream is off
  c.got_bytes = true;
  std::memcpy(c.in.prepare(n + kUpstreamBodyPadding), data, n);
  c.in.commit(n);
  parse(i);
}

// The request is out. Answered meanwhile (Settling): the connection can be reused now.
void Pool::on_sent(std::uint32_t i) noexcept {
  Conn& c = *conns_[i];
  if (c.t.peer_eof()) return on_end(i);
  if (c.up.on) {  // what the body queued while the last send was out goes now
    c.t.guarded([&] { c.t.flush(); });
    if (c.state == State::Closing || c.state == State::Free) return;
  }
  if (c.up.on && !c.up.done) {  // the upstream takes the body: its next wait starts now
    c.job.deadline = now_ms_ + target_.cfg.timeout_ms;
    if (c.up.paused && c.t.queued() <= server::Transport::kOutLowWater) {
      c.up.paused = false;
      c.job.from.resume();
    }
  }
  if (c.state == State::Settling && !c.t.sending()) {
    try {
      make_idle(i);
    } catch (const std::bad_alloc&) {
      // pump() could not copy a request: it stays queued for the next release
    }
  }
}

// The transport cannot go on: the upstream closed (a response that runs to the close is complete then), a
// send or receive failed, a TLS handshake or record failed. Whoever waits is told, once.
void Pool::on_end(std::uint32_t i) noexcept {
  Conn& c = *conns_[i];
  if (c.state == State::Closing || c.state == State::Free) return;
  if (c.state == State::Streaming) {
    // The upstream's end: the end of a body framed by it, else a body cut short. What arrived before it is
    // still handed out first, at its taker's pace.
    if (!c.t.peer_eof() || c.t.tls_broken() || !c.t.is_open()) return body_failed(i, UpstreamError::Closed);
    c.body.eof = true;
    return repump(i, c.seq);
  }
  try {
    if ((c.state == State::Busy || c.state == State::Connecting) && c.job.done) {
      if (c.t.tls().active() && !c.t.tls().established()) return fail(i, UpstreamError::Unreachable);
      if (c.t.tls_broken()) return fail(i, UpstreamError::BadResponse);  // a record that does not authenticate
      if (c.t.peer_eof()) {
        const http::ReadStep st = c.reader.finish_at_close(c.in.data(), c.in.size());
        if (st.status == http::ReadStatus::Done) return complete(i, st.total);
      }
      return retry_or_fail(i, UpstreamError::Closed);
    }
  } catch (const std::bad_alloc&) {
    if (c.job.done) return fail(i, UpstreamError::Closed);  // fail() allocates nothing
  }
  close(i);  // idle or settling, and closed by the upstream (or its send failed): evicted
}

void Pool::on_released(std::uint32_t i) noexcept {
  Conn& c = *conns_[i];
  c.state = State::Free;
  stats_.open.sub();
  free_.push_back(i);
  try {
    pump();
  } catch (const std::bad_alloc&) {
    // the requests stay queued and go out with the next release
  }
}

// The next address in turn that has not refused a connection lately (any, when all have).
std::size_t Pool::pick_address() noexcept {
  const std::size_t n = addrs_.size();
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t a = (next_addr_ + k) % n;
    if (refused_until_[a] <= now_ms_) {
      next_addr_ = a + 1;
      return a;
    }
  }
  return next_addr_++ % n;
}

void Pool::open(std::uint32_t i, const Job& job, std::string_view request) {
  Conn& c = *conns_[i];
  c.addr = pick_address();
  const Target::Address& to = addrs_[c.addr];
  const int fd = ::socket(to.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free_.push_back(i);
    stats_.errors[std::size_t(UpstreamError::Unreachable)].add();
    deliver(job, UpstreamReply{UpstreamError::Unreachable, 0, {}, {}});
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c.state = State::Connecting;
  c.reused = false;
  stats_.connects.add();
  stats_.open.add();
  try {
    start(i, job, request);
  } catch (const std::bad_alloc&) {
    ::close(fd);
    c.state = State::Free;
    stats_.open.sub();
    free_.push_back(i);
    throw;
  }
  c.t.connect(fd, std::uint32_t(index_) << 16 | i, reinterpret_cast<const sockaddr*>(&to.addr), to.len);
}

void Pool::on_completion(const io::Completion& comp) noexcept {
  const std::uint32_t i = io::tag_slot(comp.tag) & 0xffff;
  if (i >= conns_.size() || conns_[i]->t.gen() != io::tag_gen(comp.tag) || conns_[i]->state == State::Free) return;
  try {
    on_conn_completion(i, comp);
  } catch (const std::bad_alloc&) {
    if (conns_[i]->job.done) fail(i, UpstreamError::Closed);  // fail() allocates nothing
    else close(i);
  }
}

void Pool::on_conn_completion(std::uint32_t i, const io::Completion& comp) {
  Conn& c = *conns_[i];
  switch (io::tag_op(comp.tag)) {
    case io::Op::UpConnect:
      if (!c.t.connected()) return;  // closed while it connected: released now
      if (comp.res < 0) {
        // Refused: skip that address for a while, and try this request on another one (nothing was sent).
        if (comp.res == -ECONNREFUSED && c.addr < refused_until_.size()) refused_until_[c.addr] = now_ms_ + kRefusedMs;
        maybe_resolve();
        if (comp.res == -ECONNREFUSED && c.job.done && c.job.refusals + 1u < addrs_.size()) {
          Job job = c.job;
          ++job.refusals;
          const bool queued = enqueue(job, std::string_view(c.out.data(), c.out.size()), true);
          close(i);
          if (!queued) return deliver(job, UpstreamReply{UpstreamError::Overloaded, 0, {}, {}});
          return pump();
        }
        return fail(i, UpstreamError::Unreachable);
      }
      c.state = State::Busy;
      if (!c.t.open_client(target_.tls.get(), target_.cfg.host.c_str(), session_))
        return fail(i, UpstreamError::Unreachable);
      if (c.state == State::Busy) hand(i);
      return;
    case io::Op::UpSend:
      c.t.on_send(comp.res);
      return;
    case io::Op::UpRecv:
      if (comp.res > 0) c.t.on_recv(comp.data, std::size_t(comp.res));
      if (!comp.more) c.t.on_recv_end(comp.res);
      return;
    default:
      return;
  }
}

void Pool::parse(std::uint32_t i) {
  Conn& c = *conns_[i];
  while (true) {
    const http::ReadStep s = c.reader.read(c.in.data(), c.in.size());
    switch (s.status) {
      case http::ReadStatus::NeedMore:
        return;
      case http::ReadStatus::Head:  // only a response that streams stops at its head
        return begin_body(i, s.total, false);
      case http::ReadStatus::Bad:
        return fail(i, s.error == http::HttpError::BodyTooLarge ? UpstreamError::TooLarge : UpstreamError::BadResponse);
      case http::ReadStatus::Interim:
        // RFC 9110 15.2.2: after a 101 the connection no longer speaks HTTP, and we asked for no upgrade.
        if (c.reader.head().status == 101) return fail(i, UpstreamError::BadResponse);
        c.in.consume(s.total);  // 100, 102, 103: the real response follows (to HEAD, still without a body)
        c.reader.reset(c.job.stream ? UINT64_MAX : target_.cfg.max_body, c.job.head);
        continue;
      case http::ReadStatus::Done:
        if (c.job.stream) return begin_body(i, s.total, true);  // a head with no body to follow
        return complete(i, s.total);
    }
  }
}

void Pool::complete(std::uint32_t i, std::size_t total) {
  Conn& c = *conns_[i];
  const http::ParsedResponse& head = c.reader.head();
  // Extra bytes, or the upstream's end already read: the stream is off.
  // A request body still on its way to the upstream cannot be finished on it either.
  const bool reusable = head.keep_alive && total == c.in.size() && !c.t.peer_eof() && (!c.job.from || c.up.done);
  UpstreamReply r;
  r.status = head.status;
  r.headers = {head.headers.data(), head.header_count};
  r.body = c.reader.body(c.in.data());
  stats_.ok.add();
  const Job job = c.job;
  c.job = Job{};  // answered: a late send failure must not answer it again
  c.job.deadline = job.deadline;  // a send that never completes (Settling) still ends then
  // A new connection's session (and, on TLS 1.3, its ticket) is what the next new connection offers; taken once
  // per connection, at its first answer, not for every request on it.
  if (target_.tls && reusable && !c.reused) {
    if (SSL_SESSION* s = c.t.tls().session_for_reuse()) {
      if (session_) SSL_SESSION_free(session_);
      session_ = s;
    }
  }
  c.reused = true;
  // Not on idle_ during the callback: a fetch from it must not reuse the bytes r points into.
  c.state = reusable ? (c.t.queued() || c.t.sending() ? State::Settling : State::Idle) : State::Busy;
  deliver(job, r);
  if (!reusable) return close(i);
  c.in.clear();
  if (c.state == State::Idle) {
    idle_.push_back(i);
    pump();
  }
}

void Pool::make_idle(std::uint32_t i) {
  conns_[i]->state = State::Idle;
  idle_.push_back(i);
  pump();
}

void Pool::deliver(const Job& job, const UpstreamReply& r) noexcept {
  if (job.done) job.done(job.res, r);
}

void Pool::fail(std::uint32_t i, UpstreamError e) {
  Conn& c = *conns_[i];
  stats_.errors[std::size_t(e)].add();
  const Job job = c.job;
  close(i);
  deliver(job, UpstreamReply{e, 0, {}, {}});
}

// A reused connection that died before answering anything was closed by the upstream while idle: try once more
// on a fresh one, if the method allows it (RFC 9110 9.2.2) or not a byte of the request went out: none was ever
// handed to a send, on plain TCP and TLS alike (a send in flight may have delivered bytes before the connection
// died, and bytes encrypted but not yet handed over have not gone anywhere). Anything else is the upstream's.
void Pool::retry_or_fail(std::uint32_t i, UpstreamError e) {
  Conn& c = *conns_[i];
  // A streamed request body is the client's, read once: it cannot be sent again.
  if (!c.job.done || !c.reused || c.got_bytes || c.job.retried || c.job.from) return fail(i, e);
  if (!c.job.idempotent && c.request_out) return fail(i, e);
  stats_.retries.add();
  Job job = c.job;
  job.retried = true;
  // Queued first: the request lives in c.out, which the slot's next user overwrites.
  const bool queued = enqueue(job, std::string_view(c.out.data(), c.out.size()), true);
  close(i);
  if (!queued) return deliver(job, UpstreamReply{UpstreamError::Overloaded, 0, {}, {}});  // counted by enqueue
  pump();
}

void Pool::close(std::uint32_t i) noexcept {
  Conn& c = *conns_[i];
  if (c.state == State::Closing || c.state == State::Free) return;
  if (c.state == State::Idle) {
    for (std::size_t k = 0; k < idle_.size(); ++k)
      if (idle_[k] == i) {
        idle_[k] = idle_.back();
        idle_.pop_back();
        break;
      }
  }
  // Mid-body either way: a reset, not a FIN. An upstream that is still sending (to a window our socket will never
  // open again) or still waiting for the rest of a body learns at once that neither will happen, instead of at
  // its own send or body deadline.
  const bool mid_body = c.state == State::Streaming || (c.up.on && !c.up.done);
  c.state = State::Closing;
  c.job = Job{};
  c.body.reset();  // what a taker's callbacks hold goes now
  c.up = Upload{};
  // Released now, or once what is in flight has completed (on_released).
  if (mid_body) c.t.reset_now();
  else c.t.close_now();
}

void Pool::tick() noexcept {
  const std::uint64_t now = now_ms_;
  take_resolve();
  try {
    for (std::uint32_t i = 0; i < conns_.size(); ++i) {
      Conn& c = *conns_[i];
      if (c.state == State::Streaming) {
        // A taker that takes nothing holds the connection only while its client's request is awaited (its own
        // deadlines apply there); one that takes, and an upstream that sends nothing, are held to timeout_ms.
        if (c.body.stuck()) {
          if (!c.body.delivering && !c.job.res.alive()) close(i);
          // A pipe waiting for its client's on_writable also tries again each tick: a wake-up it missed costs
          // a tick, not the body (test_relay saw a rare stall on HTTP/2 under ASan, not yet explained).
          else if (c.body.pending > 0 && !c.body.paused && !c.body.delivering) repump(i, c.seq);
        } else if (c.job.deadline <= now) {
          body_failed(i, UpstreamError::Timeout);
        }
        continue;
      }
      // A request body that waits for its client: the client's body deadline applies, not ours.
      if (c.state == State::Busy && c.up.on && !c.up.done && !c.up.paused) continue;
      if ((c.state == State::Connecting || c.state == State::Busy) && c.job.done && c.job.deadline <= now) {
        if (c.state == State::Connecting) maybe_resolve();  // a connect that hangs is a failed connect too
        fail(i, c.state == State::Connecting ? UpstreamError::Unreachable : UpstreamError::Timeout);
      }
      else if (c.state == State::Settling && c.job.deadline <= now)
        close(i);  // answered, but the upstream never took the rest of the request: the slot is not held forever
    }
  } catch (const std::bad_alloc&) {
  }
  while (count_ > 0 && queue_[head_].deadline <= now) {
    const Job j = queue_[head_];
    queued_bytes_ -= queue_bytes_[head_].size();
    trim(queue_bytes_[head_]);
    head_ = (head_ + 1) % queue_.size();
    --count_;
    stats_.errors[std::size_t(UpstreamError::Timeout)].add();
    deliver(j, UpstreamReply{UpstreamError::Timeout, 0, {}, {}});
  }
}

// A streamed response's head: its taker takes the body in the callback (pipe or on_data), or it is abandoned.
// whole: the head is the message (HEAD, 204, 304, Content-Length: 0): the taker is told the end at once.
void Pool::begin_body(std::uint32_t i, std::size_t head_len, bool whole) {
  Conn& c = *conns_[i];
  const http::ParsedResponse& head = c.reader.head();
  Body& b = c.body;
  b.keep_alive = head.keep_alive;
  if (whole) {
    b.framing = Body::Framing::Length;
    b.left = 0;
  } else if (head.chunked) {
    b.framing = Body::Framing::Chunked;
    b.chunked.reset(UINT64_MAX);
  } else if (head.until_close) {
    b.framing = Body::Framing::Close;
    b.keep_alive = false;
  } else {
    b.framing = Body::Framing::Length;
    b.left = head.content_length;
  }
  if (target_.tls && b.keep_alive && !c.reused) {  // as in complete(): a new connection's session is kept
    if (SSL_SESSION* s = c.t.tls().session_for_reuse()) {
      if (session_) SSL_SESSION_free(session_);
      session_ = s;
    }
  }
  c.reused = true;
  UpstreamReply r;
  r.status = head.status;
  r.headers = {head.headers.data(), head.header_count};
  r.stream = UpstreamBody(this, i, c.seq);
  const Job job = c.job;
  const std::uint32_t seq = c.seq;
  c.job.done = UpstreamCallback{};  // answered: from now on only the body's taker hears of this exchange
  c.state = State::Streaming;
  c.t.set_bulk(!whole);  // a body to come: 64 KiB receives, not 2 KiB ones
  b.delivering = true;  // the receive waits for the taker meanwhile
  deliver(job, r);
  if (c.state != State::Streaming || c.seq != seq) return;  // abandoned in the callback
  b.delivering = false;
  c.in.consume(head_len);
  if (!b.taken) return whole ? end_body(i) : close(i);  // a body nobody took: nothing to read, or abandoned
  pump_body(i);
}

// Hands the taker what has arrived, a piece at a time, while it takes; then says what the receive waits for.
void Pool::pump_body(std::uint32_t i) {
  Conn& c = *conns_[i];
  Body& b = c.body;
  const std::uint32_t seq = c.seq;
  bool starved = false;
  while (c.state == State::Streaming && c.seq == seq && b.taken && !b.paused && !b.delivering) {
    std::string_view piece;
    std::size_t used = 0;
    bool last = false;
    if (b.pending > 0) {  // the piece a pipe refused before, first
      piece = {c.in.data(), b.pending};
      used = b.raw_at;
      last = b.pending_last;
      b.pending = 0;
    } else if (b.framing == Body::Framing::Length) {
      const std::size_t n = std::size_t(std::min<std::uint64_t>(c.in.size(), b.left));
      if (n == 0 && b.left > 0) {
        starved = true;
        break;
      }
      piece = {c.in.data(), n};
      used = n;
      b.left -= n;
      last = b.left == 0;
    } else if (b.framing == Body::Framing::Close) {
      if (c.in.empty() && !b.eof) {
        starved = true;
        break;
      }
      piece = {c.in.data(), c.in.size()};
      used = c.in.size();
      last = b.eof;
    } else {
      if (c.in.empty()) {
        starved = true;
        break;
      }
      const http::ChunkStep s = b.chunked.decode(c.in.data(), c.in.size(), c.in.data());  // in place
      if (s.status == http::ChunkStatus::Bad || s.status == http::ChunkStatus::TooLarge)
        return body_failed(i, UpstreamError::BadResponse);
      last = s.status == http::ChunkStatus::Done;
      if (s.produced == 0 && !last) {
        c.in.consume(s.consumed);  // a size line or a chunk's end: nothing to hand out yet
        if (s.consumed == 0 || c.in.empty()) {
          starved = true;
          break;
        }
        continue;
      }
      piece = {c.in.data(), s.produced};
      used = s.consumed;
    }
    if (!offer(i, piece, last)) {  // a pipe that cannot write now: kept, decoded, until it can
      b.pending = piece.size();
      b.raw_at = used;
      b.pending_last = last;
      break;
    }
    if (c.state != State::Streaming || c.seq != seq) return;  // abandoned, or failed, by the taker
    c.in.consume(used);
    if (last) return end_body(i);
  }
  if (c.state != State::Streaming || c.seq != seq) return;
  // The upstream ended before the body did (a body framed by the close ended above).
  if (starved && b.eof) return body_failed(i, UpstreamError::Closed);
  c.t.update_recv(stuck(c));
}

// pump_body from a callback or a later turn: for the exchange it was meant for, if that is still streaming.
void Pool::repump(std::uint32_t i, std::uint32_t seq) noexcept {
  Conn& c = *conns_[i];
  if (c.seq != seq || c.state != State::Streaming) return;
  try {
    pump_body(i);
  } catch (const std::bad_alloc&) {
    body_failed(i, UpstreamError::Closed);
  }
}

// One piece to the taker. False only when a pipe cannot write it now: it is offered again once the client
// can take more (on_writable).
bool Pool::offer(std::uint32_t i, std::string_view piece, bool last) {
  Conn& c = *conns_[i];
  Body& b = c.body;
  const std::uint32_t seq = c.seq;
  if (b.piping) {
    if (!piece.empty() && !b.pipe.write(piece)) {
      if (!b.pipe.alive()) {  // the client left: nobody reads the rest
        close(i);
        return true;
      }
      b.pipe.on_writable([this, i, seq] { repump(i, seq); });
      return false;
    }
    if (last) {
      const Stream to = b.pipe;
      b.piping = false;
      to.end();
    }
    return true;
  }
  std::function<void(std::string_view, bool)> fn = std::move(b.data);  // it may set another while it runs
  b.delivering = true;
  bool ok = true;
  try {
    if (fn) fn(piece, last);
  } catch (...) {
    ok = false;
  }
  if (c.state != State::Streaming || c.seq != seq) return true;
  b.delivering = false;
  if (!ok) {
    close(i);  // a taker that throws has abandoned the body
    return true;
  }
  if (!b.data && !last) b.data = std::move(fn);
  return true;
}

// The body is all out: the connection is reused when the upstream said it may be and nothing is left over.
void Pool::end_body(std::uint32_t i) {
  Conn& c = *conns_[i];
  stats_.ok.add();
  const bool reusable = c.body.keep_alive && c.in.empty() && !c.t.peer_eof() && (!c.job.from || c.up.done);
  c.body.reset();
  c.up = Upload{};
  c.t.set_bulk(false);
  const std::uint64_t deadline = now_ms_ + target_.cfg.timeout_ms;
  c.job = Job{};
  c.job.deadline = deadline;  // a send that never completes (Settling) still ends
  if (!reusable) return close(i);
  c.in.clear();
  c.t.update_recv(false);  // a receive the taker's pace stopped is armed again: an idle connection listens
  if (c.t.queued() || c.t.sending()) {
    c.state = State::Settling;
    return;
  }
  make_idle(i);
}

// The body will not complete: its taker hears it (a pipe's client stream is aborted, so that a cut body never
// reads as a whole one), and the connection is closed.
void Pool::body_failed(std::uint32_t i, UpstreamError e) noexcept {
  Conn& c = *conns_[i];
  if (c.state != State::Streaming) return;
  stats_.errors[std::size_t(e)].add();
  if (c.body.piping) c.body.pipe.abort();
  if (c.body.error) {
    try {
      ctx_.later.push_back([fn = std::move(c.body.error), e] { fn(e); });
    } catch (...) {  // out of memory: the taker is not told, but nothing of it is kept either
    }
  }
  close(i);
}

bool Pool::body_take(std::uint32_t i, std::uint32_t seq, const Stream* pipe,
                     std::function<void(std::string_view, bool)>* data) {
  if (i >= conns_.size()) return false;
  Conn& c = *conns_[i];
  Body& b = c.body;
  if (c.seq != seq || c.state != State::Streaming || b.piping) return false;
  if (pipe) {
    if (b.taken || !pipe->alive()) return false;
    b.pipe = *pipe;
    b.piping = true;
  } else {
    if (!*data) return false;
    b.data = std::move(*data);
  }
  b.taken = true;  // only in its head's callback: a body nobody took there is closed when it returns
  return true;
}

void Pool::body_on_error(std::uint32_t i, std::uint32_t seq, std::function<void(UpstreamError)>& fn) {
  if (i >= conns_.size()) return;
  Conn& c = *conns_[i];
  if (c.seq == seq && c.state == State::Streaming) c.body.error = std::move(fn);
}

// A resume hands out what waits later in the loop's turn, never inside the call (which may be the taker's).
void Pool::body_pause(std::uint32_t i, std::uint32_t seq, bool on) noexcept {
  if (i >= conns_.size()) return;
  Conn& c = *conns_[i];
  if (c.seq != seq || c.state != State::Streaming || c.body.paused == on) return;
  c.body.paused = on;
  if (on) return c.t.update_recv(stuck(c));
  c.job.deadline = now_ms_ + target_.cfg.timeout_ms;
  try {
    ctx_.later.push_back([this, i, seq] { repump(i, seq); });
  } catch (const std::bad_alloc&) {
    body_failed(i, UpstreamError::Closed);
  }
}

void Pool::body_abandon(std::uint32_t i, std::uint32_t seq) noexcept {
  if (i < conns_.size() && conns_[i]->seq == seq && conns_[i]->state == State::Streaming) close(i);
}

bool Pool::body_alive(std::uint32_t i, std::uint32_t seq) const noexcept {
  return i < conns_.size() && conns_[i]->seq == seq && conns_[i]->state == State::Streaming;
}

// The request's head is out: its body follows from the client's reader, which this now takes over.
void Pool::start_upload(std::uint32_t i) {
  Conn& c = *conns_[i];
  c.up.on = true;
  const std::uint32_t seq = c.seq;
  c.job.from.on_error([this, i, seq](BodyError) { upload_failed(i, seq); });
  if (c.job.from.on_data([this, i, seq](std::string_view chunk, bool last) { upload(i, seq, chunk, last); }))
    return;
  // Its body ended or failed since fetch: told later in the turn, never inside fetch.
  ctx_.later.push_back([this, i, seq] { upload_failed(i, seq); });
}

// A piece of the client's body, framed and queued for the upstream; past the transport's high-water mark the
// client's body is paused until the upstream has taken most of it (on_sent).
void Pool::upload(std::uint32_t i, std::uint32_t seq, std::string_view chunk, bool last) noexcept {
  Conn& c = *conns_[i];
  if (c.seq != seq || !c.up.on || c.up.done || (c.state != State::Busy && c.state != State::Streaming)) return;
  // A body that does not match the length the request said would corrupt the connection's framing.
  c.up.sent += chunk.size();
  if (!c.job.from_chunked && (c.up.sent > c.job.from_length || (last && c.up.sent != c.job.from_length)))
    return upload_failed(i, seq);
  try {
    server::Transport::OutQueue& q = c.t.out();
    const std::size_t from = q.bytes.size();
    if (c.job.from_chunked) {
      if (!chunk.empty()) {
        char size[24];
        const int n = std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
        q.bytes.append(size, std::size_t(n));
        q.bytes.append(chunk);
        q.bytes.append("\r\n", 2);
      }
      if (last) q.bytes.append("0\r\n\r\n", 5);
    } else {
      q.bytes.append(chunk);
    }
    if (q.bytes.size() != from) {
      q.note_bytes(from);
      c.t.flush();
    }
  } catch (const std::bad_alloc&) {
    return upload_failed(i, seq);
  }
  c.job.deadline = now_ms_ + target_.cfg.timeout_ms;
  if (last) {
    c.up.done = true;
  } else if (!c.up.paused && c.t.queued() > server::Transport::kOutHighWater) {
    c.up.paused = true;
    c.job.from.pause();
  }
}

// The client's body will not complete: neither will the exchange.
void Pool::upload_failed(std::uint32_t i, std::uint32_t seq) noexcept {
  Conn& c = *conns_[i];
  if (c.seq != seq || !c.up.on || c.up.done) return;
  c.up = Upload{};
  if (c.state == State::Streaming) return body_failed(i, UpstreamError::BodyFailed);
  if ((c.state == State::Busy || c.state == State::Connecting) && c.job.done) return fail(i, UpstreamError::BodyFailed);
  close(i);
}

}  // namespace userd::upstream

namespace userd {

bool UpstreamBody::pipe(Stream to) const { return pool_ && pool_->body_take(conn_, seq_, &to, nullptr); }
bool UpstreamBody::on_data(std::function<void(std::string_view, bool)> fn) const {
  return pool_ && pool_->body_take(conn_, seq_, nullptr, &fn);
}
void UpstreamBody::on_error(std::function<void(UpstreamError)> fn) const {
  if (pool_) pool_->body_on_error(conn_, seq_, fn);
}
void UpstreamBody::pause() const noexcept {
  if (pool_) pool_->body_pause(conn_, seq_, true);
}
void UpstreamBody::resume() const noexcept {
  if (pool_) pool_->body_pause(conn_, seq_, false);
}
void UpstreamBody::abandon() const noexcept {
  if (pool_) pool_->body_abandon(conn_, seq_);
}
bool UpstreamBody::alive() const noexcept { return pool_ && pool_->body_alive(conn_, seq_); }

}  // namespace userd
