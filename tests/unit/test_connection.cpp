// tests/unit/test_connection.cpp: the connection state machine driven by a FakeBackend: no sockets, no kernel.
// The fake records what the connection asks of the kernel; the test plays the kernel's completions.
#include <doctest/doctest.h>
#include <sys/socket.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "libuserd/server/connection.hpp"
#include "libuserd/server/reply_target.hpp"
#include "tests/support/fake_backend.hpp"
#include "tests/support/one_connection.hpp"

using namespace userd;
using namespace userd::server;
using userd::testing::FakeBackend;
using userd::testing::OneConnection;

namespace {


struct Fixture {
  FakeBackend kernel;
  Router router;
  LoopContext ctx;
  OneConnection target;
  std::optional<Connection> conn;
  std::vector<std::string> bodies_seen;
  std::optional<Responder> held;  // a handler that answers later leaves its Responder here

  Fixture() {
    router.get("/now", [this](const Request& req, Responder res) {
      bodies_seen.emplace_back(req.body());
      Response r;
      r.content_type = "text/plain";
      r.body = req.query().empty() ? "now" : req.query();
      res.send(r);
    });
    router.route("POST", "/now", [this](const Request& req, Responder res) {
      bodies_seen.emplace_back(req.body());
      Response r;
      r.body = "posted";
      res.send(r);
    });
    router.get("/later", [this](const Request&, Responder res) { held = res; });
    router.get("/throws", [](const Request&, Responder) { throw std::runtime_error("handler bug"); });
    ctx.backend = &kernel;
    ctx.router = &router;
    ctx.replies = &target;
    ctx.date.update(784111777);
    ctx.max_body = 64;
    ctx.backend_name = "fake";
    conn.emplace(ctx);
    target.conn = &*conn;
    conn->open(7, 0);
  }
  void feed(std::string bytes) { conn->on_recv(bytes.data(), bytes.size()); }
  // Completes the send in flight, as the kernel would.
  void sent() {
    REQUIRE(kernel.pending_send >= 0);
    int n = kernel.pending_send;
    kernel.pending_send = -1;
    conn->on_send(n);
  }
  int count(std::string_view needle) const {
    int n = 0;
    for (std::size_t p = kernel.wire.find(needle); p != std::string::npos; p = kernel.wire.find(needle, p + 1)) ++n;
    return n;
  }
};

constexpr std::string_view kGet = "GET /now HTTP/1.1\r\nHost: t\r\n\r\n";

}  // namespace

