// tests/fuzz/fuzz_connection.cpp: the connection state machine fed an arbitrary byte stream in arbitrary splits,
// with sends completing and deferred handlers answering at moments the input chooses. The fake backend aborts
// on two sends in flight; the sanitizers catch any memory error; the connection must end released.
#include <cstdint>
#include <optional>
#include <string>

#include "libuserd/server/connection.hpp"
#include "tests/support/fuzz_rig.hpp"

using namespace userd;
using namespace userd::server;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  testing::FuzzRig rig;
  testing::FakeBackend& kernel = rig.kernel;
  std::optional<Responder> held;
  rig.router.get("/later", [&held](const Request&, Responder res) { held = res; });
  Connection conn(rig.ctx);
  rig.target.conn = &conn;
  conn.open(3, 0);
  std::size_t cancels_seen = 0;

  // The first byte steers: chunk sizes and when the kernel and the handler act.
  std::uint32_t rng = data[0] * 2654435761u + 1;
  auto next = [&rng] { return rng = rng * 1103515245u + 12345u, rng >> 16; };
  std::string stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::size_t pos = 0;
  while (pos < stream.size() && !conn.released()) {
    std::size_t n = 1 + next() % 64;
    n = std::min(n, stream.size() - pos);
    std::string chunk = stream.substr(pos, n);  // writable, like a receive buffer
    pos += n;
    conn.on_recv(chunk.data(), chunk.size());
    if (next() % 2 && kernel.pending_send >= 0) {
      int sent = kernel.pending_send;
      kernel.pending_send = -1;
      // Now and then the peer is gone (EPIPE), or its window was full and only part went out.
      const unsigned how = next() % 8;
      conn.on_send(how == 0 ? -32 : how == 1 && sent > 1 ? sent / 2 : sent);
    }
    if (kernel.cancels.size() > cancels_seen && next() % 2) {  // a receive ended for backpressure
      cancels_seen = kernel.cancels.size();
      conn.on_recv_end(-125);  // ECANCELED
    }
    if (next() % 4 == 0) rig.poke(next());
    if (held && next() % 3 == 0) {
      Response r;
      r.body = "later";
      held->send(r);
      held.reset();
    }
    if (next() % 50 == 0) conn.on_timeout(Timer(1 + next() % 6));  // idle, header, body, linger, send, handler
  }
  // The end: the client leaves; every operation completes; the slot must come free.
  if (held) {
    Response r;
    held->send(r);
  }
  testing::FuzzRig::finish(conn, kernel);
  return 0;
}
