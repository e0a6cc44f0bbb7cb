// tests/unit/test_pool.cpp: the upstream pool driven by a fake kernel that keeps each socket's operations apart;
// the test plays the upstream's answers and the kernel's completions. The sockets are real (the pool makes them
// with socket(2)) but never connect. Each defect found in the pool has its case here.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "libuserd/io/tag.hpp"
#include "libuserd/server/access.hpp"
#include "libuserd/server/connection.hpp"
#include "libuserd/server/reply_target.hpp"
#include "libuserd/upstream/pool.hpp"
#include "tests/support/failing_new.hpp"

using namespace userd;
using namespace userd::upstream;

namespace {

// One slot per descriptor, fixed in size, so that recording never allocates (a test makes allocation fail).
struct PoolKernel final : io::Backend {
  static constexpr int kFds = 1024;
  struct Fd {
    std::uint64_t connect = 0, recv = 0, send = 0;  // tags of the armed operations, 0: none
    std::size_t send_len = 0;
    int sends = 0;
    unsigned to = 0;  // last byte of the address connected to (IPv4)
    int family = 0;
    bool shut = false, closed = false;
    std::string wire;  // what was sent, when recording
  };
  std::array<Fd, kFds> fds;
  std::vector<int> connects;  // descriptors in the order they were connected
  bool record = true;
  io::BackendStats st;

  PoolKernel() { connects.reserve(4096); }
  Fd& at(int fd) {
    REQUIRE((fd >= 0 && fd < kFds));
    return fds[std::size_t(fd)];
  }
  std::string_view name() const noexcept override { return "fake"; }
  void accept(int, std::uint64_t) noexcept override {}
  void recv(int fd, std::uint64_t t, bool) noexcept override { fds[std::size_t(fd)].recv = t; }
  void send(int fd, std::uint64_t t, const iovec* iov, unsigned n, msghdr*) noexcept override {
    Fd& f = fds[std::size_t(fd)];
    if (f.send) std::abort();  // two sends in flight on one socket would interleave bytes
    f.send = t;
    f.send_len = 0;
    ++f.sends;
    for (unsigned i = 0; i < n; ++i) {
      if (record) f.wire.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
      f.send_len += iov[i].iov_len;
    }
  }
  void connect(int fd, const sockaddr* to, socklen_t, std::uint64_t t) noexcept override {
    fds[std::size_t(fd)] = Fd{};
    fds[std::size_t(fd)].connect = t;
    fds[std::size_t(fd)].family = to->sa_family;
    if (to->sa_family == AF_INET) fds[std::size_t(fd)].to = ntohl(reinterpret_cast<const sockaddr_in*>(to)->sin_addr.s_addr) & 0xff;
    connects.push_back(fd);
  }
  void cancel(int, std::uint64_t) noexcept override {}
  void recycle(std::uint16_t) noexcept override {}
  void shutdown(int fd, int) noexcept override { fds[std::size_t(fd)].shut = true; }
  void close(int fd) noexcept override {
    fds[std::size_t(fd)].closed = true;
    ::close(fd);
  }
  int wait(std::span<io::Completion>, int) noexcept override { return 0; }
  void wake() noexcept override {}
  const io::BackendStats& stats() const noexcept override { return st; }
};

// The clients behind the requests: each one is there (awaiting its answer) unless the test says it left.
struct Clients final : server::ReplyTarget {
  std::array<bool, 64> gone{};
  bool reply(std::uint32_t, std::uint16_t, std::uint32_t, const Response&) noexcept override { return false; }
  bool awaiting(std::uint32_t slot, std::uint16_t, std::uint32_t) const noexcept override { return !gone[slot]; }
  FetchRefused fetch(std::size_t, const UpstreamRequest&, Responder, const UpstreamCallback&) noexcept override {
    return FetchRefused::NoUpstream;
  }
  bool stream_begin(std::uint32_t, std::uint16_t, std::uint32_t, const Response&) noexcept override { return false; }
  bool stream_write(std::uint32_t, std::uint16_t, std::uint32_t, std::string_view, bool,
                    std::span<const userd::Header>) noexcept override {
    return false;
  }
  void stream_on_writable(std::uint32_t, std::uint16_t, std::uint32_t, std::function<void()>) override {}
  // A streamed request body's reader, as the pool drives it: its callbacks and whether it is paused.
  std::function<void(std::string_view, bool)> body_data;
  std::function<void(BodyError)> body_error;
  bool body_paused = false;
  bool body(std::uint32_t, std::uint16_t, std::uint32_t, server::BodyCall& c) override {
    switch (c.op) {
      case server::BodyCall::Op::OnData: body_data = std::move(*c.data); return true;
      case server::BodyCall::Op::OnError: body_error = std::move(*c.error); return true;
      case server::BodyCall::Op::Pause: body_paused = true; return true;
      case server::BodyCall::Op::Resume: body_paused = false; return true;
      case server::BodyCall::Op::Alive: return true;
    }
    return false;
  }
};

struct Answer {
  UpstreamError error;
  int status;
  std::string body;
  std::string header;  // the value of X-Check, when there is one
};

struct Fixture {
  PoolKernel kernel;
  Clients clients;
  Target target;
  server::LoopContext ctx;  // what the pool's transports use of the loop: the fake kernel and the clock
  std::uint64_t& now = ctx.now_ms;
  std::optional<Pool> pool;
  std::vector<Answer> answers;  // one per callback, in order
  std::string scratch;

