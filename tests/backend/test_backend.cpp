// tests/backend/test_backend.cpp: one conformance suite, run against the io_uring and the epoll backend on real
// loopback sockets: whatever the server relies on must hold for both. A kernel that refuses io_uring skips
// its half (and says so); the epoll half always runs.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "libuserd/io/epoll_backend.hpp"
#include "libuserd/io/tag.hpp"
#include "libuserd/io/uring_backend.hpp"

using namespace userd;
using namespace userd::io;

namespace {

std::unique_ptr<Backend> make(const char* kind, unsigned buffers = 64, unsigned size = 4096) {
  if (std::strcmp(kind, "io_uring") == 0) {
    UringConfig c;
    c.buffers = buffers;
    c.buffer_size = size;
    auto b = make_uring_backend(c);
    if (!b) return nullptr;  // refused here: the caller skips
    return std::move(*b);
  }
  EpollConfig c;
  c.buffers = buffers;
  c.buffer_size = size;
  auto b = make_epoll_backend(c);
  REQUIRE(b);
  return std::move(*b);
}

// Runs body once per backend; io_uring only where the kernel allows it.
void each_backend(const std::function<void(const char*)>& body, unsigned buffers = 64, unsigned size = 4096) {
  for (const char* kind : {"io_uring", "epoll"}) {
    if (std::strcmp(kind, "io_uring") == 0 && !make(kind, buffers, size)) {
      MESSAGE("io_uring refused on this kernel: its half is skipped");
      continue;
    }
    const std::string backend_name = kind;
    CAPTURE(backend_name);
    body(kind);
  }
}

struct Listener {
  int fd = -1;
  sockaddr_in addr{};
  explicit Listener(int backlog = 64) {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    REQUIRE(::listen(fd, backlog) == 0);
  }
  ~Listener() { ::close(fd); }
  int connect() const {
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(c, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
    return c;
  }
};

// Waits on the backend, handing each completion to on, until done() or 5 s.
void drive(Backend& b, const std::function<void(const Completion&)>& on, const std::function<bool()>& done,
           int seconds = 5) {
  Completion batch[64];
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (!done() && std::chrono::steady_clock::now() < end) {
    const int n = b.wait(batch, 20);
    for (int i = 0; i < n; ++i) on(batch[i]);
  }
}

// A connected pair: `server` accepted by the backend itself (each makes sockets the way it needs them: epoll's
// are non-blocking), `client` by connect(2).
struct Pair {
  int client = -1, server = -1;
  explicit Pair(Backend& b) {
    Listener l;
    b.accept(l.fd, tag(Op::Accept));
    client = l.connect();
    drive(b, [&](const Completion& c) {
      if (tag_op(c.tag) == Op::Accept && c.res >= 0) server = c.res;
    }, [&] { return server >= 0; });
    REQUIRE(server >= 0);
  }
  ~Pair() {
    if (client >= 0) ::close(client);
    if (server >= 0) ::close(server);
  }
  // Small socket buffers, so a large send fills them; not so small that loopback TCP crawls (8 KiB windows ran
  // at 32 KiB per 200 ms here).
  void shrink_buffers() const {
    int small = 65536;
    setsockopt(server, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(client, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  }
};

constexpr std::uint64_t kRecv = tag(Op::Recv, 1, 1);
constexpr std::uint64_t kSend = tag(Op::Send, 1, 1);

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = char('a' + (i * 7 + i / 251) % 26);
  return s;
}

}  // namespace

TEST_CASE("backend: multishot accept completes once per connection and stays armed") {
  each_backend([](const char* kind) {
    auto b = make(kind);
    Listener l;
    b->accept(l.fd, tag(Op::Accept));
    std::vector<int> clients;
    for (int i = 0; i < 5; ++i) clients.push_back(l.connect());
    std::vector<int> accepted;
    drive(*b, [&](const Completion& c) {
      if (tag_op(c.tag) != Op::Accept) return;
      CHECK(c.res >= 0);
      CHECK(c.more);
      if (c.res >= 0) accepted.push_back(c.res);
    }, [&] { return accepted.size() == 5; });
    CHECK(accepted.size() == 5);
    for (int fd : accepted) {
      const int fl = fcntl(fd, F_GETFD);
      CHECK((fl >= 0 && (fl & FD_CLOEXEC)));
      ::close(fd);
    }
    for (int fd : clients) ::close(fd);
  });
}

TEST_CASE("backend: a multishot receive delivers every byte in order across buffer recycling, then EOF") {
  each_backend([](const char* kind) {
    auto b = make(kind, 8, 512);  // few, small buffers: they must come back for the stream to go on
    Pair p(*b);
    const std::string want = pattern(256 * 1024);
    std::thread writer([&] {
      for (std::size_t off = 0; off < want.size(); off += 3000)
        (void)::send(p.client, want.data() + off, std::min<std::size_t>(3000, want.size() - off), MSG_NOSIGNAL);
      ::shutdown(p.client, SHUT_WR);
    });
    b->recv(p.server, kRecv, true);
    std::string got;
    bool eof = false;
    int rearms = 0;
    drive(*b, [&](const Completion& c) {
      REQUIRE(c.tag == kRecv);
      if (c.res > 0) {
        REQUIRE(c.has_buffer);
        CHECK(c.res <= 512);
        got.append(c.data, std::size_t(c.res));
      }
      if (c.has_buffer) b->recycle(c.buffer_id);
      if (c.more) return;
      if (c.res == 0) {
        eof = true;
      } else {  // ended for want of buffers (or a full CQ): armed again, as the connection does
        CHECK((c.res == -ENOBUFS || c.res > 0));
        ++rearms;
        b->recv(p.server, kRecv, true);
      }
    }, [&] { return eof; }, 20);
    writer.join();
    CHECK(eof);
    CHECK(got.size() == want.size());
    CHECK(got == want);
    MESSAGE(std::string(kind) << ": re-armed " << rearms << " times");
  });
}

TEST_CASE("backend: buffers running out loses nothing: what waits arrives once they are back") {
  each_backend([](const char* kind) {
    auto b = make(kind, 4, 512);
    Pair p(*b);
    const std::string want = pattern(16 * 1024);
    REQUIRE(::send(p.client, want.data(), want.size(), MSG_NOSIGNAL) == ssize_t(want.size()));
    b->recv(p.server, kRecv, true);
    std::string got;
    std::vector<std::uint16_t> held;
    bool ended = false;
    // Hold every buffer: at most four can be filled.
    drive(*b, [&](const Completion& c) {
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) held.push_back(c.buffer_id);
      if (!c.more) ended = true;
    }, [&] { return held.size() == 4 && (ended || std::strcmp(kind, "epoll") == 0); }, 2);
    CHECK(held.size() == 4);
    CHECK(got.size() == 4 * 512);
    // Give them back (and re-arm if the receive ended): the rest arrives.
    for (std::uint16_t id : held) b->recycle(id);
    if (ended) b->recv(p.server, kRecv, true);
    drive(*b, [&](const Completion& c) {
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) b->recycle(c.buffer_id);
      if (!c.more && c.res != 0) b->recv(p.server, kRecv, true);
    }, [&] { return got.size() == want.size(); });
    CHECK(got == want);
  });
}

