// io/uring_backend.hpp: the io_uring Backend: one ring per thread, multishot accept, multishot recv from a
// registered provided-buffer ring, SEND/SENDMSG, one io_uring_enter per loop turn.
// The only file besides its .cpp that knows liburing exists. Create it on the thread that will use it
// (SINGLE_ISSUER binds the ring to its creator).
#pragma once

#include <memory>
#include <string>

#include "libuserd/io/backend.hpp"
#include "userd/result.hpp"

namespace userd::io {

struct UringConfig {
  unsigned sq_entries = 1024;
  // Multishot operations post completions without new submissions, so the CQ is sized for connections.
  unsigned cq_entries = 8192;
  unsigned buffers = 256;  // power of two, at most 32768 (Server::start passes ServerConfig::recv_buffers)
  unsigned buffer_size = 2048;
};

class UringBackend;
// Fails with Errc::Unsupported (sys = errno) when the kernel refuses io_uring or lacks what it needs.
Result<std::unique_ptr<Backend>> make_uring_backend(const UringConfig& cfg) noexcept;

// For tests: the next re-arm of b's wake read (an io_uring backend) is lost as when the SQ is full and the
// kernel refuses the batch: it completes with -EBUSY on the next wait(). Off the path of every other SQE.
void lose_next_wake_arm(Backend& b) noexcept;

// One line on what this kernel offers: the io_uring features and opcodes libuserd uses, or why it has none.
std::string describe_uring();

}  // namespace userd::io