  explicit Fixture(unsigned conns = 2, unsigned queue = 16, int addresses = 1) {
    target.cfg.max_conns = conns;
    target.cfg.max_queue = queue;
    target.cfg.timeout_ms = 2000;
    for (int k = 0; k < addresses; ++k) {  // 127.0.0.1, 127.0.0.2, ...: the fake kernel connects nowhere
      Target::Address& to = target.addrs.emplace_back();
      auto* a = reinterpret_cast<sockaddr_in*>(&to.addr);
      a->sin_family = AF_INET;
      a->sin_port = htons(9);
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK + std::uint32_t(k));
      to.len = sizeof(sockaddr_in);
    }
    target.host_header = "up:9";
    answers.reserve(4096);
    scratch.reserve(1 << 18);
    ctx.backend = &kernel;
    now = 1000;
    pool.emplace(target, 0, ctx);
  }
  ~Fixture() { pool->teardown(); }

  static void done(void* user, Responder, const UpstreamReply& r) {
    auto* self = static_cast<Fixture*>(user);
    Answer a{r.error, r.status, {}, {}};
    if (self->kernel.record) {
      a.body = std::string(r.body);
      for (const Header& h : r.headers)
        if (h.name == "X-Check") a.header = std::string(h.value);
    }
    self->answers.push_back(std::move(a));
  }
  bool fetch(std::string_view path, std::uint32_t client = 0) {
    UpstreamRequest r;
    r.target = path;
    return pool->fetch(r, server::Access::responder(&clients, client, 0, 0), UpstreamCallback(&done, this)) ==
           FetchRefused::None;
  }
  bool fetch(const UpstreamRequest& r) {
    return pool->fetch(r, server::Access::responder(&clients, 0, 0, 0), UpstreamCallback(&done, this)) ==
           FetchRefused::None;
  }
  void complete(std::uint64_t tag, int res, bool more = false, char* data = nullptr) {
    pool->on_completion(io::Completion{tag, res, more, data != nullptr, 0, data});
  }
  void connected(int fd) {
    const std::uint64_t t = std::exchange(kernel.at(fd).connect, 0);
    REQUIRE(t);
    complete(t, 0);
  }
  // Completes the send in flight on fd with all its bytes (or res).
  void sent(int fd, int res = -1) {
    PoolKernel::Fd& f = kernel.at(fd);
    const std::uint64_t t = std::exchange(f.send, 0);
    REQUIRE(t);
    complete(t, res == -1 ? int(f.send_len) : res);
  }
  void respond(int fd, std::string_view bytes) {
    REQUIRE(kernel.at(fd).recv);
    scratch.assign(bytes);  // the receive buffer: writable, and reserved so that this allocates nothing
    complete(kernel.at(fd).recv, int(scratch.size()), true, scratch.data());
  }
  void recv_ends(int fd, int res) {
    const std::uint64_t t = std::exchange(kernel.at(fd).recv, 0);
    REQUIRE(t);
    complete(t, res);
  }
  // After a shutdown: every armed operation completes, as the kernel would make it.
  void shutdown_completes(int fd) {
    PoolKernel::Fd& f = kernel.at(fd);
    REQUIRE(f.shut);
    if (f.connect) complete(std::exchange(f.connect, 0), -ECANCELED);
    if (f.send) complete(std::exchange(f.send, 0), -EPIPE);
    if (f.recv) complete(std::exchange(f.recv, 0), 0);
  }
  // Fetches path on a fresh connection and connects it; with `sent`, its request's send completes too.
  int started(std::string_view path, bool send_done) {
    REQUIRE(fetch(path));
    REQUIRE(!kernel.connects.empty());
    const int fd = kernel.connects.back();
    connected(fd);
    if (send_done) sent(fd);
    return fd;
  }
  // Connects fd, completes its send and answers it.
  void exchange(int fd, std::string_view body = "ok") {
    if (kernel.at(fd).connect) connected(fd);
    sent(fd);
    respond(fd, ok(body));
  }
  static std::string ok(std::string_view body) {
    return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  }
};

std::string request_for(std::string_view path) { return "GET " + std::string(path) + " HTTP/1.1\r\nHost: up:9\r\n\r\n"; }

}  // namespace