TEST_CASE("backend: a single-buffer receive takes one buffer and ends; the data behind it waits") {
  each_backend([](const char* kind) {
    auto b = make(kind, 16, 1024);
    Pair p(*b);
    const std::string want = pattern(8 * 1024);
    REQUIRE(::send(p.client, want.data(), want.size(), MSG_NOSIGNAL) == ssize_t(want.size()));
    b->recv(p.server, kRecv, false);
    std::vector<Completion> seen;
    std::string got;
    drive(*b, [&](const Completion& c) {
      seen.push_back(c);
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) b->recycle(c.buffer_id);
    }, [&] { return !seen.empty(); });
    drive(*b, [&](const Completion& c) { seen.push_back(c); }, [] { return false; }, 0);  // nothing more comes
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].res == 1024);
    CHECK_FALSE(seen[0].more);
    b->recv(p.server, kRecv, true);
    drive(*b, [&](const Completion& c) {
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) b->recycle(c.buffer_id);
    }, [&] { return got.size() == want.size(); });
    CHECK(got == want);
  });
}

TEST_CASE("backend: a receive into the caller's buffer takes up to its length, uses no ring buffer, and ends") {
  each_backend([](const char* kind) {
    auto b = make(kind, 16, 1024);  // 1 KiB ring buffers: a bulk receive is not bound by them
    Pair p(*b);
    const std::string want = pattern(48 * 1024);
    REQUIRE(::send(p.client, want.data(), want.size(), MSG_NOSIGNAL) == ssize_t(want.size()));
    std::vector<char> buf(64 * 1024);
    std::string got;
    while (got.size() < want.size()) {
      b->recv_into(p.server, kRecv, buf.data(), buf.size());
      std::vector<Completion> seen;
      drive(*b, [&](const Completion& c) { seen.push_back(c); }, [&] { return !seen.empty(); });
      REQUIRE(seen.size() == 1);
      REQUIRE(seen[0].res > 0);
      if (got.empty()) CHECK(seen[0].res > 1024);  // more than one ring buffer's worth in one completion
      CHECK_FALSE(seen[0].more);
      CHECK_FALSE(seen[0].has_buffer);
      CHECK(seen[0].data == nullptr);
      got.append(buf.data(), std::size_t(seen[0].res));
    }
    CHECK(got == want);
    ::shutdown(p.client, SHUT_WR);
    b->recv_into(p.server, kRecv, buf.data(), buf.size());  // the peer's end: res 0
    std::vector<Completion> seen;
    drive(*b, [&](const Completion& c) { seen.push_back(c); }, [&] { return !seen.empty(); });
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].res == 0);
  });
}

