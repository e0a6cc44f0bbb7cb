// io/epoll_backend.cpp: completions emulated on epoll.
//
// Edge- or level-triggered, chosen per kind of descriptor:
// - Connections are edge-triggered (EPOLLIN | EPOLLRDHUP | EPOLLET), registered once for their lifetime: no
//   epoll_ctl per request. The price of ET is that a socket must be read until it is drained; we stop at a short
//   read (the receive queue was empty at that moment, so the next byte brings a new edge), which saves the
//   extra read that would only return EAGAIN. A socket still full after kMaxReadsPerEvent reads, or one that
//   found no free buffer, goes on a list read again next turn, since no new edge would come for it.
// - EPOLLOUT is added only while a send is blocked (rare for responses of a few KiB) and removed when it drains.
// - Listeners are level-triggered: accepts are bounded per turn, and level triggering re-reports the rest
//   without bookkeeping; on EMFILE the listener is disarmed so it cannot spin until the server re-arms it.
//
// Sends are tried at once with sendmsg(MSG_NOSIGNAL) (writev would raise SIGPIPE); their completion is queued
// and returned by the next wait(), as io_uring would return it. A send that fills the socket's buffer completes
// short with what it sent, as io_uring's does; one that can send nothing waits for EPOLLOUT.
// A receive ended by cancel() (backpressure) leaves the socket registered: its edges are ignored until recv()
// arms it again and reads what came meanwhile.
#include "libuserd/io/epoll_backend.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <new>
#include <vector>

#include "libuserd/io/tag.hpp"