TEST_CASE("pool: a request goes out on a fresh connection and its answer comes back once") {
  Fixture f;
  REQUIRE(f.fetch("/v1/avatar"));
  REQUIRE(f.kernel.connects.size() == 1);
  const int fd = f.kernel.connects[0];
  f.exchange(fd, "[1]");
  CHECK(f.kernel.at(fd).wire == request_for("/v1/avatar"));
  REQUIRE(f.answers.size() == 1);
  CHECK((f.answers[0].error == UpstreamError::None && f.answers[0].status == 200 && f.answers[0].body == "[1]"));
  REQUIRE(f.fetch("/again"));  // reused: no new connection
  CHECK(f.kernel.connects.size() == 1);
  f.exchange(fd, "[2]");
  CHECK(f.answers.size() == 2);
}

TEST_CASE("pool: a retried request that waits for a connection keeps its path (no view into moving storage)") {
  // The retry path of a request whose reused connection died, queued at the front while the only connection left
  // is idle: the old pool handed enqueue a view into its path buffer, and the append that copied it reallocated
  // that buffer first (a use-after-free under ASan, a garbled path without it).
  Fixture f(2);
  REQUIRE(f.fetch("/a"));
  REQUIRE(f.fetch("/b"));
  REQUIRE(f.kernel.connects.size() == 2);
  const int c0 = f.kernel.connects[0], c1 = f.kernel.connects[1];
  f.exchange(c0);
  f.exchange(c1);
  REQUIRE(f.answers.size() == 2);
  const std::string p1 = "/" + std::string(200, 'x'), p2 = "/" + std::string(200, 'y'), p3 = "/" + std::string(200, 'z');
  REQUIRE(f.fetch(p1));
  REQUIRE(f.fetch(p2));
  REQUIRE(f.fetch(p3));  // queued: both connections busy
  const int on_p1 = f.kernel.at(c0).wire.find(p1) != std::string::npos ? c0 : c1;
  const int on_p2 = on_p1 == c0 ? c1 : c0;
  f.sent(on_p2);
  f.recv_ends(on_p1, 0);   // reused, died before any byte: retried; its send is still in flight, so no release yet
  f.respond(on_p2, Fixture::ok("p2"));  // idle again: the retry takes the queue's front and closes it for a fresh one
  f.shutdown_completes(on_p1);
  f.shutdown_completes(on_p2);
  // Fresh connections for the retried p1 and for p3, each with its own path intact.
  REQUIRE(f.kernel.connects.size() == 4);
  std::vector<std::string> sent_paths;
  for (std::size_t k = 2; k < 4; ++k) {
    const int fd = f.kernel.connects[k];
    f.exchange(fd, "fresh");
    sent_paths.push_back(f.kernel.at(fd).wire);
  }
  CHECK(((sent_paths[0] == request_for(p1) && sent_paths[1] == request_for(p3)) ||
         (sent_paths[0] == request_for(p3) && sent_paths[1] == request_for(p1))));
  CHECK(f.answers.size() == 5);  // /a, /b, p2, p1 (retried), p3: each once
  for (const Answer& a : f.answers) CHECK(a.status == 200);
  CHECK(f.pool->stats().retries.get() == 1);
}

TEST_CASE("pool: overload that never lets the queue empty allocates nothing once its slots have grown") {
  // The old pool kept queued paths in one buffer emptied only when the queue was: under lasting overload it grew
  // without end (and here, with allocation made to fail, terminated the process).
  Fixture f(1, 4);
  const std::string path = "/v1/avatar?page=" + std::string(40, '7');  // longer than a short string's inline room
  REQUIRE(f.fetch(path));
  const int fd = f.kernel.connects[0];
  f.connected(fd);
  for (int i = 0; i < 4; ++i) REQUIRE(f.fetch(path));
  const std::string answer = Fixture::ok("[]");
  auto round = [&] {  // the one in flight is answered; the queue hands on its head; a newcomer refills it
    f.sent(fd);
    f.respond(fd, answer);
    REQUIRE(f.fetch(path));
    REQUIRE(f.pool->queued() == 4);
  };
  for (int i = 0; i < 20; ++i) round();
  f.kernel.record = false;
  const std::size_t before = userd::testing::FailAllocations::failures();
  {
    userd::testing::FailAllocations fail(1);
    for (int i = 0; i < 2000; ++i) round();
  }
  CHECK(userd::testing::FailAllocations::failures() == before);
  f.kernel.record = true;
  CHECK(f.answers.size() == 2020);
  for (const Answer& a : f.answers) REQUIRE(a.status == 200);
}

TEST_CASE("pool: a response before its send completes: reused only after the send, and a late send failure answers nobody twice") {
  Fixture f(1);
  const int fd = f.started("/a", false);
  f.respond(fd, Fixture::ok("a"));  // the upstream answered before our send's completion was seen
  REQUIRE(f.answers.size() == 1);
  REQUIRE(f.fetch("/b"));           // must wait: a second send on fd now would share the first one's tag
  CHECK(f.kernel.at(fd).sends == 1);
  f.sent(fd, -EPIPE);               // a late failure of the answered request's send
  CHECK(f.answers.size() == 1);     // the old pool ran /a's callback a second time here
  CHECK(f.kernel.at(fd).shut);      // the connection is not trusted again
  f.shutdown_completes(fd);
  REQUIRE(f.kernel.connects.size() == 2);
  f.exchange(f.kernel.connects[1], "b");
  REQUIRE(f.answers.size() == 2);
  CHECK(f.answers[1].body == "b");
}