TEST_CASE("backend: a receive ended by cancel stops reading; armed again, it reads what came meanwhile") {
  each_backend([](const char* kind) {
    auto b = make(kind);
    Pair p(*b);
    b->recv(p.server, kRecv, true);
    REQUIRE(::send(p.client, "one", 3, MSG_NOSIGNAL) == 3);
    std::string got;
    bool ended = false;
    int end_res = 1;
    drive(*b, [&](const Completion& c) {
      if (c.tag != kRecv) return;
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) b->recycle(c.buffer_id);
    }, [&] { return got == "one"; });
    b->cancel(p.server, kRecv);
    drive(*b, [&](const Completion& c) {
      if (c.tag != kRecv) return;
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) b->recycle(c.buffer_id);
      if (!c.more) {
        ended = true;
        end_res = c.res;
      }
    }, [&] { return ended; });
    CHECK(ended);
    CHECK(end_res == -ECANCELED);
    REQUIRE(::send(p.client, "two", 3, MSG_NOSIGNAL) == 3);  // not read: the receive is not armed
    drive(*b, [&](const Completion& c) { CHECK(c.tag != kRecv); }, [] { return false; }, 0);
    CHECK(got == "one");
    b->recv(p.server, kRecv, true);
    drive(*b, [&](const Completion& c) {
      if (c.res > 0) got.append(c.data, std::size_t(c.res));
      if (c.has_buffer) b->recycle(c.buffer_id);
    }, [&] { return got == "onetwo"; });
    CHECK(got == "onetwo");
  });
}

