// upstream/pool.cpp: the upstream connection state machine, HTTP/1.1 over a client Transport:
// Free -> Connecting -> Busy -> Settling -> Idle -> Busy ... -> Closing -> Free.
#include "libuserd/upstream/pool.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
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
  try {
    request_.clear();
    request_.append(req.method).append(" ").append(req.target).append(" HTTP/1.1\r\nHost: ");
    request_.append(target_.host_header).append("\r\n");
    for (const Header& h : req.headers) request_.append(h.name).append(": ").append(h.value).append("\r\n");
    if (!req.body.empty() || req.method == "POST" || req.method == "PUT" || req.method == "PATCH")
      request_.append("Content-Length: ").append(std::to_string(req.body.size())).append("\r\n");
    request_.append("\r\n").append(req.body);
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
  c.reader.reset(target_.cfg.max_body, job.head);
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
}

void Pool::update_waits(std::uint32_t i) noexcept {
  Conn& c = *conns_[i];
  c.t.guarded([&] { hand(i); });
  c.t.update_recv(false);  // a receive that ended (ENOBUFS, a full CQ) is armed again
}

// Plaintext of the response (decrypted on HTTPS): kept with padding behind it, since the body is handed out in
// place.
void Pool::on_bytes(std::uint32_t i, const char* data, std::size_t n) {
  Conn& c = *conns_[i];
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
  if (c.state == State::Settling) {
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
      case http::ReadStatus::Head:  // responses never stop at their head
        return;
      case http::ReadStatus::Bad:
        return fail(i, s.error == http::HttpError::BodyTooLarge ? UpstreamError::TooLarge : UpstreamError::BadResponse);
      case http::ReadStatus::Interim:
        // RFC 9110 15.2.2: after a 101 the connection no longer speaks HTTP, and we asked for no upgrade.
        if (c.reader.head().status == 101) return fail(i, UpstreamError::BadResponse);
        c.in.consume(s.total);  // 100, 102, 103: the real response follows (to HEAD, still without a body)
        c.reader.reset(target_.cfg.max_body, c.job.head);
        continue;
      case http::ReadStatus::Done:
        return complete(i, s.total);
    }
  }
}

void Pool::complete(std::uint32_t i, std::size_t total) {
  Conn& c = *conns_[i];
  const http::ParsedResponse& head = c.reader.head();
  // Extra bytes, or the upstream's end already read: the stream is off.
  const bool reusable = head.keep_alive && total == c.in.size() && !c.t.peer_eof();
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
  if (!c.job.done || !c.reused || c.got_bytes || c.job.retried) return fail(i, e);
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
  c.state = State::Closing;
  c.job = Job{};
  c.t.close_now();  // released now, or once what is in flight has completed (on_released)
}

void Pool::tick() noexcept {
  const std::uint64_t now = now_ms_;
  take_resolve();
  try {
    for (std::uint32_t i = 0; i < conns_.size(); ++i) {
      Conn& c = *conns_[i];
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

}  // namespace userd::upstream