TEST_CASE("pool: a response before its send completes, then the send succeeds: the connection is reused") {
  Fixture f(1);
  const int fd = f.started("/a", false);
  f.respond(fd, Fixture::ok("a"));
  REQUIRE(f.fetch("/b"));
  f.sent(fd);  // now idle, and /b goes out on it
  CHECK(f.kernel.at(fd).sends == 2);
  f.sent(fd);
  f.respond(fd, Fixture::ok("b"));
  CHECK(f.answers.size() == 2);
  CHECK(f.kernel.connects.size() == 1);
}

TEST_CASE("pool: a short send goes on from where it stopped") {
  Fixture f(1);
  const int fd = f.started("/short", false);
  f.sent(fd, 5);  // "GET /" went out
  CHECK(f.kernel.at(fd).sends == 2);
  CHECK(f.kernel.at(fd).wire == request_for("/short") + request_for("/short").substr(5));  // the rest, from byte 5
  CHECK(f.kernel.at(fd).send_len == request_for("/short").size() - 5);
  f.sent(fd);
  f.respond(fd, Fixture::ok("s"));
  CHECK(f.answers.size() == 1);
}

TEST_CASE("pool: bytes on a connection with no request outstanding close it") {
  Fixture f(1);
  REQUIRE(f.fetch("/a"));
  const int fd = f.kernel.connects[0];
  f.exchange(fd);
  f.respond(fd, Fixture::ok("unasked"));
  CHECK(f.kernel.at(fd).shut);
  CHECK(f.answers.size() == 1);
  f.shutdown_completes(fd);
  CHECK(f.kernel.at(fd).closed);
}

TEST_CASE("pool: the queue is bounded; beyond it a fetch is refused at once and counted") {
  Fixture f(1, 2);
  REQUIRE(f.fetch("/1"));
  REQUIRE(f.fetch("/2"));
  REQUIRE(f.fetch("/3"));
  CHECK_FALSE(f.fetch("/4"));
  CHECK(f.pool->stats().errors[std::size_t(UpstreamError::Overloaded)].get() == 1);
  f.now += 2500;  // past the timeout: the one in flight and the queued ones are answered 504-style
  f.pool->tick();
  CHECK(f.answers.size() == 3);
  for (const Answer& a : f.answers) CHECK(a.error != UpstreamError::None);
}

TEST_CASE("pool: framing it must not trust is a bad response, and the connection is closed") {
  const char* bad[] = {
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
  };
  for (const char* response : bad) {
    Fixture f(1);
    const int fd = f.started("/a", true);
    f.respond(fd, response);
    REQUIRE_MESSAGE(f.answers.size() == 1, response);
    CHECK_MESSAGE(f.answers[0].error == UpstreamError::BadResponse, response);
    CHECK(f.kernel.at(fd).shut);
  }
}

TEST_CASE("pool: interim 100 and 103 responses are skipped, the final one is the answer") {
  Fixture f(1);
  const int fd = f.started("/a", true);
  f.respond(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + Fixture::ok("fine"));
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].status == 200);
  CHECK(f.answers[0].body == "fine");
}

// Found by reading: after an interim response the reader was reset without "no body", so a HEAD answered with
// 103 and then a 200 with a Content-Length waited for a body that never comes.
TEST_CASE("pool: a HEAD answered with an interim response and then a length has no body to wait for") {
  Fixture f(1);
  UpstreamRequest head;
  head.method = "HEAD";
  head.target = "/big";
  REQUIRE(f.fetch(head));
  const int fd = f.kernel.connects[0];
  f.connected(fd);
  f.sent(fd);
  f.respond(fd, "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].status == 200);
  CHECK(f.answers[0].body.empty());
  REQUIRE(f.fetch("/after"));  // and the connection is in step for the next
  f.sent(fd);
  f.respond(fd, Fixture::ok("fine"));
  REQUIRE(f.answers.size() == 2);
  CHECK(f.answers[1].body == "fine");
}

// Found by reading: "not a byte was sent" counted completed sends on plain TCP, so a POST whose send was still
// in flight when the reused connection died was sent again, though its bytes may have reached the upstream.
TEST_CASE("pool: a POST whose send was in flight when its reused connection died is not sent again") {
  Fixture f(1);
  REQUIRE(f.fetch("/warm"));
  const int fd = f.kernel.connects[0];
  f.exchange(fd);
  UpstreamRequest r;
  r.method = "POST";
  r.target = "/x";
  REQUIRE(f.fetch(r));
  REQUIRE(f.kernel.at(fd).send);  // handed to the kernel, not completed
  f.recv_ends(fd, 0);
  f.shutdown_completes(fd);
  CHECK(f.kernel.connects.size() == 1);
  REQUIRE(f.answers.size() == 2);
  CHECK(f.answers[1].error == UpstreamError::Closed);
}

TEST_CASE("pool: the headers handed over point into the response as it is when complete") {
  // The head arrives first; the body then grows the buffer (a reallocation): views parsed from the first bytes
  // would point into freed memory.
  Fixture f(1);
  const int fd = f.started("/a", true);
  const std::string body(100000, 'b');
  f.respond(fd, "HTTP/1.1 200 OK\r\nX-Check: kept\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n");
  for (std::size_t off = 0; off < body.size(); off += 4096) f.respond(fd, body.substr(off, 4096));
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].header == "kept");
  CHECK(f.answers[0].body == body);
}