TEST_CASE("backend: a send into a full socket completes short; resumed, every byte arrives in order") {
  each_backend([](const char* kind) {
    auto b = make(kind);
    Pair p(*b);
    p.shrink_buffers();
    const std::string out = pattern(4 << 20);
    std::string got;
    std::atomic<bool> reading{false};
    std::thread reader([&] {
      while (!reading.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      char buf[65536];
      while (got.size() < out.size()) {
        const ssize_t n = ::recv(p.client, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, std::size_t(n));
      }
    });
    std::size_t sent = 0;
    int completions = 0, short_ones = 0;
    iovec iov{};
    msghdr msg{};
    auto submit = [&] {
      iov = {const_cast<char*>(out.data()) + sent, out.size() - sent};
      b->send(p.server, kSend, &iov, 1, &msg);
    };
    submit();
    drive(*b, [&](const Completion& c) {
      REQUIRE(c.tag == kSend);
      REQUIRE(c.res > 0);
      ++completions;
      if (std::size_t(c.res) < iov.iov_len) ++short_ones;
      sent += std::size_t(c.res);
      reading.store(true);  // the reader starts only after the first completion: that one must be short
      if (sent < out.size()) submit();
    }, [&] { return sent == out.size(); }, 20);
    reader.join();
    CHECK(sent == out.size());
    CHECK(short_ones >= 1);
    CHECK(got == out);
    MESSAGE(std::string(kind) << ": " << completions << " send completions");
  });
}

TEST_CASE("backend: shutdown completes the armed receive and the blocked send; only then is the socket closed") {
  each_backend([](const char* kind) {
    auto b = make(kind);
    Pair p(*b);
    p.shrink_buffers();
    const std::string out = pattern(4 << 20);
    b->recv(p.server, kRecv, true);
    iovec iov{const_cast<char*>(out.data()), out.size()};
    msghdr msg{};
    b->send(p.server, kSend, &iov, 1, &msg);
    // Let the send fill the socket and block (the client never reads), then end the connection.
    std::size_t sent = 0;
    drive(*b, [&](const Completion& c) {
      if (c.tag == kSend && c.res > 0) {
        sent += std::size_t(c.res);
        iov = {const_cast<char*>(out.data()) + sent, out.size() - sent};
        b->send(p.server, kSend, &iov, 1, &msg);
      }
    }, [] { return false; }, 1);
    b->shutdown(p.server, SHUT_RDWR);
    bool recv_done = false, send_done = false;
    drive(*b, [&](const Completion& c) {
      if (c.tag == kRecv && !c.more) {
        recv_done = true;
        CHECK(c.res == 0);
      }
      if (c.tag == kSend) send_done = true;
    }, [&] { return recv_done && send_done; });
    CHECK(recv_done);
    CHECK(send_done);
    b->close(p.server);
    p.server = -1;
    char buf[65536];
    ssize_t n;
    while ((n = ::recv(p.client, buf, sizeof buf, 0)) > 0) {}
    CHECK(n <= 0);  // the client sees the end
  });
}

TEST_CASE("backend: connect succeeds, is refused, and a hanging one can be cancelled") {
  each_backend([](const char* kind) {
    auto b = make(kind);
    Listener l;
    const std::uint64_t kConnect = tag(Op::UpConnect, 1, 1);
    auto connect_to = [&](const sockaddr_in& to) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      b->connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to, kConnect);
      return fd;
    };
    auto result = [&](int seconds = 5) {
      int res = 1;
      drive(*b, [&](const Completion& c) {
        if (c.tag == kConnect) res = c.res;
      }, [&] { return res != 1; }, seconds);
      return res;
    };
    int ok = connect_to(l.addr);
    CHECK(result() == 0);
    ::close(ok);
    sockaddr_in closed = l.addr;
    {
      Listener gone;
      closed = gone.addr;
    }  // nothing listens there now
    int refused = connect_to(closed);
    CHECK(result() == -ECONNREFUSED);
    ::close(refused);
    // A listener whose backlog is full drops SYNs: the connect hangs until cancelled.
    Listener full(0);
    std::vector<int> fillers;
    for (int i = 0; i < 4; ++i) {
      int f = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      ::connect(f, reinterpret_cast<const sockaddr*>(&full.addr), sizeof full.addr);
      fillers.push_back(f);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int hanging = connect_to(full.addr);
    CHECK(result(1) == 1);  // still pending after a second
    b->cancel(hanging, kConnect);
    CHECK(result() == -ECANCELED);
    ::close(hanging);
    for (int f : fillers) ::close(f);
  });
}

TEST_CASE("backend: wake from another thread ends a wait with a Wake completion") {
  each_backend([](const char* kind) {
    auto b = make(kind);
    std::thread t([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      b->wake();
    });
    bool woke = false;
    const auto t0 = std::chrono::steady_clock::now();
    Completion batch[8];
    while (!woke && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
      const int n = b->wait(batch, 2000);
      for (int i = 0; i < n; ++i) woke = woke || tag_op(batch[i].tag) == Op::Wake;
    }
    t.join();
    CHECK(woke);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500));  // not the 2 s wait
  });
}

