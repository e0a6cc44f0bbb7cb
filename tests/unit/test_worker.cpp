// tests/unit/test_worker.cpp: one Worker driven turn by turn over the fake kernel (tests/support/worker_rig.hpp):
// the free list, continuations and the off-loop inbox, where several connections and threads meet. Deterministic:
// a thread that answers off the loop is joined before the turn that takes its answer.
#include <doctest/doctest.h>

#include <cerrno>
#include <optional>
#include <string>
#include <thread>

#include "tests/support/worker_rig.hpp"

using namespace userd;
using userd::testing::WorkerRig;

namespace {
std::uint32_t slot_of(std::uint64_t t) { return io::tag_slot(t); }
}  // namespace

// Found by reading: run_continuations (then run_writables) released the slot through end() inside the callback
// and then again itself. Two later accepts shared one Connection: completions and answers crossed clients.
TEST_CASE("a stream ended inside its writable callback, releasing the connection, frees its slot once") {
  WorkerRig rig;
  std::optional<Stream> stream;
  rig.router.get("/s", [&](const Request&, Responder res) { stream = res.stream(Response{}); });
  rig.start();
  const std::uint64_t a = rig.accept();
  rig.recv(a, "GET /s HTTP/1.0\r\n\r\n");  // HTTP/1.0: the end of the stream is the close
  rig.turn();
  REQUIRE(stream);
  REQUIRE(rig.sending(a));
  int ran = 0;
  stream->on_writable([&] {
    ++ran;
    CHECK(stream->end());
  });
  rig.sent(a);
  rig.recv_end(a, 0);  // the client half-closed: the end releases the connection at once
  rig.turn();
  CHECK(ran == 1);
  CHECK(rig.worker->free_slots() == 1);
  CHECK(rig.worker->metrics().connections_open.get() == 0);
  const std::uint64_t b = rig.accept(), c = rig.accept();
  CHECK(slot_of(b) != slot_of(c));
  CHECK(rig.worker->free_slots() == 0);
  rig.recv(b, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  CHECK(rig.wire(b).find("HTTP/1.1 200 OK") == 0);
  CHECK(rig.wire(c).empty());
}

// Found from outside: Socket::release() moved the generation on before the worker dropped what waited for the
// old one, so nothing matched; the charge stayed and the slot's next streams got heads and no bodies.
TEST_CASE("stream data waiting off the loop for a client that leaves is dropped, and the slot's next stream works") {
  WorkerRig rig;
  std::optional<Stream> stream;
  rig.router.get("/s", [&](const Request&, Responder res) { stream = res.stream(Response{}); });
  rig.start();
  const std::uint64_t a = rig.accept();
  rig.recv(a, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  REQUIRE(stream);
  const std::string piece(16 * 1024, 'x');
  int taken = 0;
  std::thread([&] {  // a producer off the loop: it writes until told to wait
    while (taken < 100 && stream->write(piece)) ++taken;
  }).join();
  CHECK(taken >= 8);
  rig.wake();
  rig.turn();  // the loop takes what its connection can hold (the client reads nothing); the rest waits
  CHECK(rig.worker->pending_stream_bytes() > 0);
  rig.recv_end(a, -ECONNRESET);  // the client goes
  rig.sent(a, -ECONNRESET);
  rig.turn();
  CHECK(rig.worker->free_slots() == 1);
  CHECK(rig.worker->pending_stream_bytes() == 0);
  CHECK_FALSE(stream->alive());

  const std::uint64_t b = rig.accept();
  REQUIRE(slot_of(b) == slot_of(a));
  stream.reset();
  rig.recv(b, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  REQUIRE(stream);
  const std::string big(200 * 1024, 'y');
  bool wrote = false;
  std::thread([&] { wrote = stream->write(big) && stream->end(); }).join();
  CHECK(wrote);
  rig.wake();
  rig.turn();
  rig.flush_all();
  const std::string& out = rig.wire(b);
  CHECK(out.find(std::string(1024, 'y')) != std::string::npos);
  CHECK(out.size() >= 200 * 1024);
  CHECK(out.substr(out.size() - 5) == "0\r\n\r\n");
  CHECK(rig.worker->pending_stream_bytes() == 0);
}

// Found by reading (examples/hello.cpp's /wait and /wake): an answer sent from another connection's handler ran
// the answered connection's pipelined handlers on the sender's stack; the next /wait overwrote the held
// Responder before /wake had finished with it, and that request hung until its 503.
TEST_CASE("an answer from another connection's handler continues that connection after the handler, not inside") {
  WorkerRig rig;
  std::optional<Responder> waiting;
  int waits = 0, waits_seen_inside_send = -1;
  rig.router.get("/wait", [&](const Request&, Responder res) {
    ++waits;
    waiting = res;
  });
  rig.router.get("/wake", [&](const Request&, Responder res) {
    Response r;
    r.body = "woken";
    const int before = waits;
    CHECK(waiting->send(r));
    waits_seen_inside_send = waits - before;
    waiting.reset();  // as hello.cpp does: done with the one it woke
    r.body = "woke one";
    res.send(r);
  });
  rig.start();
  const std::uint64_t w = rig.accept(), k = rig.accept();
  rig.recv(w, "GET /wait HTTP/1.1\r\nHost: t\r\n\r\nGET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  CHECK(waits == 1);
  rig.recv(k, "GET /wake HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  CHECK(waits_seen_inside_send == 0);  // the second /wait did not run inside the first's send
  CHECK(waits == 2);                   // it ran later in the same turn
  REQUIRE(waiting);
  CHECK(waiting->alive());  // the second /wait is held, not lost
  CHECK(rig.wire(w).find("woken") != std::string::npos);
  CHECK(rig.wire(k).find("woke one") != std::string::npos);
}

TEST_CASE("work posted onto a loop and timers are bounded, and run in order on the loop's turn") {
  WorkerRig rig;
  rig.start();
  int ran = 0;
  bool refused = false;
  std::thread([&] {
    for (int i = 0; i < 4096; ++i)
      if (!rig.worker->run_soon([&ran] { ++ran; })) return;
    refused = !rig.worker->run_soon([&ran] { ++ran; });
  }).join();
  CHECK(refused);  // the 4,097th waits for nothing: false
  CHECK(ran == 0);
  rig.wake();
  rig.turn();
  CHECK(ran == 4096);
  std::vector<int> order;
  CHECK(rig.worker->run_after(0, [&] { order.push_back(1); }));
  CHECK(rig.worker->run_after(0, [&] { order.push_back(2); }));
  bool off_loop = true;
  std::thread([&] { off_loop = rig.worker->run_after(0, [] {}); }).join();
  CHECK_FALSE(off_loop);  // loop thread only
  rig.turn();
  CHECK(order == std::vector<int>{1, 2});
}

// A timer may be what finishes a request in flight (a feed's next event, a delayed answer): the drain waits for
// requests in flight, so a timer set while it runs is taken and run too.
TEST_CASE("timers are taken and run while the loop drains") {
  WorkerRig rig;
  std::optional<Responder> held;
  rig.router.get("/later", [&](const Request&, Responder res) { held = res; });
  rig.start();
  const std::uint64_t a = rig.accept();
  rig.recv(a, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  REQUIRE(held);
  rig.worker->stop();
  rig.turn();  // the drain begins: the request in flight is still awaited
  bool fired = false;
  CHECK(held->after(0, [&] {
    fired = true;
    Response r;
    r.body = "late";
    CHECK(held->send(r));
  }));
  rig.turn();
  CHECK(fired);
  CHECK(rig.wire(a).find("Connection: close") != std::string::npos);
}
