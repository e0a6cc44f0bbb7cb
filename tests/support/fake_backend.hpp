// tests/support/fake_backend.hpp: an io::Backend that records what it is asked and lets the test play the
// kernel: for the connection unit tests and the connection fuzz target. No sockets.
#pragma once

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

  FakeBackend() {  // so that recording never allocates under a test that makes allocation fail
    shutdowns.reserve(16);
    cancels.reserve(16);
  }

  std::string_view name() const noexcept override { return "fake"; }
  void accept(int, std::uint64_t) noexcept override {}
  void recv(int, std::uint64_t, bool multishot) noexcept override {
    ++recv_arms;
    recv_multishot = multishot;
  }
  void send(int, std::uint64_t, const iovec* iov, unsigned n, msghdr*) noexcept override {
    if (pending_send != -1) std::abort();  // two sends in flight on one socket would interleave bytes
    ++sends;
    int total = 0;
    for (unsigned i = 0; i < n; ++i) {
      wire.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
      total += int(iov[i].iov_len);
    }
    pending_send = total;
  }
  void connect(int, const sockaddr*, socklen_t, std::uint64_t) noexcept override {}
  void cancel(int, std::uint64_t t) noexcept override { cancels.push_back(t); }
  void recycle(std::uint16_t) noexcept override {}
  void shutdown(int, int how) noexcept override { shutdowns.push_back(how); }
  void close(int) noexcept override { ++closes; }
  int wait(std::span<io::Completion>, int) noexcept override { return 0; }
  void wake() noexcept override {}
  const io::BackendStats& stats() const noexcept override { return st; }
};

}  // namespace userd::testing
