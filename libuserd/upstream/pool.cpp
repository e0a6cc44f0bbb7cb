// upstream/pool.cpp: the upstream connection state machine: Free -> Connecting -> Busy <-> Idle -> Closing -> Free.
#include "libuserd/upstream/pool.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "libuserd/io/tag.hpp"

namespace userd::upstream {
namespace {
// Requests that may wait for a connection, per connection: beyond this the upstream is clearly not keeping up
// and the caller is told at once rather than after the timeout.
constexpr std::size_t kQueuePerConn = 16;
}  // namespace

Pool::Pool(const Target& target, std::uint16_t index, io::Backend& backend, const std::uint64_t& now_ms)
    : target_(target), index_(index), backend_(backend), now_ms_(now_ms) {
  const unsigned n = target.cfg.max_conns ? target.cfg.max_conns : 1;
  conns_.resize(n);
  free_.reserve(n);
  idle_.reserve(n);
  for (unsigned i = n; i-- > 0;) free_.push_back(i);
  queue_.resize(std::size_t(n) * kQueuePerConn);
}

Pool::~Pool() = default;

void Pool::teardown() noexcept {
  for (Conn& c : conns_) {
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
  }
}

std::uint64_t Pool::tag_for(io::Op op, std::uint32_t i) const noexcept {
  return io::tag(op, std::uint32_t(index_) << 16 | i, conns_[i].gen);
}

bool Pool::fetch(std::string_view path, Responder res, UpstreamDone done, void* user) noexcept {
  Job job;
  job.res = res;
  job.done = done;
  job.user = user;
  job.deadline = now_ms_ + target_.cfg.timeout_ms;
  if (!idle_.empty() || !free_.empty()) {
    dispatch(job, path);
    return true;
  }
  return enqueue(job, path, false);
}

void Pool::dispatch(const Job& job, std::string_view path) noexcept {
  // A retry goes to a fresh connection: the idle ones may be as dead as the one that failed.
  if (!job.retried && !idle_.empty()) {
    std::uint32_t i = idle_.back();
    idle_.pop_back();
    start(i, job, path);
    return;
  }
  if (!free_.empty()) {
    std::uint32_t i = free_.back();
    free_.pop_back();
    open(i, job, path);
    return;
  }
  // A retry with only idle connections left: close one to make room, and wait for it.
  if (!idle_.empty()) {
    std::uint32_t i = idle_.back();
    idle_.pop_back();
    close(i);
  }
  if (!enqueue(job, path, true)) deliver(job, UpstreamReply{UpstreamError::Overloaded, 0, {}, {}});
}

bool Pool::enqueue(const Job& job, std::string_view path, bool front) noexcept {
  if (count_ == queue_.size()) {
    stats_.errors[std::size_t(UpstreamError::Overloaded)].add();
    return false;
  }
  Job j = job;
  j.path_off = paths_.size();
  j.path_len = path.size();
  paths_.append(path);
  if (front) {
    head_ = (head_ + queue_.size() - 1) % queue_.size();
    queue_[head_] = j;
  } else {
    queue_[(head_ + count_) % queue_.size()] = j;
  }
  ++count_;
  return true;
}

// Gives waiting requests the connections that came free.
void Pool::pump() noexcept {
  while (count_ > 0 && (!idle_.empty() || !free_.empty())) {
    Job j = queue_[head_];
    head_ = (head_ + 1) % queue_.size();
    --count_;
    std::string_view path(paths_.data() + j.path_off, j.path_len);
    dispatch(j, path);
  }
  if (count_ == 0) paths_.clear();
}

void Pool::start(std::uint32_t i, const Job& job, std::string_view path) noexcept {
  Conn& c = conns_[i];
  c.job = job;
  if (c.state != State::Connecting) c.state = State::Busy;  // a connecting one sends once connected
  c.got_bytes = false;
  c.head_done = false;
  c.head_prev = c.head_len = c.body_have = c.raw_off = 0;
  c.in.clear();
  c.out.clear();
  c.out.append("GET ");
  c.out.append(path);
  c.path_len = path.size();
  c.out.append(" HTTP/1.1\r\nHost: ");
  c.out.append(target_.host_header);
  c.out.append("\r\n\r\n");
  if (c.state == State::Connecting) return;
  c.iov = {c.out.data(), c.out.size()};
  c.send_inflight = true;
  backend_.send(c.fd, tag_for(io::Op::UpSend, i), &c.iov, 1, &c.msg);
}

void Pool::open(std::uint32_t i, const Job& job, std::string_view path) noexcept {
  Conn& c = conns_[i];
  c.fd = ::socket(target_.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    c.state = State::Free;
    free_.push_back(i);
    deliver(job, UpstreamReply{UpstreamError::Unreachable, 0, {}, {}});
    return;
  }
  int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c.state = State::Connecting;
  c.reused = false;
  stats_.connects.add();
  stats_.open.add();
  start(i, job, path);
  c.connect_inflight = true;
  backend_.connect(c.fd, reinterpret_cast<const sockaddr*>(&target_.addr), target_.addr_len,
                   tag_for(io::Op::UpConnect, i));
}

void Pool::on_completion(const io::Completion& comp) noexcept {
  const std::uint32_t i = io::tag_slot(comp.tag) & 0xffff;
  if (i >= conns_.size() || conns_[i].gen != io::tag_gen(comp.tag) || conns_[i].state == State::Free) return;
  Conn& c = conns_[i];
  switch (io::tag_op(comp.tag)) {
    case io::Op::UpConnect:
      c.connect_inflight = false;
      if (c.state == State::Closing) return maybe_release(i);
      if (comp.res < 0) return fail(i, UpstreamError::Unreachable);
      c.state = State::Busy;
      backend_.recv(c.fd, tag_for(io::Op::UpRecv, i));
      c.recv_armed = true;
      c.iov = {c.out.data(), c.out.size()};
      c.send_inflight = true;
      backend_.send(c.fd, tag_for(io::Op::UpSend, i), &c.iov, 1, &c.msg);
      return;
    case io::Op::UpSend:
      c.send_inflight = false;
      if (c.state == State::Closing) return maybe_release(i);
      if (comp.res < int(c.out.size())) return retry_or_fail(i, UpstreamError::Closed);
      return;
    case io::Op::UpRecv:
      if (comp.res > 0 && c.state == State::Busy) {
        c.got_bytes = true;
        // Keep the padding free behind the bytes: the body is handed out in place.
        std::memcpy(c.in.prepare(std::size_t(comp.res) + kUpstreamBodyPadding), comp.data, std::size_t(comp.res));
        c.in.commit(std::size_t(comp.res));
        parse(i);
      } else if (comp.res > 0 && c.state == State::Idle) {
        close(i);  // bytes nobody asked for: the stream cannot be trusted
      }
      if (comp.more) return;
      c.recv_armed = false;
      if (c.state == State::Closing) return maybe_release(i);
      if (comp.res > 0 || comp.res == -ENOBUFS) {
        backend_.recv(c.fd, tag_for(io::Op::UpRecv, i));
        c.recv_armed = true;
        return;
      }
      // The upstream closed (or reset) the connection.
      if (c.state == State::Busy) {
        if (comp.res == 0 && c.head_done && c.head.until_close) {
          c.body_have = c.in.size() - c.head_len;
          return complete(i, c.in.size());
        }
        return retry_or_fail(i, UpstreamError::Closed);
      }
      return close(i);  // idle and closed by the upstream: evict
    default:
      return;
  }
}

void Pool::parse(std::uint32_t i) noexcept {
  Conn& c = conns_[i];
  const std::size_t max_body = target_.cfg.max_body;
  while (!c.head_done) {
    http::ParseResult r = http::parse_response({c.in.data(), c.in.size()}, c.head_prev, c.head);
    if (r.status == http::ParseStatus::NeedMore) {
      c.head_prev = c.in.size();
      return;
    }
    if (r.status == http::ParseStatus::Bad) return fail(i, UpstreamError::BadResponse);
    c.head_prev = 0;
    if (c.head.status < 200) {  // an interim response (100 Continue): the real one follows
      c.in.consume(r.consumed);
      continue;
    }
    c.head_done = true;
    c.head_len = c.raw_off = r.consumed;
    c.body_have = 0;
    if (c.head.chunked) c.chunked.reset(max_body);
    else if (c.head.has_content_length && c.head.content_length > max_body) return fail(i, UpstreamError::TooLarge);
  }
  if (c.head.chunked) {
    http::ChunkStep s = c.chunked.decode(c.in.data() + c.raw_off, c.in.size() - c.raw_off,
                                         c.in.data() + c.head_len + c.body_have);
    c.body_have += s.produced;
    c.raw_off += s.consumed;
    if (s.status == http::ChunkStatus::Bad) return fail(i, UpstreamError::BadResponse);
    if (s.status == http::ChunkStatus::TooLarge) return fail(i, UpstreamError::TooLarge);
    if (s.status == http::ChunkStatus::Done) complete(i, c.raw_off);
  } else if (c.head.has_content_length) {
    if (c.in.size() - c.head_len >= c.head.content_length) {
      c.body_have = std::size_t(c.head.content_length);
      complete(i, c.head_len + c.body_have);
    }
  } else if (c.in.size() - c.head_len > max_body) {
    fail(i, UpstreamError::TooLarge);
  }
}

void Pool::complete(std::uint32_t i, std::size_t total) noexcept {
  Conn& c = conns_[i];
  const bool reusable = c.head.keep_alive && total == c.in.size();  // extra bytes: the stream is off
  UpstreamReply r;
  r.status = c.head.status;
  r.headers = {c.head.headers.data(), c.head.header_count};
  r.body = {c.in.data() + c.head_len, c.body_have};
  stats_.ok.add();
  const Job job = c.job;
  c.state = reusable ? State::Idle : State::Busy;
  c.reused = true;
  deliver(job, r);
  if (reusable) {
    c.in.clear();
    idle_.push_back(i);
    pump();
  } else {
    close(i);
  }
}

void Pool::deliver(const Job& job, const UpstreamReply& r) noexcept {
  if (job.done) job.done(job.user, job.res, r);
}

void Pool::fail(std::uint32_t i, UpstreamError e) noexcept {
  Conn& c = conns_[i];
  stats_.errors[std::size_t(e)].add();
  const Job job = c.job;
  close(i);
  deliver(job, UpstreamReply{e, 0, {}, {}});
}

// A reused connection that died before answering anything was closed by the upstream while idle: try once more
// on a fresh one. Anything else is the upstream's answer.
void Pool::retry_or_fail(std::uint32_t i, UpstreamError e) noexcept {
  Conn& c = conns_[i];
  if (!c.reused || c.got_bytes || c.job.retried) return fail(i, e);
  stats_.retries.add();
  Job job = c.job;
  job.retried = true;
  // Queue it first: the path lives in c.out, which closing (and so reusing) the connection may overwrite.
  const bool queued = enqueue(job, std::string_view(c.out.data() + 4, c.path_len), true);
  close(i);
  if (!queued) return deliver(job, UpstreamReply{e, 0, {}, {}});
  pump();
}

void Pool::close(std::uint32_t i) noexcept {
  Conn& c = conns_[i];
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
  if (c.connect_inflight) backend_.cancel(c.fd, tag_for(io::Op::UpConnect, i));
  if (c.recv_armed || c.send_inflight) backend_.shutdown(c.fd, SHUT_RDWR);
  maybe_release(i);
}

void Pool::maybe_release(std::uint32_t i) noexcept {
  Conn& c = conns_[i];
  if (c.state != State::Closing || c.connect_inflight || c.recv_armed || c.send_inflight) return;
  backend_.close(c.fd);
  c.fd = -1;
  c.state = State::Free;
  ++c.gen;
  stats_.open.sub();
  free_.push_back(i);
  pump();
}

void Pool::tick() noexcept {
  const std::uint64_t now = now_ms_;
  for (std::uint32_t i = 0; i < conns_.size(); ++i) {
    Conn& c = conns_[i];
    if ((c.state == State::Connecting || c.state == State::Busy) && c.job.done && c.job.deadline <= now)
      fail(i, c.state == State::Connecting ? UpstreamError::Unreachable : UpstreamError::Timeout);
  }
  while (count_ > 0 && queue_[head_].deadline <= now) {
    Job j = queue_[head_];
    head_ = (head_ + 1) % queue_.size();
    --count_;
    stats_.errors[std::size_t(UpstreamError::Timeout)].add();
    deliver(j, UpstreamReply{UpstreamError::Timeout, 0, {}, {}});
  }
  if (count_ == 0) paths_.clear();
}

}  // namespace userd::upstream
