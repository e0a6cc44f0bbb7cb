// tests/unit/test_server.cpp: what Server::start refuses before it binds or starts a thread, and what it leaves
// behind on the caller's thread.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <string_view>
#include <thread>

#include "userd/server.hpp"
#include "userd/version.hpp"

namespace {
// One epoll loop on 127.0.0.1 with an ephemeral port.
userd::ServerConfig one_loop() {
  userd::ServerConfig cfg;
  cfg.host = "127.0.0.1";
  cfg.port = 0;
  cfg.threads = 1;
  cfg.backend = userd::BackendKind::Epoll;
  return cfg;
}

// Sends requests on one connection and reads until `until` has arrived (or 5 s pass): what came back.
std::string exchange(const userd::Server& server, const std::string& requests, std::string_view until) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(server.port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::send(fd, requests.data(), requests.size(), 0) == ssize_t(requests.size()));
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  char buf[4096];
  while (got.find(until) == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, std::size_t(n));
  }
  ::close(fd);
  return got;
}
}  // namespace

TEST_CASE("a receive buffer count that is not a power of two is a configuration error on every backend") {
  for (auto kind : {userd::BackendKind::Auto, userd::BackendKind::IoUring, userd::BackendKind::Epoll}) {
    userd::ServerConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.threads = 1;
    cfg.backend = kind;
    cfg.recv_buffers = 100;
    userd::Server s(cfg, userd::Router{});
    auto r = s.start();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == userd::Errc::BadInput);  // not Unsupported: nothing falls back to epoll
    CHECK(std::string_view(r.error().what).find("recv_buffers") == 0);
  }
}

TEST_CASE("userd/version.hpp says the project's version") {
  CHECK(std::string_view(USERD_VERSION_STRING) == USERD_PROJECT_VERSION);
  const std::string parts = std::to_string(USERD_VERSION_MAJOR) + "." + std::to_string(USERD_VERSION_MINOR) + "." +
                            std::to_string(USERD_VERSION_PATCH);
  CHECK(parts == USERD_PROJECT_VERSION);
}

// Found by a cross-thread test whose client recv (SO_RCVTIMEO) failed with EINTR: the io_uring probe start()
// made on the caller's thread left io_uring task work queued to it when the probe ring was torn down, and that
// interrupts the caller's next blocking call that has a timeout. An embedder's thread owes the server nothing.
TEST_CASE("after start() and stop() on io_uring, the caller's next blocking receive with a timeout is not interrupted") {
  int interrupted = 0, rounds = 0;
  for (int i = 0; i < 20; ++i) {
    {
      userd::ServerConfig cfg;
      cfg.host = "127.0.0.1";
      cfg.port = 0;
      cfg.threads = 1;
      cfg.backend = userd::BackendKind::IoUring;
      userd::Server s(cfg, userd::Router{});
      if (!s.start()) break;  // a kernel that refuses io_uring has nothing to leave behind
    }
    ++rounds;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    timeval tv{0, 20'000};
    ::setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c;
    const ssize_t n = ::recv(sv[0], &c, 1, 0);  // nothing is sent: the timeout (EAGAIN) is the only right end
    if (n < 0 && errno == EINTR) ++interrupted;
    ::close(sv[0]);
    ::close(sv[1]);
  }
  if (rounds == 0) MESSAGE("io_uring refused: skipped");
  CHECK(interrupted == 0);
}

// Every listener sets SO_REUSEPORT, and any process of the same user could join the group and take a share of
// the connections: a second server on a port in use must be refused unless both asked to share it.
TEST_CASE("a second server on a port another server listens on is refused, unless both share it on purpose") {
  userd::ServerConfig cfg = one_loop();
  cfg.threads = 2;
  userd::Server first(cfg, userd::Router{});
  REQUIRE(first.start());
  cfg.port = first.port();
  userd::Server second(cfg, userd::Router{});
  auto r = second.start();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == userd::Errc::Io);
  CHECK(r.error().sys == EADDRINUSE);
  first.stop();
  first.wait();

  cfg.reuse_port = true;
  cfg.port = 0;
  userd::Server old_one(cfg, userd::Router{});
  REQUIRE(old_one.start());
  cfg.port = old_one.port();
  userd::Server new_one(cfg, userd::Router{});
  CHECK(new_one.start());
}

