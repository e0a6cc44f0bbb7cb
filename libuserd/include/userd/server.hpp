// userd/server.hpp: the embedder's entry point: configure, route, start, stop.
// One loop thread per CPU by default, each with its own listener (SO_REUSEPORT), ring or epoll set, buffers and
// connections; nothing is shared between threads on the request path.
// Not here: signals (the embedding program decides what stops the server), flags (userd/config.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "userd/result.hpp"
#include "userd/router.hpp"
#include "userd/upstream.hpp"

namespace userd {

enum class BackendKind : std::uint8_t { Auto, IoUring, Epoll };

struct ServerConfig {
  std::string host = "0.0.0.0";  // numeric IPv4 or IPv6 address, or "localhost"
  std::uint16_t port = 8080;     // 0: the kernel picks one; Server::port() tells which
  unsigned threads = 0;          // 0: one per CPU the process may run on
  BackendKind backend = BackendKind::Auto;
  // Receive buffers per thread: every connection of the thread draws from them, and each returns at once after
  // its bytes are parsed or copied, so the count bounds bytes read per loop turn, not connections.
  unsigned recv_buffers = 256;
  // 2 KiB holds any ordinary request head; it also bounds what a multishot receive lands for one client before a
  // backpressure pause takes effect (the kernel hands over up to 32 buffers in one go): 64 KiB, not 128.
  unsigned recv_buffer_size = 2048;
  std::size_t max_head = 8 * 1024;    // request line + headers; beyond: 431
  std::size_t max_target = 8 * 1024;  // request target; beyond: 414
  std::size_t max_body = 1 << 20;     // beyond: 413
  unsigned linger_ms = 2000;          // after a final response, how long unread input is drained before closing
  // Deadlines (checked every 100 ms): a request head must complete within header_timeout_ms of its first
  // byte, a body within body_timeout_ms of its head (else 408 and close); a connection with nothing to do is
  // closed after idle_timeout_ms.
  unsigned header_timeout_ms = 10'000;
  unsigned body_timeout_ms = 30'000;
  unsigned idle_timeout_ms = 60'000;
  // Output that makes no progress for send_timeout_ms closes the connection (a client that stopped reading;
  // nginx's send_timeout). A request whose handler has not answered within handler_timeout_ms is answered 503
  // with a JSON body, and its Responder becomes a no-op.
  unsigned send_timeout_ms = 30'000;
  unsigned handler_timeout_ms = 30'000;
  // Connections per thread; beyond it new ones are accepted and closed at once, so existing ones keep their
  // descriptors and buffers.
  unsigned max_conns = 10'000;
  // stop(): how long requests in flight (including ones waiting on an upstream) may take to finish.
  unsigned drain_timeout_ms = 10'000;
  // Servers handlers may fetch from, by index (Request::fetch). Names are resolved once, in start().
  std::vector<UpstreamConfig> upstreams;
  // Listening sockets already open (socket activation: LISTEN_FDS). When given, nothing is bound; threads take
  // them in turn, sharing one when there are fewer sockets than threads.
  std::vector<int> listen_fds;
  // Access log: one line per request ("time peer method target status bytes seconds"), appended to a
  // per-thread buffer and written to this descriptor on the loop's 100 ms tick (or at 64 KiB), never per
  // request. -1: off. The server does not close it.
  int access_log_fd = -1;
  // Where the server's few log lines go (the io_uring fallback): one line each, no newline. Default: stderr.
  std::function<void(std::string_view)> log;
};

// What this machine's kernel offers libuserd: io_uring features and opcodes, or why io_uring is unavailable.
std::string describe_backends();

class Server {
 public:
  Server(ServerConfig config, Router router);
  ~Server();  // stops and joins
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every thread's listener and starts the loops. On failure nothing keeps running. With BackendKind::Auto
  // a refused io_uring is logged once and epoll serves; with IoUring it fails with Errc::Unsupported.
  Result<void> start();
  std::uint16_t port() const noexcept;
  std::string_view backend() const noexcept;  // "io_uring" or "epoll", after start()
  unsigned threads() const noexcept;
  // Prometheus text exposition (format 0.0.4) of every thread's counters, summed now. Any thread; it reads the
  // counters without locks, so the request path never waits for it.
  std::string metrics_text() const;
  // Any thread; returns at once. Graceful: the listeners close at once (new connections are refused), idle
  // connections close, requests in flight finish (answered with Connection: close) for up to
  // drain_timeout_ms, then the loops end. wait() joins them.
  void stop() noexcept;
  // Joins the loops. Responders and Streams still held elsewhere then answer false, until the Server is
  // destroyed: join the threads that hold them before that.
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace userd