TEST_CASE("pool: a body that runs to the close is complete when the upstream closes") {
  Fixture f(1);
  const int fd = f.started("/a", true);
  f.respond(fd, "HTTP/1.1 200 OK\r\nX-Check: eof\r\n\r\npart one, ");
  f.respond(fd, "part two");
  f.recv_ends(fd, 0);
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].body == "part one, part two");
  CHECK(f.answers[0].header == "eof");
}

TEST_CASE("pool: a queued request whose client left is not sent upstream; its callback still runs once") {
  Fixture f(1);
  REQUIRE(f.fetch("/first", 0));
  REQUIRE(f.fetch("/gone", 1));
  REQUIRE(f.fetch("/stays", 2));
  f.clients.gone[1] = true;
  const int fd = f.kernel.connects[0];
  f.exchange(fd, "1");
  REQUIRE(f.answers.size() == 2);  // /first, and /gone told at once
  CHECK(f.answers[1].error == UpstreamError::Overloaded);
  f.sent(fd);
  f.respond(fd, Fixture::ok("3"));
  REQUIRE(f.answers.size() == 3);
  CHECK(f.answers[2].body == "3");
  CHECK(f.kernel.at(fd).wire.find("/gone") == std::string::npos);
}

TEST_CASE("pool: any method, headers and a body go out as asked; the answer to HEAD has no body") {
  Fixture f(1);
  const Header h{"X-Trace", "abc"};
  UpstreamRequest post;
  post.method = "POST";
  post.target = "/v1/users?x=1";
  post.headers = {&h, 1};
  post.body = R"({"name":"Ada"})";
  REQUIRE(f.fetch(post));
  const int fd = f.kernel.connects[0];
  f.connected(fd);
  CHECK(f.kernel.at(fd).wire ==
        "POST /v1/users?x=1 HTTP/1.1\r\nHost: up:9\r\nX-Trace: abc\r\nContent-Length: 14\r\n\r\n{\"name\":\"Ada\"}");
  f.sent(fd);
  f.respond(fd, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
  REQUIRE(f.answers.size() == 1);
  CHECK((f.answers[0].status == 201 && f.answers[0].body == "ok"));
  UpstreamRequest head;
  head.method = "HEAD";
  head.target = "/big";
  REQUIRE(f.fetch(head));
  f.sent(fd);
  f.respond(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");  // a length, and no body: complete
  REQUIRE(f.answers.size() == 2);
  CHECK((f.answers[1].status == 200 && f.answers[1].body.empty()));
  UpstreamRequest get;
  get.target = "/after";
  REQUIRE(f.fetch(get));  // the connection is still in step
  f.sent(fd);
  f.respond(fd, Fixture::ok("fine"));
  CHECK(f.answers.size() == 3);
  CHECK(f.kernel.connects.size() == 1);
}

TEST_CASE("pool: a request that would split or contradict itself is refused before anything is sent") {
  Fixture f(1);
  const Header crlf{"X-A", "1\r\nX-Injected: 2"}, host{"Host", "elsewhere"}, length{"Content-Length", "9"},
      bad_name{"X A", "1"};
  for (const Header* h : {&crlf, &host, &length, &bad_name}) {
    UpstreamRequest r;
    r.headers = {h, 1};
    CHECK_FALSE(f.fetch(r));
  }
  for (std::string_view target : {"", "nopath", "/a b", "/a\r\nX: 1"}) {
    UpstreamRequest r;
    r.target = target;
    CHECK_FALSE(f.fetch(r));
  }
  UpstreamRequest m;
  m.method = "GE T";
  CHECK_FALSE(f.fetch(m));
  CHECK(f.kernel.connects.empty());
}

TEST_CASE("pool: only idempotent methods are sent again after a reused connection dies") {
  for (const char* method : {"POST", "PATCH", "PUT", "DELETE"}) {
    Fixture f(1);
    REQUIRE(f.fetch("/warm"));
    const int fd = f.kernel.connects[0];
    f.exchange(fd);  // now reused
    UpstreamRequest r;
    r.method = method;
    r.target = "/x";
    REQUIRE(f.fetch(r));
    f.sent(fd);
    f.recv_ends(fd, 0);  // died before answering (nothing else was in flight: closed at once)
    const bool idempotent = std::string_view(method) == "PUT" || std::string_view(method) == "DELETE";
    CAPTURE(method);
    if (idempotent) {
      REQUIRE(f.kernel.connects.size() == 2);
      f.exchange(f.kernel.connects[1], "again");
      REQUIRE(f.answers.size() == 2);
      CHECK(f.answers[1].body == "again");
    } else {
      CHECK(f.kernel.connects.size() == 1);  // it may have been acted on: not sent twice
      REQUIRE(f.answers.size() == 2);
      CHECK(f.answers[1].error == UpstreamError::Closed);
    }
  }
}

TEST_CASE("pool: every resolved address is used in turn; one that refused is skipped for a while") {
  Fixture f(4, 16, 2);
  REQUIRE(f.fetch("/a"));
  const int first = f.kernel.connects[0];
  CHECK(f.kernel.at(first).to == 1);
  const std::uint64_t t = std::exchange(f.kernel.at(first).connect, 0);
  f.complete(t, -ECONNREFUSED);  // 127.0.0.1 refuses: the request goes to 127.0.0.2 at once
  REQUIRE(f.kernel.connects.size() == 2);
  const int second = f.kernel.connects[1];
  CHECK(f.kernel.at(second).to == 2);
  f.exchange(second, "from two");
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].body == "from two");
  REQUIRE(f.fetch("/b"));  // the idle one serves it
  f.sent(second);
  f.respond(second, Fixture::ok("b"));
  REQUIRE(f.fetch("/c"));
  REQUIRE(f.fetch("/d"));  // one waits on the idle connection, one needs a new one: not to the refuser
  CHECK(f.kernel.at(f.kernel.connects.back()).to == 2);
  f.now += 6000;  // later, the refuser is tried again
  f.exchange(second);
  f.exchange(f.kernel.connects.back());
  REQUIRE(f.fetch("/e"));
  REQUIRE(f.fetch("/f"));
  REQUIRE(f.fetch("/g"));
  bool tried_one = false;
  for (int fd : f.kernel.connects) tried_one = tried_one || (f.kernel.at(fd).to == 1 && fd != first);
  CHECK(tried_one);
}