// An upstream connection's tag carries its index in 16 bits: more connections would alias each other's tags.
TEST_CASE("an upstream with more than 65535 connections per thread is a configuration error") {
  userd::ServerConfig cfg = one_loop();
  userd::UpstreamConfig u;
  u.host = "127.0.0.1";
  u.port = 9;
  u.max_conns = 70000;
  cfg.upstreams.push_back(u);
  userd::Server s(cfg, userd::Router{});
  auto r = s.start();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == userd::Errc::BadInput);
  CHECK(std::string_view(r.error().what).find("max_conns") != std::string_view::npos);
}

// The daemon checks --proxy-from itself; an embedder's list is checked by start(), before anything is bound.
TEST_CASE("a proxy_from entry that is not an address or CIDR is a configuration error") {
  userd::ServerConfig cfg = one_loop();
  cfg.proxy_protocol = true;
  cfg.proxy_from = {"10.0.0.0/8", "10.0.0.1/8"};  // host bits set
  userd::Server s(cfg, userd::Router{});
  auto r = s.start();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == userd::Errc::BadInput);
  CHECK(std::string_view(r.error().what).find("proxy_from") != std::string_view::npos);
  cfg.proxy_from = {"10.0.0.0/8", "::1"};
  userd::Server ok(cfg, userd::Router{});
  CHECK(ok.start());
}

TEST_CASE("Result: value_or, error() on a success, and Error's one-line message") {
  userd::Result<int> ok = 7;
  userd::Result<int> bad = userd::fail(userd::Errc::Io, EADDRINUSE, "bind");
  CHECK(ok.value_or(1) == 7);
  CHECK(bad.value_or(1) == 1);
  CHECK(ok.error().sys == 0);  // a default Error, not a read through a null pointer
  CHECK(std::string_view(ok.error().what).empty());
  CHECK(bad.error().message() == "bind: Address already in use");
  CHECK(userd::Error{userd::Errc::BadInput, 0, "recv_buffers"}.message() == "recv_buffers");
  userd::Result<void> fine;
  CHECK(fine.error().sys == 0);
}

// Found from outside: 201, 202, 301, 302, 401, 403, 409, 422 and 429 were all folded into code="other".
TEST_CASE("metrics label every registered status code, and an unregistered one by its class") {
  userd::Router router;
  router.get("/s/{code}", [](const userd::Request& req, userd::Responder res) {
    userd::Response r;
    r.status = std::stoi(std::string(req.param("code")));
    res.send(r);
  });
  userd::Server server(one_loop(), std::move(router));
  REQUIRE(server.start());
  std::string reqs;
  for (const char* code : {"201", "202", "301", "302", "401", "403", "409", "422", "429", "299", "599"})
    reqs += std::string("GET /s/") + code + " HTTP/1.1\r\nHost: t\r\n\r\n";
  CHECK(exchange(server, reqs, "HTTP/1.1 599").find("HTTP/1.1 599") != std::string::npos);
  const std::string text = server.metrics_text();
  for (const char* code : {"201", "202", "301", "302", "401", "403", "409", "422", "429", "2xx", "5xx"}) {
    CAPTURE(code);
    CHECK(text.find(std::string("userd_requests_total{route=\"/s/{code}\",code=\"") + code + "\"} 1") !=
          std::string::npos);
  }
  CHECK(text.find("code=\"other\"") == std::string::npos);
}

TEST_CASE("Request::fetch says why it refused: no such upstream, or called off the handler's loop") {
  userd::FetchRefused direct = userd::FetchRefused::None, off_loop = userd::FetchRefused::None;
  userd::Router router;
  router.get("/f", [&](const userd::Request& req, userd::Responder res) {
    direct = req.fetch(3, "/x", res, [](userd::Responder, const userd::UpstreamReply&) {}).refused;
    std::thread([&] { off_loop = req.fetch(0, "/x", res, [](userd::Responder, const userd::UpstreamReply&) {}).refused; })
        .join();
    res.send(userd::Response{});
  });
  userd::Server server(one_loop(), std::move(router));
  REQUIRE(server.start());
  CHECK(exchange(server, "GET /f HTTP/1.1\r\nHost: t\r\n\r\n", "\r\n\r\n").find("200 OK") != std::string::npos);
  CHECK(direct == userd::FetchRefused::NoUpstream);
  CHECK(off_loop == userd::FetchRefused::NotOnLoop);
}
