// io/socket.hpp: one socket's life while operations on it may be in flight. Ending it wakes every armed
// operation (shutdown completes a receive and a send, cancel a connect); the descriptor is closed only once
// all of them have completed, since closing cancels nothing; then the generation moves on, so completions
// still carrying the old one are recognised and dropped. The connection and the upstream pool both end their
// sockets through this.
// Not here: what the owner's state machine does meanwhile.
#pragma once

#include <sys/socket.h>

#include <cstdint>

#include "libuserd/io/backend.hpp"

namespace userd::io {

struct Socket {
  int fd = -1;
  std::uint16_t gen = 0;  // goes into every tag of an operation on this socket
  bool recv_armed = false;
  bool send_inflight = false;
  bool connect_inflight = false;

  bool busy() const noexcept { return recv_armed || send_inflight || connect_inflight; }

  // Starts ending it: each armed operation will complete. connect_tag: the tag the connect was armed with.
  void end(Backend& b, std::uint64_t connect_tag = 0) noexcept {
    if (connect_inflight) b.cancel(fd, connect_tag);
    if (recv_armed || send_inflight) b.shutdown(fd, SHUT_RDWR);
  }

  // Closes it once nothing is in flight. True when it did (the slot may be reused).
  bool release(Backend& b) noexcept {
    if (fd < 0 || busy()) return false;
    b.close(fd);
    fd = -1;
    ++gen;
    return true;
  }
};

}  // namespace userd::io