TEST_CASE("connection answers pipelined requests in order in one send") {
  Fixture f;
  f.feed("GET /now?a HTTP/1.1\r\nHost: t\r\n\r\nGET /now?b HTTP/1.1\r\nHost: t\r\n\r\nGET /now?c HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(f.kernel.sends == 1);
  CHECK(f.count("HTTP/1.1 200 OK") == 3);
  auto a = f.kernel.wire.find("\r\n\r\na"), b = f.kernel.wire.find("\r\n\r\nb"), c = f.kernel.wire.find("\r\n\r\nc");
  CHECK((a < b && b < c && c != std::string::npos));
  f.sent();
  CHECK(f.conn->state() == Connection::State::Open);
}

TEST_CASE("connection assembles a request split at every byte") {
  for (std::size_t split = 1; split < kGet.size(); ++split) {
    Fixture f;
    f.feed(std::string(kGet.substr(0, split)));
    CHECK(f.kernel.sends == 0);
    f.feed(std::string(kGet.substr(split)));
    CHECK_MESSAGE(f.kernel.sends == 1, "split " << split);
    CHECK(f.kernel.wire.find("\r\n\r\nnow") != std::string::npos);
  }
}

TEST_CASE("connection queues a second response while the first is being sent") {
  Fixture f;
  f.feed(std::string(kGet));
  f.feed(std::string(kGet));
  CHECK(f.kernel.sends == 1);  // the second waits: never two sends in flight
  f.sent();
  CHECK(f.kernel.sends == 2);
  f.sent();
  CHECK(f.count("HTTP/1.1 200 OK") == 2);
}

TEST_CASE("a handler may answer later; requests behind it wait their turn") {
  Fixture f;
  f.feed("GET /later HTTP/1.1\r\nHost: t\r\n\r\nGET /now?second HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(f.kernel.sends == 0);
  REQUIRE(f.held);
  CHECK(f.held->alive());
  Response r;
  r.body = "first";
  CHECK(f.held->send(r));
  CHECK_FALSE(f.held->send(r));  // a second answer to the same request is refused
  CHECK(f.kernel.sends == 1);
  CHECK(f.kernel.wire.find("first") < f.kernel.wire.find("second"));
}

TEST_CASE("a malformed request gets its status, then the connection half-closes and lingers") {
  Fixture f;
  f.feed("GET / HTTP/1.1\r\n\r\nGET /now HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(f.kernel.wire.find("HTTP/1.1 400 Bad Request\r\n") == 0);
  CHECK(f.kernel.wire.find("Connection: close\r\n") != std::string::npos);
  CHECK(f.kernel.wire.find("{\"error\":\"missing host header\"}") != std::string::npos);
  CHECK(f.count("HTTP/1.1") == 1);  // nothing after the bad request is trusted
  f.sent();
  CHECK(f.conn->state() == Connection::State::Lingering);
  REQUIRE(f.kernel.shutdowns.size() == 1);
  CHECK(f.kernel.shutdowns[0] == SHUT_WR);
  f.feed("more bytes are read and dropped");
  CHECK(f.kernel.sends == 1);
  f.conn->on_recv_end(0);  // the client closed
  CHECK(f.kernel.closes == 1);
  CHECK(f.conn->released());
}

TEST_CASE("Connection: close is honoured after the response") {
  Fixture f;
  f.feed("GET /now HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /now HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(f.count("HTTP/1.1 200") == 1);
  CHECK(f.kernel.wire.find("Connection: close") != std::string::npos);
  f.sent();
  CHECK(f.conn->state() == Connection::State::Lingering);
}

TEST_CASE("HTTP/1.0 keep-alive is confirmed, plain HTTP/1.0 closes") {
  Fixture f;
  f.feed("GET /now HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  CHECK(f.kernel.wire.find("Connection: keep-alive\r\n") != std::string::npos);
  f.sent();
  CHECK(f.conn->state() == Connection::State::Open);
  f.feed("GET /now HTTP/1.0\r\n\r\n");
  CHECK(f.kernel.wire.find("Connection: close\r\n") != std::string::npos);
}

TEST_CASE("HEAD gets the GET headers and no body; unknown paths 404, other methods 405") {
  Fixture f;
  f.feed("HEAD /now HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nDELETE /now HTTP/1.1\r\nHost: t\r\n\r\n");
  const std::string& w = f.kernel.wire;
  CHECK(w.find("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 3\r\n\r\nHTTP/1.1 404") == 0);
  CHECK(w.find("HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nAllow: GET, HEAD, POST\r\n") != std::string::npos);
  f.sent();
  CHECK(f.conn->state() == Connection::State::Open);  // 404 and 405 keep the connection
}

TEST_CASE("bodies are read, de-chunked and handed over, whatever the split") {
  const std::string req =
      "POST /now HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n" +
      std::string("POST /now HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
  for (std::size_t split = 1; split < req.size(); ++split) {
    Fixture f;
    f.feed(req.substr(0, split));
    f.feed(req.substr(split));
    REQUIRE_MESSAGE(f.bodies_seen.size() == 2, "split " << split);
    CHECK(f.bodies_seen[0] == "abcdefg");
    CHECK(f.bodies_seen[1] == "hello");
  }
}

TEST_CASE("bodies arriving one byte at a time") {
  Fixture f;
  const std::string req = "POST /now HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n";
  for (char c : req) f.feed(std::string(1, c));
  REQUIRE(f.bodies_seen.size() == 1);
  CHECK(f.bodies_seen[0] == "abc");
}

TEST_CASE("oversized and malformed bodies get 413 and 400 and a close") {
  Fixture f;
  f.feed("POST /now HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n");
  CHECK(f.kernel.wire.find("HTTP/1.1 413 Content Too Large\r\n") == 0);
  Fixture g;
  g.feed("POST /now HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n");
  CHECK(g.kernel.wire.find("HTTP/1.1 413") == 0);
  Fixture h;
  h.feed("POST /now HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
  CHECK(h.kernel.wire.find("HTTP/1.1 400 Bad Request") == 0);
  CHECK(h.kernel.wire.find("malformed chunked body") != std::string::npos);
}

TEST_CASE("Expect: 100-continue gets an interim response before the body") {
  Fixture f;
  f.feed("POST /now HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
  CHECK(f.kernel.wire == "HTTP/1.1 100 Continue\r\n\r\n");
  f.sent();
  f.feed("abc");
  CHECK(f.kernel.wire.find("HTTP/1.1 200 OK") != std::string::npos);
  REQUIRE(f.bodies_seen.size() == 1);
  CHECK(f.bodies_seen[0] == "abc");
}

TEST_CASE("a client that half-closes still gets its answer, then the socket closes") {
  Fixture f;
  f.feed("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
  f.conn->on_recv_end(0);
  CHECK(f.kernel.closes == 0);
  Response r;
  r.body = "late";
  REQUIRE(f.held->send(r));
  f.sent();
  CHECK(f.kernel.closes == 1);
  CHECK(f.conn->released());
}

TEST_CASE("an answer for a connection that is gone is refused, not sent") {
  Fixture f;
  f.feed("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
  f.conn->on_recv_end(-104);  // ECONNRESET
  CHECK(f.conn->released());
  CHECK_FALSE(f.held->alive());
  Response r;
  CHECK_FALSE(f.held->send(r));
  CHECK(f.kernel.sends == 0);
}

TEST_CASE("a handler that throws gets its client a 500, and the connection goes on") {
  Fixture f;
  f.feed("GET /throws HTTP/1.1\r\nHost: t\r\n\r\nGET /now HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(f.kernel.wire.find("HTTP/1.1 500 Internal Server Error\r\n") == 0);
  CHECK(f.kernel.wire.find("{\"error\":\"internal error\"}") != std::string::npos);
  CHECK(f.kernel.wire.find("HTTP/1.1 200 OK") != std::string::npos);
  f.sent();
  CHECK(f.conn->state() == Connection::State::Open);
}

TEST_CASE("a receive that ran out of buffers is re-armed") {
  Fixture f;
  int arms = f.kernel.recv_arms;
  f.conn->on_recv_end(-105);  // ENOBUFS
  CHECK(f.kernel.recv_arms == arms + 1);
  CHECK(f.conn->state() == Connection::State::Open);
}