TEST_CASE("pool: a connection answered before its send completed is closed if that send never does") {
  // The upstream answered and then stopped reading: without a deadline the slot would stay Settling forever.
  Fixture f(1);
  REQUIRE(f.fetch("/a"));
  const int fd = f.kernel.connects[0];
  f.connected(fd);
  f.respond(fd, Fixture::ok("a"));
  REQUIRE(f.answers.size() == 1);
  f.now += 1000;
  REQUIRE(f.fetch("/b"));  // waits for the only connection
  f.pool->tick();
  CHECK_FALSE(f.kernel.at(fd).shut);
  f.now += 1100;  // past the first request's deadline, not the second's
  f.pool->tick();
  REQUIRE(f.kernel.at(fd).shut);
  f.shutdown_completes(fd);
  REQUIRE(f.kernel.connects.size() == 2);  // /b goes out on a fresh connection
  f.exchange(f.kernel.connects[1], "b");
  REQUIRE(f.answers.size() == 2);
  CHECK(f.answers[1].body == "b");
}

TEST_CASE("pool: the bytes of queued requests are bounded too, not only their number") {
  Fixture f(1, 64);
  REQUIRE(f.fetch("/busy"));  // holds the only connection: the rest queue
  const std::string body(1 << 20, 'b');
  UpstreamRequest post;
  post.method = "POST";
  post.target = "/upload";
  post.body = body;
  int queued = 0;
  while (queued < 64 && f.fetch(post)) ++queued;
  CHECK(queued >= 15);
  CHECK(queued <= 16);  // about 16 MiB of requests wait, far fewer than the 64 slots
  CHECK(f.pool->stats().errors[std::size_t(UpstreamError::Overloaded)].get() == 1);
  CHECK(f.fetch("/small"));  // a small one still fits
}

// Embedders' paper cut: a bare function pointer and a void* needed a heap context per fetch, and a refusal was
// one false. A lambda capturing a few pointers is kept inline; a refusal says why.
TEST_CASE("pool: a lambda is a callback kept inline, and a refused fetch says why") {
  Fixture f(1, 1);
  int calls = 0;
  std::string seen;
  const int tag = 7;
  const UpstreamCallback cb = [&calls, &seen, tag](Responder, const UpstreamReply& r) {
    ++calls;
    seen = std::string(r.body) + std::to_string(tag);
  };
  UpstreamRequest r;
  r.target = "/a";
  CHECK(f.pool->fetch(r, server::Access::responder(&f.clients, 0, 0, 0), cb) == FetchRefused::None);
  CHECK(f.pool->fetch(r, server::Access::responder(&f.clients, 1, 0, 0), cb) == FetchRefused::None);  // queued
  CHECK(f.pool->fetch(r, server::Access::responder(&f.clients, 2, 0, 0), cb) == FetchRefused::QueueFull);
  UpstreamRequest bad;
  bad.target = "no-slash";
  CHECK(f.pool->fetch(bad, server::Access::responder(&f.clients, 3, 0, 0), cb) == FetchRefused::BadRequest);
  CHECK(f.pool->fetch(r, server::Access::responder(&f.clients, 3, 0, 0), UpstreamCallback()) == FetchRefused::BadRequest);
  f.exchange(f.kernel.connects[0], "one");
  CHECK(calls == 1);
  CHECK(seen == "one7");
  CHECK(describe(FetchRefused::QueueFull) == "too many upstream requests queued");
}

