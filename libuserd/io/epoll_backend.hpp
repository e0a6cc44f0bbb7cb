// io/epoll_backend.hpp: the epoll Backend: the same completions as io_uring, emulated with non-blocking
// sockets, for kernels and sandboxes that refuse io_uring (Docker's default seccomp profile,
// kernel.io_uring_disabled, kernels before 6.1). The only file besides its .cpp that includes <sys/epoll.h>.
#pragma once

#include <memory>

#include "libuserd/io/backend.hpp"
#include "userd/result.hpp"

namespace userd::io {

struct EpollConfig {
  unsigned buffers = 256;  // receive buffers; each goes back (recycle) as soon as its bytes are parsed
  unsigned buffer_size = 2048;
};

Result<std::unique_ptr<Backend>> make_epoll_backend(const EpollConfig& cfg) noexcept;

}  // namespace userd::io
