// tests/support/fuzz_rig.hpp: what the connection fuzz targets share: one Connection on a fake kernel with
// small limits, two echoing routes and a streamed upload whose consumer pauses, resumes and answers early at
// moments the input chooses, and the ending every run must survive (the client leaves, every
// operation completes, the slot comes free).
#pragma once

#include <cstdlib>
#include <optional>

#include "libuserd/server/connection.hpp"
#include "tests/support/fake_backend.hpp"
#include "tests/support/one_connection.hpp"

namespace userd::testing {

struct FuzzRig {
  FakeBackend kernel;
  Router router;
  server::LoopContext ctx;
  OneConnection target;

  FuzzRig() {
    router.get("/", [](const Request& req, Responder res) {
      Response r;
      r.body = req.query();
      res.send(r);
    });
    router.route("POST", "/", [](const Request& req, Responder res) {
      Response r;
      r.body = req.body().substr(0, 16);
      res.send(r);
    });
    router.put(
        "/up",
        [this](const Request& req, Responder res) {
          reader = req.body_reader();
          upload = res;
          reader->on_error([this](BodyError) { reader.reset(); });
          reader->on_data([this](std::string_view chunk, bool last) {
            if (last) {
              Response r;
              r.body = "done";
              upload->send(r);
            } else if (chunk.size() % 3 == 0) {
              reader->pause();
            }
          });
        },
        {.stream_body = true, .max_body = 4096});
    ctx.backend = &kernel;
    ctx.router = &router;
    ctx.max_body = 1024;
    ctx.limits.max_head = 512;
    ctx.limits.max_target = 256;
    ctx.date.update(0);
    ctx.replies = &target;
  }

  std::optional<BodyReader> reader;
  std::optional<Responder> upload;

  // What the input chooses now and then: the upload's consumer resumes, or answers before its body ended; and
  // the callbacks the loop runs later in its turn (a consumer's on_error).
  void poke(unsigned how) {
    if (reader && how % 3 == 0) reader->resume();
    if (upload && how % 3 == 1) upload->send(Response{});
    std::vector<std::function<void()>> later;
    std::swap(later, ctx.later);
    for (auto& fn : later) fn();
  }

  // The client leaves; sends complete; whatever is left is aborted. The connection must end released.
  static void finish(server::Connection& conn, FakeBackend& kernel) {
    conn.on_recv_end(0);
    for (int i = 0; i < 64 && kernel.pending_send >= 0; ++i) {
      const int sent = kernel.pending_send;
      kernel.pending_send = -1;
      conn.on_send(sent);
    }
    if (!conn.released()) conn.abort();
    if (kernel.pending_send >= 0) {
      kernel.pending_send = -1;
      conn.on_send(-32);
    }
    if (!conn.released()) std::abort();
  }
};

}  // namespace userd::testing
