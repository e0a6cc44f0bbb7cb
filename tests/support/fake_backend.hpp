// tests/support/fake_backend.hpp: an io::Backend that records what it is asked and lets the test play the
// kernel: for the connection unit tests and the connection fuzz target. No sockets.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "libuserd/io/backend.hpp"

namespace userd::testing {

struct FakeBackend final : io::Backend {
  std::string wire;       // everything sent, in order
  int sends = 0;          // send operations submitted
  int pending_send = -1;  // bytes of the send in flight, -1 if none
  int recv_arms = 0;
  bool recv_multishot = true;       // of the last receive armed
  std::vector<std::uint64_t> cancels;  // tags of operations asked to stop
  std::vector<int> shutdowns;
  int closes = 0;
  io::BackendStats st;
  // For a Worker driven turn by turn (worker_rig.hpp): wait() hands out these completions, sends of several
  // sockets may be in flight at once (one per tag), and the tag of the last receive armed says which slot an
  // accepted socket got.
  std::vector<io::Completion> ready;
  bool many_sockets = false;
  std::vector<std::pair<std::uint64_t, int>> inflight;  // tag, bytes of each send in flight (many_sockets)
  std::uint64_t last_recv_tag = 0;
  std::vector<std::string> wire_of;  // many_sockets: what was sent, by the slot in the send's tag

  FakeBackend() {  // so that recording never allocates under a test that makes allocation fail
    shutdowns.reserve(16);
    cancels.reserve(16);
  }

  std::string_view name() const noexcept override { return "fake"; }
  void accept(int, std::uint64_t) noexcept override {}
  void recv(int, std::uint64_t t, bool multishot) noexcept override {
    ++recv_arms;
    last_recv_tag = t;
    recv_multishot = multishot;
  }
  void send(int, std::uint64_t t, const iovec* iov, unsigned n, msghdr*) noexcept override {
    if (!many_sockets && pending_send != -1) std::abort();  // two sends in flight on one socket interleave bytes
    for (const auto& f : inflight)
      if (f.first == t) std::abort();
    ++sends;
    int total = 0;
    for (unsigned i = 0; i < n; ++i) {
      wire.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
      total += int(iov[i].iov_len);
    }
    if (many_sockets) {
      inflight.push_back({t, total});
      const std::uint32_t slot = std::uint32_t(t);
      if (wire_of.size() <= slot) wire_of.resize(slot + 1);
      for (unsigned i = 0; i < n; ++i) wire_of[slot].append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    }
    else pending_send = total;
  }
  void connect(int, const sockaddr*, socklen_t, std::uint64_t) noexcept override {}
  void cancel(int, std::uint64_t t) noexcept override { cancels.push_back(t); }
  void recycle(std::uint16_t) noexcept override {}
  void shutdown(int, int how) noexcept override { shutdowns.push_back(how); }
  void close(int) noexcept override { ++closes; }
  int wait(std::span<io::Completion> out, int) noexcept override {
    const std::size_t n = std::min(out.size(), ready.size());
    std::copy(ready.begin(), ready.begin() + std::ptrdiff_t(n), out.begin());
    ready.erase(ready.begin(), ready.begin() + std::ptrdiff_t(n));
    return int(n);
  }
  void wake() noexcept override {}
  const io::BackendStats& stats() const noexcept override { return st; }
};

}  // namespace userd::testing