// Found by reading: the wake read re-armed after a Wake completion could land in the scratch SQE; its -EBUSY
// completion never re-armed it, and no other thread could wake that loop again (answers waited for its tick).
TEST_CASE("backend: io_uring re-arms a wake read that was lost for want of an SQE") {
  auto b = make("io_uring");
  if (!b) {
    MESSAGE("io_uring refused on this kernel: skipped");
    return;
  }
  Completion batch[8];
  auto wakes = [&](int timeout_ms, int& res) {
    int found = 0;
    const int n = b->wait(batch, timeout_ms);
    for (int i = 0; i < n; ++i)
      if (tag_op(batch[i].tag) == Op::Wake) {
        ++found;
        res = batch[i].res;
      }
    return found;
  };
  int res = 0;
  b->wake();
  lose_next_wake_arm(*b);  // the re-arm inside this wait is lost
  REQUIRE(wakes(1000, res) == 1);
  CHECK(res == 8);
  CHECK(wakes(0, res) == 1);  // the lost re-arm's -EBUSY, as a Wake
  CHECK(res == -EBUSY);
  b->wake();
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(wakes(1000, res) == 1);
  CHECK(res == 8);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(500));
}

TEST_CASE("backend: io_uring counts a completion queue overflow once, and nothing received is lost") {
  UringConfig c;
  c.sq_entries = 4;
  c.cq_entries = 8;  // tiny: one burst of receives overflows it
  c.buffers = 64;
  c.buffer_size = 64;
  auto made = make_uring_backend(c);
  if (!made) {
    MESSAGE("io_uring refused on this kernel: skipped");
    return;
  }
  Backend& b = **made;
  Pair p(b);
  b.recv(p.server, kRecv, true);
  // 4 KiB into 64-byte buffers: 64 completions, posted in one go when the loop next waits.
  const std::string want = pattern(4096);
  REQUIRE(::send(p.client, want.data(), want.size(), MSG_NOSIGNAL) == ssize_t(want.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::string got;
  int rearms = 0;
  Completion batch[4];  // reaped four at a time: the rest waits in the overflow list
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (got.size() < want.size() && std::chrono::steady_clock::now() < end) {
    const int n = b.wait(batch, 20);
    for (int i = 0; i < n; ++i) {
      const Completion& k = batch[i];
      if (k.tag != kRecv) continue;
      if (k.res > 0) got.append(k.data, std::size_t(k.res));
      if (k.has_buffer) b.recycle(k.buffer_id);
      if (!k.more && k.res != 0) {  // an overflow ends a multishot receive: armed again, it may overflow again
        ++rearms;
        b.recv(p.server, kRecv, true);
      }
    }
  }
  CHECK(got == want);
  CHECK(b.stats().cq_overflows.get() >= 1);
  // Once per overflow (each one ends the receive), not once per turn it lasted: several turns drain each one.
  CHECK(b.stats().cq_overflows.get() <= std::uint64_t(rearms) + 1);
}

TEST_CASE("backend: io_uring whose submissions the kernel refuses neither spins nor loses an operation") {
  // In a child process: the ring is set up, then a seccomp filter makes every io_uring_enter fail with EAGAIN
  // (the kernel short of memory). Arming more operations than the SQ holds used to loop forever in sqe().
  if (!make("io_uring")) {
    MESSAGE("io_uring refused on this kernel: skipped");
    return;
  }
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(10);  // a spin is a failure, not a hang of the suite
    UringConfig c;
    c.sq_entries = 4;
    c.cq_entries = 8;
    c.buffers = 8;
    c.buffer_size = 512;
    auto made = make_uring_backend(c);
    if (!made) _exit(3);
    Backend& b = **made;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) _exit(4);
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAGAIN),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) _exit(5);
    constexpr int kOps = 12;  // three times the SQ
    for (int i = 0; i < kOps; ++i) b.recv(sv[0], tag(Op::Recv, std::uint32_t(i), 1), true);
    int lost = 0;
    Completion batch[16];
    for (int turn = 0; turn < 5; ++turn) {
      const int n = b.wait(batch, 10);
      for (int i = 0; i < n; ++i) lost += batch[i].res == -EBUSY && !batch[i].more;
    }
    // The SQ took some; each one it could not take came back as -EBUSY; refused submits were counted.
    const bool ok = lost >= kOps - 4 && b.stats().submit_errors.get() >= std::uint64_t(lost);
    _exit(ok ? 0 : 6);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
