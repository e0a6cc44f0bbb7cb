// io/backend.hpp: the completion-shaped interface between the server and the kernel. The server arms operations
// with a tag and later receives {tag, res} completions; io_uring does this natively, epoll emulates it.
// Not here: HTTP, connection state (server/), which backend to pick (server/server.cpp).
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string_view>

#include "libuserd/metrics/metrics.hpp"

namespace userd::io {

struct Completion {
  std::uint64_t tag;
  std::int32_t res;         // bytes, an fd, or -errno
  bool more;                // a multishot operation stays armed
  bool has_buffer;          // a receive buffer holds res bytes at data; give it back with recycle()
  std::uint16_t buffer_id;
  char* data;
};

// Counters a backend keeps about itself: written by its thread, read by a metrics scrape from any.
struct BackendStats {
  metrics::Counter submit_calls;  // io_uring_enter or epoll_wait calls
  metrics::Counter sqes;          // submission queue entries prepared (io_uring)
  metrics::Counter enobufs;       // receives that found no buffer and were re-armed
  metrics::Counter cq_overflows;  // times the completion queue overflowed (io_uring)
  metrics::Counter submit_errors;  // submissions the kernel refused (io_uring: out of memory)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const noexcept = 0;

  // One Accept completion per new connection (res = fd, close-on-exec) until one arrives with more == false.
  virtual void accept(int listen_fd, std::uint64_t tag) noexcept = 0;
  // Recv completions carrying a buffer until one arrives with more == false (res 0: the peer closed). With
  // multishot false, at most one buffer: its completion (or an error, or EOF) has more == false.
  virtual void recv(int fd, std::uint64_t tag, bool multishot = true) noexcept = 0;
  // One receive into the caller's buffer (a bulk transfer: a large body, where the ring's small buffers would
  // cost a completion per 2 KiB): one Recv completion, more == false, has_buffer == false and data null (the
  // bytes are in buf, which stays the caller's until then). A backend without it takes one ring buffer
  // instead (has_buffer, data): the caller reads data when it is there.
  virtual void recv_into(int fd, std::uint64_t tag, char* buf, std::size_t len) noexcept {
    (void)buf, (void)len;
    recv(fd, tag, false);
  }
  // Sends from iov[0..n); one Send completion with the bytes sent or -errno. It may be short when the socket's
  // buffer filled: the caller sends the rest (each completion is progress, which send deadlines measure). iov
  // and msg (scratch the backend may use) stay untouched by the caller until then. Never raises SIGPIPE.
  virtual void send(int fd, std::uint64_t tag, const iovec* iov, unsigned n, msghdr* msg) noexcept = 0;
  // Connects a socket made with socket(2); one completion, 0 or -errno. addr stays valid until then.
  virtual void connect(int fd, const sockaddr* addr, socklen_t len, std::uint64_t tag) noexcept = 0;
  // Cancels the armed operation with this tag on fd: a connect that hangs, or a receive that should stop
  // (backpressure). It completes with -ECANCELED (a receive: more == false), or with its result if it finished
  // first; a receive may still deliver buffers before its end.
  virtual void cancel(int fd, std::uint64_t tag) noexcept = 0;
  // Returns a receive buffer once its bytes are parsed or copied.
  virtual void recycle(std::uint16_t buffer_id) noexcept = 0;
  // how: SHUT_WR after a final response (the peer sees EOF, reads go on), SHUT_RDWR to end the connection.
  // With SHUT_RDWR each armed operation completes (a receive with res 0 and more == false, a send with
  // what it sent). close() only after that; closing first cancels nothing.
  virtual void shutdown(int fd, int how) noexcept = 0;
  virtual void close(int fd) noexcept = 0;
  // Submits what was armed, waits up to timeout_ms for completions, and fills out. Returns how many.
  virtual int wait(std::span<Completion> out, int timeout_ms) noexcept = 0;
  // Any thread: makes the owner's wait() return with a Wake completion.
  virtual void wake() noexcept = 0;
  virtual const BackendStats& stats() const noexcept = 0;
};

}  // namespace userd::io
