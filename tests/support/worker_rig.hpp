// tests/support/worker_rig.hpp: a real Worker (slots, inbox, continuations, free list) over a FakeBackend, driven
// one loop turn at a time by the test, which plays the kernel: accepts, receives, send completions, wakes. No
// sockets and no sleeps: what happens between two turns is exactly what the test queued.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "libuserd/io/tag.hpp"
#include "libuserd/server/worker.hpp"
#include "tests/support/fake_backend.hpp"

namespace userd::testing {

struct WorkerRig {
  ServerConfig cfg;
  Router router;
  std::vector<upstream::Target> upstreams;
  std::unique_ptr<server::Worker> worker;
  FakeBackend* kernel = nullptr;  // owned by the worker
  std::deque<std::string> bytes;  // what queued receives point into, kept until the rig goes

  WorkerRig() {
    cfg.threads = 1;
    cfg.max_conns = 64;
  }
  ~WorkerRig() { worker.reset(); }

  // After the routes are added: the worker takes the fake kernel and is ready for its first turn.
  void start() {
    auto k = std::make_unique<FakeBackend>();
    k->many_sockets = true;
    kernel = k.get();
    worker = std::make_unique<server::Worker>(cfg, router, -1, -1, tls::Context(), upstreams);
    worker->begin(std::move(k));
  }
  void turn() { worker->turn(); }

  // A new client: returns the tag base (slot and generation) of its receive, for recv() and the rest.
  std::uint64_t accept() {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // a real descriptor: the worker may close it
    kernel->ready.push_back({io::tag(io::Op::Accept, 0), fd, true, false, 0, nullptr});
    turn();
    return kernel->last_recv_tag;
  }
  void recv(std::uint64_t conn, std::string data) {
    bytes.push_back(std::move(data));
    kernel->ready.push_back({conn, int(bytes.back().size()), true, false, 0, bytes.back().data()});
  }
  // The client closed its side (res 0) or the connection failed (-errno): the receive ends.
  void recv_end(std::uint64_t conn, int res) { kernel->ready.push_back({conn, res, false, false, 0, nullptr}); }
  // Completes the send in flight on conn with all its bytes (or res when given). False when none is in flight.
  bool sent(std::uint64_t conn, int res = INT32_MIN) {
    const std::uint64_t t = io::tag(io::Op::Send, io::tag_slot(conn), io::tag_gen(conn));
    for (auto it = kernel->inflight.begin(); it != kernel->inflight.end(); ++it)
      if (it->first == t) {
        kernel->ready.push_back({t, res == INT32_MIN ? it->second : res, false, false, 0, nullptr});
        kernel->inflight.erase(it);
        return true;
      }
    return false;
  }
  bool sending(std::uint64_t conn) const {
    const std::uint64_t t = io::tag(io::Op::Send, io::tag_slot(conn), io::tag_gen(conn));
    for (const auto& f : kernel->inflight)
      if (f.first == t) return true;
    return false;
  }
  // What was sent to conn's slot so far.
  const std::string& wire(std::uint64_t conn) {
    const std::uint32_t s = io::tag_slot(conn);
    if (kernel->wire_of.size() <= s) kernel->wire_of.resize(s + 1);
    return kernel->wire_of[s];
  }
  void wake() { kernel->ready.push_back({io::tag(io::Op::Wake), 8, true, false, 0, nullptr}); }
  // Completes every send in flight, turn after turn, until none is left (bounded).
  void flush_all() {
    for (int i = 0; i < 64 && !kernel->inflight.empty(); ++i) {
      while (!kernel->inflight.empty()) {
        const auto [t, n] = kernel->inflight.front();
        kernel->ready.push_back({t, n, false, false, 0, nullptr});
        kernel->inflight.erase(kernel->inflight.begin());
      }
      turn();
    }
  }
};

}  // namespace userd::testing