// Found by the attack: a name was resolved only at start, so an upstream that moved (a redeploy behind DNS) was
// unreachable until a restart. A failed connect asks the resolver again, in the background, at most every 5 s.
TEST_CASE("pool: a failed connect resolves the name again, and new connections go to what it says now") {
  Fixture f(2, 16);
  f.pool.reset();
  f.target.cfg.host = "localhost";  // resolves to 127.0.0.1 (and ::1); start() said 127.0.0.9 (stale)
  f.target.addrs.resize(1);
  reinterpret_cast<sockaddr_in*>(&f.target.addrs[0].addr)->sin_addr.s_addr = htonl(0x7f000009);
  f.pool.emplace(f.target, 0, f.ctx);
  REQUIRE(f.fetch("/a"));
  const int stale = f.kernel.connects.back();
  CHECK(f.kernel.at(stale).to == 9);
  f.complete(std::exchange(f.kernel.at(stale).connect, 0), -ECONNREFUSED);
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].error == UpstreamError::Unreachable);
  CHECK(f.pool->stats().resolves.get() == 1);
  for (int i = 0; i < 300; ++i) {  // the resolver runs on glibc's thread: its answer is taken on a tick
    f.pool->tick();
    REQUIRE(f.fetch("/probe"));
    const int fd = f.kernel.connects.back();
    const bool moved = f.kernel.at(fd).family == AF_INET6 || f.kernel.at(fd).to == 1;
    f.complete(std::exchange(f.kernel.at(fd).connect, 0), -ECONNREFUSED);  // refused again: no second resolve yet
    if (moved) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int fd = f.kernel.connects.back();
  CHECK((f.kernel.at(fd).family == AF_INET6 || f.kernel.at(fd).to == 1));
  CHECK(f.pool->stats().resolves.get() == 1);  // bounded: once per 5 s, however many connects failed
}

// An address that black-holes (no refusal, the connect just hangs) fails at the exchange's deadline: that is a
// failed connect too, and the name is asked about again.
TEST_CASE("pool: a connect that hangs until its deadline resolves the name again") {
  Fixture f(1, 16);
  f.pool.reset();
  f.target.cfg.host = "localhost";
  f.pool.emplace(f.target, 0, f.ctx);
  REQUIRE(f.fetch("/a"));
  CHECK(f.pool->stats().resolves.get() == 0);
  f.now += 2500;  // past timeout_ms: the connect never completed
  f.pool->tick();
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].error == UpstreamError::Unreachable);
  CHECK(f.pool->stats().resolves.get() == 1);
}

namespace {
// What the loop does later in its turn (Worker::run_continuations), here by hand.
void run_later(server::LoopContext& ctx) {
  while (!ctx.later.empty()) {
    std::vector<std::function<void()>> now;
    std::swap(now, ctx.later);
    for (auto& fn : now) fn();
  }
}
}  // namespace

TEST_CASE("pool: a streamed response goes to its taker piece by piece, and the connection is reused after it") {
  // The taker pauses after its first piece; the rest arrives meanwhile and waits, the receive is stopped, and
  // the body ends once it resumes. The old pool left the receive stopped after such a body: the connection went
  // back idle deaf, and the next request on it timed out.
  Fixture f;
  struct Taken {
    std::string bytes;
    int calls = 0;
    bool last = false;
    UpstreamBody body;
  } taken;
  UpstreamRequest r;
  r.target = "/big";
  r.stream_response = true;
  REQUIRE(f.pool->fetch(r, server::Access::responder(&f.clients, 0, 0, 0),
                        [&taken](Responder, const UpstreamReply& u) {
                          taken.body = u.stream;
                          CHECK(u.status == 200);
                          CHECK(u.body.empty());
                          u.stream.on_data([&taken](std::string_view chunk, bool last) {
                            taken.bytes.append(chunk);
                            taken.last = last;
                            if (++taken.calls == 1) taken.body.pause();
                          });
                        }) == FetchRefused::None);
  const int fd = f.kernel.connects.back();
  f.connected(fd);
  f.sent(fd);
  f.respond(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
  CHECK((taken.calls == 1 && taken.bytes == "12345" && !taken.last));
  f.respond(fd, "67890");  // already on its way when the receive was asked to stop
  CHECK(taken.calls == 1);
  f.recv_ends(fd, -ECANCELED);
  CHECK(f.kernel.at(fd).recv == 0);  // paused: not read
  taken.body.resume();
  CHECK(taken.calls == 1);  // later in the turn, not inside resume()
  run_later(f.ctx);
  CHECK((taken.calls == 2 && taken.bytes == "1234567890" && taken.last));
  CHECK(!taken.body.alive());
  CHECK(f.kernel.at(fd).recv != 0);  // idle, and listening
  CHECK(f.pool->stats().ok.get() == 1);
  REQUIRE(f.fetch("/again"));
  CHECK(f.kernel.connects.size() == 1);  // reused
  f.exchange(fd, "[2]");
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].body == "[2]");
}