namespace userd::io {
namespace {
constexpr int kEvents = 256;
// Reads of one socket per event before others get their turn.
constexpr int kMaxReadsPerEvent = 16;
// Accepts per listener event: a burst of connects cannot starve established connections.
constexpr int kMaxAcceptsPerEvent = 64;
}  // namespace

class EpollBackend final : public Backend {
 public:
  ~EpollBackend() override {
    if (ep_ >= 0) ::close(ep_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    if (pool_) munmap(pool_, pool_bytes_);
  }

  Result<void> init(const EpollConfig& cfg) noexcept {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) return fail(Errc::Io, errno, "epoll_create1");
    nbufs_ = cfg.buffers;
    buf_size_ = cfg.buffer_size;
    if (nbufs_ == 0 || nbufs_ > 65536) return fail(Errc::BadInput, EINVAL, "recv buffers");
    pool_bytes_ = std::size_t(nbufs_) * buf_size_;
    void* pool = mmap(nullptr, pool_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pool == MAP_FAILED) return fail(Errc::NoMemory, errno, "mmap receive buffers");
    pool_ = static_cast<char*>(pool);
    free_bufs_.reserve(nbufs_);
    for (unsigned i = nbufs_; i-- > 0;) free_bufs_.push_back(std::uint16_t(i));
    pending_.reserve(1024);
    retry_.reserve(256);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) return fail(Errc::Io, errno, "eventfd");
    FdState& w = state(wake_fd_);
    w.role = Role::Wake;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_fd_;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, wake_fd_, &ev) < 0) return fail(Errc::Io, errno, "epoll_ctl");
    return {};
  }

  std::string_view name() const noexcept override { return "epoll"; }

  void accept(int lfd, std::uint64_t t) noexcept override {
    FdState& s = state(lfd);
    if (s.role != Role::Listener) {  // accept until EAGAIN needs a non-blocking listener (io_uring wants it blocking)
      int fl = fcntl(lfd, F_GETFL);
      if (fl >= 0) fcntl(lfd, F_SETFL, fl | O_NONBLOCK);
    }
    s.role = Role::Listener;
    s.accept_tag = t;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    int op = s.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(ep_, op, lfd, &ev) < 0) {
      push({t, -errno, false, false, 0, nullptr});
      return;
    }
    s.registered = true;
  }

  void recv_into(int fd, std::uint64_t t, char* buf, std::size_t len) noexcept override {
    recv(fd, t, false);
    FdState& s = state(fd);
    if (s.recv_armed) {
      s.into = buf;
      s.into_len = len;
    }
  }

  void recv(int fd, std::uint64_t t, bool multishot) noexcept override {
    FdState& s = state(fd);
    s.into = nullptr;
    s.role = Role::Conn;
    s.recv_tag = t;
    s.recv_armed = true;
    s.recv_once = !multishot;
    if (!s.registered) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
      ev.data.fd = fd;
      if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) {
        s.recv_armed = false;
        push({t, -errno, false, false, 0, nullptr});
        return;
      }
      s.registered = true;  // ADD reports data that is already there: no read needed now
    } else {
      // Re-armed: edges (data, the peer's FIN) may have passed while it was not, so read to EAGAIN or EOF.
      retry_.push_back({fd, t, true});
    }
  }

  void send(int fd, std::uint64_t t, const iovec* iov, unsigned n, msghdr*) noexcept override {
    FdState& s = state(fd);
    s.send_tag = t;
    s.iov = iov;
    s.iovcnt = n;
    s.sent = 0;
    s.total = 0;
    for (unsigned i = 0; i < n; ++i) s.total += iov[i].iov_len;
    s.send_pending = true;
    continue_send(fd, s);
  }

  void connect(int fd, const sockaddr* addr, socklen_t len, std::uint64_t t) noexcept override {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    FdState& s = state(fd);
    s.role = Role::Conn;
    if (::connect(fd, addr, len) == 0) {
      push({t, 0, false, false, 0, nullptr});
      return;
    }
    if (errno != EINPROGRESS) {
      push({t, -errno, false, false, 0, nullptr});
      return;
    }
    // Writable means connected (or failed: SO_ERROR says which). Registered with EPOLLIN too, so the receive
    // armed after it needs no second epoll_ctl.
    s.connect_tag = t;
    s.connect_pending = true;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.fd = fd;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      s.connect_pending = false;
      push({t, -errno, false, false, 0, nullptr});
      return;
    }
    s.registered = true;
    s.out_armed = true;
  }

  void cancel(int fd, std::uint64_t t) noexcept override {
    FdState& s = state(fd);
    if (s.connect_pending && s.connect_tag == t) finish_connect(fd, s, -ECANCELED);
    if (s.recv_armed && s.recv_tag == t) {  // unread bytes stay in the socket, and TCP's window closes
      s.recv_armed = false;
      s.into = nullptr;
      push({t, -ECANCELED, false, false, 0, nullptr});
    }
  }

  void recycle(std::uint16_t bid) noexcept override { free_bufs_.push_back(bid); }

  void shutdown(int fd, int how) noexcept override {
    ::shutdown(fd, how);
    if (how != SHUT_RDWR) return;
    // As with io_uring, every armed operation completes: the receive with EOF, the send with what it sent.
    FdState& s = state(fd);
    if (s.recv_armed) {
      s.recv_armed = false;
      s.into = nullptr;
      push({s.recv_tag, 0, false, false, 0, nullptr});
    }
    if (s.send_pending) finish_send(fd, s, s.sent ? int(s.sent) : -EPIPE);
    if (s.connect_pending) finish_connect(fd, s, -ECANCELED);
  }

  void close(int fd) noexcept override {
    if (std::size_t(fd) < fds_.size()) fds_[std::size_t(fd)] = FdState{};
    ::close(fd);  // also leaves the epoll set: the socket has no other descriptor
  }

  int wait(std::span<Completion> out, int timeout_ms) noexcept override {
    if (!retry_.empty()) {
      std::swap(retry_, retrying_);
      for (Retry r : retrying_) {
        FdState& s = state(r.fd);
        if (s.recv_armed && s.recv_tag == r.tag) read_ready(r.fd, s, r.peer_done);
      }
      retrying_.clear();
    }
    if (pending_.size() - head_ < out.size()) {
      stats_.submit_calls.add();
      int n = epoll_wait(ep_, events_, kEvents, pending_.size() > head_ || !retry_.empty() ? 0 : timeout_ms);
      for (int i = 0; i < n; ++i) on_event(events_[i]);
    }
    std::size_t k = std::min(out.size(), pending_.size() - head_);
    std::copy_n(pending_.begin() + std::ptrdiff_t(head_), k, out.begin());
    head_ += k;
    if (head_ == pending_.size()) pending_.clear(), head_ = 0;
    return int(k);
  }

  void wake() noexcept override {
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t w = ::write(wake_fd_, &one, sizeof one);
  }

  const BackendStats& stats() const noexcept override { return stats_; }

 private:
  enum class Role : std::uint8_t { None, Listener, Conn, Wake };
  struct FdState {
    Role role = Role::None;
    bool registered = false;
    bool recv_armed = false;
    bool send_pending = false;
    bool out_armed = false;
    bool connect_pending = false;
    bool recv_once = false;  // the receive ends with its first buffer
    char* into = nullptr;    // recv_into: the caller's buffer, instead of one of ours
    std::size_t into_len = 0;
    std::uint64_t accept_tag = 0, recv_tag = 0, send_tag = 0, connect_tag = 0;
    const iovec* iov = nullptr;
    unsigned iovcnt = 0;
    std::size_t sent = 0, total = 0;
  };
  struct Retry {
    int fd;
    std::uint64_t tag;
    bool peer_done;
  };

  FdState& state(int fd) noexcept {
    if (std::size_t(fd) >= fds_.size()) fds_.resize(std::max<std::size_t>(std::size_t(fd) + 1, fds_.size() * 2));
    return fds_[std::size_t(fd)];
  }

  void push(const Completion& c) noexcept { pending_.push_back(c); }

  void on_event(const epoll_event& ev) noexcept {
    const int fd = ev.data.fd;
    FdState& s = state(fd);
    switch (s.role) {
      case Role::Wake: {
        std::uint64_t v;
        [[maybe_unused]] ssize_t r = ::read(fd, &v, sizeof v);
        push({tag(Op::Wake), 0, false, false, 0, nullptr});
        return;
      }
      case Role::Listener:
        accept_ready(fd, s);
        return;
      case Role::Conn:
        if ((ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s.connect_pending) {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          finish_connect(fd, s, -err);
          return;
        }
        if ((ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s.send_pending) continue_send(fd, s);
        if ((ev.events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) && s.recv_armed)
          read_ready(fd, s, ev.events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP));
        return;
      case Role::None:
        return;
    }
  }

  void accept_ready(int lfd, FdState& s) noexcept {
    for (int i = 0; i < kMaxAcceptsPerEvent; ++i) {
      int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        push({s.accept_tag, fd, true, false, 0, nullptr});
        continue;
      }
      int e = errno;
      if (e == EAGAIN || e == EINTR || e == ECONNABORTED) return;
      // The accept ends (EMFILE, or the listener shut down): level-triggered would report the listener again
      // at once, so stop watching it until the server re-arms it.
      epoll_event ev{};
      epoll_ctl(ep_, EPOLL_CTL_MOD, lfd, &ev);
      push({s.accept_tag, -e, false, false, 0, nullptr});
      return;
    }
  }

  // peer_done: the edge also carried the peer's FIN (or an error). No edge will come for it again, so read on
  // past a short read until recv says EOF.
  void read_ready(int fd, FdState& s, bool peer_done = false) noexcept {
    if (s.into) {  // recv_into: one read into the caller's buffer
      const ssize_t n = ::recv(fd, s.into, s.into_len, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        if (errno == EINTR || peer_done) retry_.push_back({fd, s.recv_tag, peer_done});
        return;
      }
      s.recv_armed = false;
      s.into = nullptr;
      push({s.recv_tag, n >= 0 ? int(n) : -errno, false, false, 0, nullptr});
      return;
    }
    for (int i = 0; i < kMaxReadsPerEvent; ++i) {
      if (free_bufs_.empty()) {  // every buffer is in this turn's batch: read on once they come back
        stats_.enobufs.add();
        retry_.push_back({fd, s.recv_tag, peer_done});
        return;
      }
      const std::uint16_t bid = free_bufs_.back();
      char* buf = pool_ + std::size_t(bid) * buf_size_;
      ssize_t n = ::recv(fd, buf, buf_size_, 0);
      if (n > 0) {
        free_bufs_.pop_back();
        if (s.recv_once) {
          s.recv_armed = false;
          push({s.recv_tag, int(n), false, true, bid, buf});
          return;
        }
        push({s.recv_tag, int(n), true, true, bid, buf});
        if (std::size_t(n) < buf_size_ && !peer_done) return;  // drained
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        if (errno == EINTR) continue;
        return;
      }
      s.recv_armed = false;
      push({s.recv_tag, n == 0 ? 0 : -errno, false, false, 0, nullptr});
      return;
    }
    retry_.push_back({fd, s.recv_tag, peer_done});  // still full: no new edge will come for these bytes
  }

  void continue_send(int fd, FdState& s) noexcept {
    while (s.sent < s.total) {
      // Skip what is already sent; the caller's iovecs stay untouched.
      iovec rest[IOV_MAX];
      unsigned n = 0;
      std::size_t skip = s.sent;
      for (unsigned i = 0; i < s.iovcnt && n < IOV_MAX; ++i) {
        if (skip >= s.iov[i].iov_len) {
          skip -= s.iov[i].iov_len;
          continue;
        }
        rest[n++] = {static_cast<char*>(s.iov[i].iov_base) + skip, s.iov[i].iov_len - skip};
        skip = 0;
      }
      msghdr m{};
      m.msg_iov = rest;
      m.msg_iovlen = n;
      ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
      if (w >= 0) {
        s.sent += std::size_t(w);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN && s.sent > 0) break;  // progress: the caller sees it and sends the rest
      if (errno == EAGAIN) {
        set_out(fd, s, true);
        return;
      }
      finish_send(fd, s, -errno);
      return;
    }
    finish_send(fd, s, int(s.sent));
  }

  void finish_connect(int fd, FdState& s, int res) noexcept {
    s.connect_pending = false;
    if (s.out_armed) set_out(fd, s, false);
    push({s.connect_tag, res, false, false, 0, nullptr});
  }

  void finish_send(int fd, FdState& s, int res) noexcept {
    s.send_pending = false;
    if (s.out_armed) set_out(fd, s, false);
    push({s.send_tag, res, false, false, 0, nullptr});
  }

  void set_out(int fd, FdState& s, bool on) noexcept {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (on ? std::uint32_t(EPOLLOUT) : 0u);
    ev.data.fd = fd;
    // A socket sent to before any receive was armed is not in the set yet (found by the conformance suite).
    epoll_ctl(ep_, s.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    s.registered = true;
    s.role = Role::Conn;
    s.out_armed = on;
  }

  int ep_ = -1;
  int wake_fd_ = -1;
  char* pool_ = nullptr;
  std::size_t pool_bytes_ = 0;
  unsigned nbufs_ = 0, buf_size_ = 0;
  std::vector<std::uint16_t> free_bufs_;
  std::vector<FdState> fds_;  // by descriptor number; grows with the highest fd, never per request
  std::vector<Completion> pending_;
  std::size_t head_ = 0;
  std::vector<Retry> retry_, retrying_;
  epoll_event events_[kEvents];
  BackendStats stats_;
};

Result<std::unique_ptr<Backend>> make_epoll_backend(const EpollConfig& cfg) noexcept {
  auto b = std::unique_ptr<EpollBackend>(new (std::nothrow) EpollBackend());
  if (!b) return fail(Errc::NoMemory, ENOMEM, "epoll backend");
  if (auto r = b->init(cfg); !r) return Unexpected<Error>{r.error()};
  return std::unique_ptr<Backend>(std::move(b));
}

}  // namespace userd::io
