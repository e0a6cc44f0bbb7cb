// tests/fuzz/fuzz_h2_session.cpp: the HTTP/2 session fed arbitrary frames after a valid preface, in arbitrary
// splits, with sends completing and a deferred handler answering at moments the input chooses. The sanitizers
// catch any memory error; the connection must end released.
#include <cstdint>
#include <optional>
#include <string>

#include "libuserd/server/connection.hpp"
#include "libuserd/server/exchanges.hpp"
#include "libuserd/server/http2_session.hpp"
#include "tests/support/fuzz_rig.hpp"

using namespace userd;
using namespace userd::server;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  testing::FuzzRig rig;
  rig.ctx.h2 = std::make_unique<H2Shared>();
  rig.ctx.h2_max_streams = 8;
  ExchangeTable exchanges(8);  // as a worker's: each stream a handler gets has its own entry
  rig.ctx.exchanges = &exchanges;
  testing::FakeBackend& kernel = rig.kernel;
  std::optional<Responder> held;
  rig.router.get("/later", [&held](const Request&, Responder res) { held = res; });
  Connection conn(rig.ctx);
  rig.target.conn = &conn;
  conn.open(3, 0);

  std::uint32_t rng = data[0] * 2654435761u + 1;
  auto next = [&rng] { return rng = rng * 1103515245u + 12345u, rng >> 16; };
  std::string stream = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  stream.append(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::size_t pos = 0;
  while (pos < stream.size() && !conn.released()) {
    std::size_t n = 1 + next() % 256;
    n = std::min(n, stream.size() - pos);
    std::string chunk = stream.substr(pos, n);
    pos += n;
    conn.on_recv(chunk.data(), chunk.size());
    if (next() % 2 && kernel.pending_send >= 0) {
      int sent = kernel.pending_send;
      kernel.pending_send = -1;
      const unsigned how = next() % 8;
      conn.on_send(how == 0 ? -32 : how == 1 && sent > 1 ? sent / 2 : sent);
    }
    if (next() % 4 == 0) rig.poke(next());
    if (held && next() % 3 == 0) {
      Response r;
      r.body = "later";
      held->send(r);
      held.reset();
    }
    if (next() % 50 == 0) conn.on_timeout(Timer(1 + next() % 7));
  }
  if (held) held->send(Response{});
  testing::FuzzRig::finish(conn, kernel);
  if (exchanges.open_count() != 0) __builtin_trap();  // a released connection holds no exchange
  return 0;
}