TEST_CASE("pool: a streamed response nobody takes is abandoned, and one cut midway tells its taker") {
  Fixture f;
  UpstreamRequest r;
  r.target = "/big";
  r.stream_response = true;
  const Responder res = server::Access::responder(&f.clients, 0, 0, 0);
  REQUIRE(f.pool->fetch(r, res, [](Responder, const UpstreamReply&) {}) == FetchRefused::None);
  int fd = f.kernel.connects.back();
  f.connected(fd);
  f.sent(fd);
  f.respond(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n123");
  CHECK(f.kernel.at(fd).shut);  // not reused mid-body
  f.shutdown_completes(fd);

  std::vector<UpstreamError> errors;
  std::string bytes;
  REQUIRE(f.pool->fetch(r, res, [&](Responder, const UpstreamReply& u) {
    u.stream.on_data([&](std::string_view chunk, bool) { bytes.append(chunk); });
    u.stream.on_error([&](UpstreamError e) { errors.push_back(e); });
  }) == FetchRefused::None);
  fd = f.kernel.connects.back();
  f.connected(fd);
  f.sent(fd);
  f.respond(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
  f.recv_ends(fd, 0);  // the upstream's end, mid-body
  CHECK(bytes == "abc");
  CHECK(errors.empty());  // later in the turn
  run_later(f.ctx);
  CHECK(errors == std::vector<UpstreamError>{UpstreamError::Closed});
  CHECK(f.pool->stats().errors[std::size_t(UpstreamError::Closed)].get() == 1);
}

TEST_CASE("pool: a streamed request body goes out behind its head, and is paused while the upstream is behind") {
  // The old pool queued a piece that came while the head's send was in flight and never sent it.
  Fixture f;
  UpstreamRequest r;
  r.method = "PUT";
  r.target = "/files/a";
  r.body_from = server::Access::body_reader(&f.clients, 0, 0, 0);
  r.body_length = 5 + 100000;
  REQUIRE(f.fetch(r));
  const int fd = f.kernel.connects.back();
  f.connected(fd);
  REQUIRE(f.clients.body_data);  // asked for once the request's head is out
  const std::string head = "PUT /files/a HTTP/1.1\r\nHost: up:9\r\nContent-Length: 100005\r\n\r\n";
  f.clients.body_data("hello", false);
  f.sent(fd);  // the head's send
  REQUIRE(f.kernel.at(fd).send);
  f.sent(fd);
  CHECK(f.kernel.at(fd).wire == head + "hello");
  const std::string big(100000, 'x');
  f.clients.body_data(big, true);
  CHECK(f.clients.body_paused == false);  // its last piece: nothing more to hold back
  f.sent(fd);
  CHECK(f.kernel.at(fd).wire == head + "hello" + big);
  f.respond(fd, Fixture::ok("{}"));
  REQUIRE(f.answers.size() == 1);
  CHECK(f.answers[0].status == 200);
  REQUIRE(f.fetch("/again"));
  CHECK(f.kernel.connects.size() == 1);  // the body was whole: reused
}

TEST_CASE("pool: a streamed request body past the high-water mark pauses its client until the upstream takes it") {
  Fixture f;
  UpstreamRequest r;
  r.method = "PUT";
  r.target = "/files/a";
  r.body_from = server::Access::body_reader(&f.clients, 0, 0, 0);  // chunked: no length
  REQUIRE(f.fetch(r));
  const int fd = f.kernel.connects.back();
  f.connected(fd);
  REQUIRE(f.clients.body_data);
  f.clients.body_data(std::string(100000, 'x'), false);
  CHECK(f.clients.body_paused);
  f.sent(fd);  // the head
  f.sent(fd);  // the piece
  CHECK(!f.clients.body_paused);
  f.clients.body_data("", true);
  f.sent(fd);
  const std::string& wire = f.kernel.at(fd).wire;
  CHECK(wire.find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  CHECK(wire.size() > 100000);
  CHECK(wire.substr(wire.size() - 5) == "0\r\n\r\n");
  // A body longer than the length it was sent with fails the exchange instead of corrupting the connection.
  Fixture g;
  r.body_from = server::Access::body_reader(&g.clients, 0, 0, 0);
  r.body_length = 3;
  REQUIRE(g.fetch(r));
  g.connected(g.kernel.connects.back());
  g.clients.body_data("four", false);
  REQUIRE(g.answers.size() == 1);
  CHECK(g.answers[0].error == UpstreamError::BodyFailed);
}
