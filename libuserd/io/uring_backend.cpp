// io/uring_backend.cpp: io_uring set-up (flags with fallbacks, probe, buffer ring registered by hand since
// liburing 2.3 has no io_uring_setup_buf_ring) and the loop turn: recycle, submit and wait, reap in one pass.
#include "libuserd/io/uring_backend.hpp"

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "libuserd/io/tag.hpp"

namespace userd::io {

class UringBackend final : public Backend {
 public:
  ~UringBackend() override {
    if (ring_ok_) io_uring_queue_exit(&ring_);  // cancels what is still armed; only then may fds close
    if (wake_fd_ >= 0) ::close(wake_fd_);
    if (br_) munmap(br_, br_bytes_);
    if (pool_) munmap(pool_, pool_bytes_);
  }

  Result<void> init(const UringConfig& cfg) noexcept {
    io_uring_params p{};
    // Preferred: one issuer, completions run when we wait (DEFER_TASKRUN), one bad SQE strands no batch.
    // Older kernels answer unknown flags with -EINVAL: step down.
    const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
        IORING_SETUP_CQSIZE};
    int rc = -EINVAL;
    for (unsigned flags : tries) {
      p = {};
      p.flags = flags;
      p.cq_entries = cfg.cq_entries;
      rc = io_uring_queue_init_params(cfg.sq_entries, &ring_, &p);
      if (rc != -EINVAL) break;
    }
    if (rc < 0) return fail(Errc::Unsupported, -rc, "io_uring_setup");
    ring_ok_ = true;
    if (!(p.features & IORING_FEAT_NODROP) || !(p.features & IORING_FEAT_EXT_ARG))
      return fail(Errc::Unsupported, ENOSYS, "io_uring features (NODROP, EXT_ARG)");
    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
      bool ok = true;
      for (int op : {IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_READ})
        ok = ok && io_uring_opcode_supported(probe, op);
      io_uring_free_probe(probe);
      if (!ok) return fail(Errc::Unsupported, ENOSYS, "io_uring opcodes");
    } else {
      return fail(Errc::Unsupported, ENOSYS, "io_uring probe");
    }
    io_uring_register_ring_fd(&ring_);  // saves a file lookup per enter; optional (5.18)

