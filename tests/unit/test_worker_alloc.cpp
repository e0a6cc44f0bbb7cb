// tests/unit/test_worker_alloc.cpp: the worker rig (tests/support/worker_rig.hpp) where an allocation fails. In
// the unit test binary, whose operator new can be made to fail (failing_new.cpp): ThreadSanitizer's runtime
// owns operator new, so this cannot live beside the other rig tests in the cross-thread binary.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <thread>

#include "tests/support/failing_new.hpp"
#include "tests/support/worker_rig.hpp"

using namespace userd;
using userd::testing::WorkerRig;

// Found by reading: post() claimed the request and charged the budget before the copies that can throw, so an
// answer that failed to copy (out of memory) left the request claimed: no later answer could reach it.
TEST_CASE("an answer from another thread that cannot be copied claims nothing: a later answer still goes out") {
  WorkerRig rig;
  std::optional<Responder> held;
  rig.router.get("/later", [&](const Request&, Responder res) { held = res; });
  rig.start();
  const std::uint64_t a = rig.accept();
  rig.recv(a, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
  rig.turn();
  REQUIRE(held);
  const std::string big(64 * 1024, 'b');
  bool first = true, second = false, alive_between = false;
  std::thread([&] {
    Response r;
    r.body = big;
    {
      userd::testing::FailAllocations fail(32 * 1024);  // the copy of the body fails
      first = held->send(r);
    }
    alive_between = held->alive();
    r.body = "small";
    second = held->send(r);
  }).join();
  CHECK_FALSE(first);
  CHECK(alive_between);
  CHECK(second);
  rig.wake();
  rig.turn();
  CHECK(rig.wire(a).find("\r\n\r\nsmall") != std::string::npos);
  CHECK(rig.worker->pending_stream_bytes() == 0);
}