    nbufs_ = cfg.buffers;
    buf_size_ = cfg.buffer_size;
    if (nbufs_ == 0 || (nbufs_ & (nbufs_ - 1)) || nbufs_ > 32768) return fail(Errc::BadInput, EINVAL, "recv buffers");
    br_bytes_ = nbufs_ * sizeof(io_uring_buf);
    void* br = mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED) return fail(Errc::NoMemory, errno, "mmap buffer ring");
    br_ = static_cast<io_uring_buf_ring*>(br);
    pool_bytes_ = std::size_t(nbufs_) * buf_size_;
    void* pool = mmap(nullptr, pool_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pool == MAP_FAILED) {
      pool_ = nullptr;
      return fail(Errc::NoMemory, errno, "mmap receive buffers");
    }
    pool_ = static_cast<char*>(pool);
    io_uring_buf_ring_init(br_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br_);
    reg.ring_entries = nbufs_;
    reg.bgid = kGroup;
    rc = io_uring_register_buf_ring(&ring_, &reg, 0);
    if (rc < 0) return fail(Errc::Unsupported, -rc, "io_uring_register_buf_ring");
    for (unsigned i = 0; i < nbufs_; ++i)
      io_uring_buf_ring_add(br_, pool_ + std::size_t(i) * buf_size_, buf_size_, std::uint16_t(i), nbufs_ - 1, int(i));
    io_uring_buf_ring_advance(br_, int(nbufs_));

    // Blocking: a READ on a non-blocking fd may complete with -EAGAIN instead of waiting.
    if (auto r = self_test(); !r) return r;
    wake_fd_ = eventfd(0, EFD_CLOEXEC);
    if (wake_fd_ < 0) return fail(Errc::Io, errno, "eventfd");
    arm_wake();
    return {};
  }

  // Setup succeeding is not enough (5.19 has buffer rings but no multishot recv): receive one byte through the
  // buffer ring on a socketpair and expect it to stay armed, then end it the way connections end.
  Result<void> self_test() noexcept {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return fail(Errc::Io, errno, "socketpair");
    recv(sv[0], tag(Op::None), true);
    [[maybe_unused]] ssize_t w = ::write(sv[1], "x", 1);
    bool got = false, armed = false, ended = false;
    int err = 0;
    for (int turn = 0; turn < 4 && !ended; ++turn) {
      if (got && armed) ::shutdown(sv[0], SHUT_RDWR);
      __kernel_timespec ts{1, 0};
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      unsigned head, n = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++n;
        if (cqe->res == 1 && (cqe->flags & IORING_CQE_F_BUFFER)) {
          got = true;
          armed = cqe->flags & IORING_CQE_F_MORE;
          recycle(std::uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
        } else if (cqe->res < 0) {
          err = -cqe->res;
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) ended = true;
      }
      io_uring_cq_advance(&ring_, n);
    }
    ::close(sv[0]);
    ::close(sv[1]);
    if (!got || !armed || !ended) return fail(Errc::Unsupported, err ? err : ENOSYS, "io_uring multishot recv self-test");
    return {};
  }

  std::string_view name() const noexcept override { return "io_uring"; }

  void accept(int listen_fd, std::uint64_t t) noexcept override {
    io_uring_sqe* s = sqe();
    io_uring_prep_multishot_accept(s, listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    set_tag(s, t);
  }

  void recv(int fd, std::uint64_t t, bool multishot) noexcept override {
    io_uring_sqe* s = sqe();
    if (multishot) io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
    else io_uring_prep_recv(s, fd, nullptr, buf_size_, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = kGroup;
    set_tag(s, t);
  }

  void recv_into(int fd, std::uint64_t t, char* buf, std::size_t len) noexcept override {
    io_uring_sqe* s = sqe();
    io_uring_prep_recv(s, fd, buf, len, 0);
    set_tag(s, t);
  }

  void send(int fd, std::uint64_t t, const iovec* iov, unsigned n, msghdr* msg) noexcept override {
    io_uring_sqe* s = sqe();
    // No MSG_WAITALL: a send that fills the socket's buffer completes with what it sent, so the caller sees
    // progress (its send deadline) and sends the rest. MSG_NOSIGNAL: a reset peer gives -EPIPE, not SIGPIPE.
    if (n == 1) {
      io_uring_prep_send(s, fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
      *msg = {};
      msg->msg_iov = const_cast<iovec*>(iov);
      msg->msg_iovlen = n;
      io_uring_prep_sendmsg(s, fd, msg, MSG_NOSIGNAL);
    }
    set_tag(s, t);
  }

  void connect(int fd, const sockaddr* addr, socklen_t len, std::uint64_t t) noexcept override {
    io_uring_sqe* s = sqe();
    io_uring_prep_connect(s, fd, addr, len);
    set_tag(s, t);
  }

  void cancel(int, std::uint64_t t) noexcept override {
    io_uring_sqe* s = sqe();
    io_uring_prep_cancel64(s, t, 0);
    if (s == &lost_) return;  // the operation completes by itself, or with the shutdown that follows a close
    io_uring_sqe_set_data64(s, tag(Op::None));
  }

  void recycle(std::uint16_t bid) noexcept override {
    io_uring_buf_ring_add(br_, pool_ + std::size_t(bid) * buf_size_, buf_size_, bid, nbufs_ - 1, int(recycled_));
    ++recycled_;
  }

  void shutdown(int fd, int how) noexcept override { ::shutdown(fd, how); }
  void close(int fd) noexcept override { ::close(fd); }

  int wait(std::span<Completion> out, int timeout_ms) noexcept override {
    if (recycled_) {  // one release store per turn for all buffers given back
      io_uring_buf_ring_advance(br_, int(recycled_));
      recycled_ = 0;
    }
    // Counted once per overflow, not once per turn it lasts. An overflow also ends multishot receives, which
    // their owners re-arm.
    const bool overflow = io_uring_cq_has_overflow(&ring_);
    if (overflow && !overflowed_) stats_.cq_overflows.add();
    overflowed_ = overflow;
    unsigned n = 0;
    bool wake_lost = false;
    for (; n < out.size() && !lost_done_.empty(); ++n) {  // operations no SQE could be had for
      out[n] = lost_done_.back();
      lost_done_.pop_back();
      wake_lost = wake_lost || tag_op(out[n].tag) == Op::Wake;
    }
    // The wake read is ours, not an owner's to re-arm: armed again now (after the loop, so that a ring that
    // still takes no SQE loses it to the next turn instead of looping here). Its -EBUSY goes out as a Wake
    // all the same, so the owner looks at what it was to be woken for.
    if (wake_lost) arm_wake();
    __kernel_timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000LL};
    if (n > 0) ts = {};
    io_uring_cqe* cqe = nullptr;
    stats_.submit_calls.add();
    const int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    // -ETIME and -EINTR: nothing (more) to reap yet. Anything else (-EBUSY, -EAGAIN: the kernel is short of
    // memory) left the SQEs queued for the next turn; wait a moment rather than spin on it.
    if (rc < 0 && rc != -ETIME && rc != -EINTR) {
      stats_.submit_errors.add();
      if (io_uring_cq_ready(&ring_) == 0 && n == 0) {
        timespec pause{0, 1'000'000};
        nanosleep(&pause, nullptr);
      }
    }
    unsigned head, reaped = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (n == out.size()) break;
      Completion& c = out[n++];
      ++reaped;
      c.tag = cqe->user_data;
      c.res = cqe->res;
      c.more = cqe->flags & IORING_CQE_F_MORE;
      c.has_buffer = cqe->flags & IORING_CQE_F_BUFFER;
      c.buffer_id = c.has_buffer ? std::uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT) : 0;
      c.data = c.has_buffer ? pool_ + std::size_t(c.buffer_id) * buf_size_ : nullptr;
      if (c.res == -ENOBUFS) stats_.enobufs.add();
      if (tag_op(c.tag) == Op::Wake) arm_wake();
    }
    io_uring_cq_advance(&ring_, reaped);
    return int(n);
  }

  void wake() noexcept override {
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t w = ::write(wake_fd_, &one, sizeof one);
  }

  const BackendStats& stats() const noexcept override { return stats_; }

 private:
  static constexpr std::uint16_t kGroup = 0;

  // SQ full: push this batch in now, then there is room. A kernel that will not take the batch (out of memory)
  // is asked a few times; after that the operation is lost: prepared into a scratch SQE and completed with
  // -EBUSY on the next wait(), so its owner closes or retries instead of waiting forever.
  io_uring_sqe* sqe() noexcept {
    stats_.sqes.add();
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    for (int tries = 0; !s && tries < 3; ++tries) {
      io_uring_submit(&ring_);
      s = io_uring_get_sqe(&ring_);
    }
    if (!s) {
      lost_ = {};
      return &lost_;
    }
    return s;
  }

  void set_tag(io_uring_sqe* s, std::uint64_t t) noexcept {
    if (s != &lost_) {
      io_uring_sqe_set_data64(s, t);
      return;
    }
    stats_.submit_errors.add();
    lost_done_.push_back({t, -EBUSY, false, false, 0, nullptr});
  }

  void arm_wake() noexcept {
    io_uring_sqe* s = lose_wake_arm_ ? &lost_ : sqe();  // a test's stand-in for a ring that takes no SQE
    lose_wake_arm_ = false;
    io_uring_prep_read(s, wake_fd_, &wake_value_, sizeof wake_value_, 0);
    set_tag(s, tag(Op::Wake));
  }

  io_uring ring_{};
  bool ring_ok_ = false;
  io_uring_buf_ring* br_ = nullptr;
  std::size_t br_bytes_ = 0;
  char* pool_ = nullptr;
  std::size_t pool_bytes_ = 0;
  unsigned nbufs_ = 0, buf_size_ = 0, recycled_ = 0;
  int wake_fd_ = -1;
  std::uint64_t wake_value_ = 0;
  bool overflowed_ = false;
  io_uring_sqe lost_{};                 // where an operation goes when the ring takes no SQE
  bool lose_wake_arm_ = false;  // tests: the next wake read is lost as if the ring took no SQE
  friend void lose_next_wake_arm(Backend& b) noexcept;
  std::vector<Completion> lost_done_;  // and its -EBUSY completion, returned by the next wait()
  BackendStats stats_;
};

std::string describe_uring() {
  io_uring ring;
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  int rc = io_uring_queue_init_params(8, &ring, &p);
  std::string flags = "SINGLE_ISSUER DEFER_TASKRUN";
  if (rc == -EINVAL) {
    p = {};
    rc = io_uring_queue_init_params(8, &ring, &p);
    flags = "no DEFER_TASKRUN";
  }
  if (rc < 0) return std::string("io_uring unavailable (") + std::strerror(-rc) + ")";
  std::string out = "io_uring: " + flags;
  if (p.features & IORING_FEAT_EXT_ARG) out += " EXT_ARG";
  if (p.features & IORING_FEAT_NODROP) out += " NODROP";
  if (p.features & (1U << 14)) out += " RECVSEND_BUNDLE";
  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring)) {
    const std::pair<int, const char*> ops[] = {{IORING_OP_ACCEPT, "ACCEPT"},   {IORING_OP_RECV, "RECV"},
                                               {IORING_OP_SEND, "SEND"},       {IORING_OP_SENDMSG, "SENDMSG"},
                                               {IORING_OP_CONNECT, "CONNECT"}, {IORING_OP_SEND_ZC, "SEND_ZC"},
                                               {IORING_OP_SOCKET, "SOCKET"},   {IORING_OP_MSG_RING, "MSG_RING"}};
    out += "; opcodes:";
    for (auto [op, name] : ops)
      if (io_uring_opcode_supported(probe, op)) (out += ' ') += name;
    io_uring_free_probe(probe);
  }
  io_uring_queue_exit(&ring);
  return out;
}

void lose_next_wake_arm(Backend& b) noexcept {
  if (auto* u = dynamic_cast<UringBackend*>(&b)) u->lose_wake_arm_ = true;
}

Result<std::unique_ptr<Backend>> make_uring_backend(const UringConfig& cfg) noexcept {
  auto b = std::unique_ptr<UringBackend>(new (std::nothrow) UringBackend());
  if (!b) return fail(Errc::NoMemory, ENOMEM, "io_uring backend");
  if (auto r = b->init(cfg); !r) return Unexpected<Error>{r.error()};
  return std::unique_ptr<Backend>(std::move(b));
}

}  // namespace userd::io
