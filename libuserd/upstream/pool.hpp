// upstream/pool.hpp: one loop thread's HTTP/1.1 client for one upstream: a bounded set of keep-alive
// connections on the thread's own Backend, and a queue for requests that find them all busy.
// Every connection keeps a receive armed, so an idle one the upstream closed is noticed at once. A request
// whose reused connection dies before any response byte is retried once on a fresh connection (GET is
// idempotent). Nothing here allocates per request once the connections' buffers have grown.
// Not here: what the caller does with the answer (the handler's UpstreamDone).
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/chunked.hpp"
#include "libuserd/http/parser.hpp"
#include "libuserd/io/backend.hpp"
#include "libuserd/io/tag.hpp"
#include "libuserd/metrics/metrics.hpp"
#include "userd/upstream.hpp"

namespace userd::upstream {

// An upstream whose address is resolved (Server::start does it once).
struct Target {
  UpstreamConfig cfg;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string host_header;  // "host:port"
};

// Written by the pool's thread, read by a metrics scrape from any.
struct PoolStats {
  metrics::Counter ok;
  std::array<metrics::Counter, 7> errors;  // by UpstreamError
  metrics::Counter retries;
  metrics::Counter connects;
  metrics::Counter open;  // connections not Free
};

class Pool {
 public:
  // index: this pool's place in the worker's list, carried in completion tags. now_ms: the loop's clock.
  Pool(const Target& target, std::uint16_t index, io::Backend& backend, const std::uint64_t& now_ms);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // False when the request cannot even be queued: the caller answers the client itself.
  bool fetch(std::string_view path, Responder res, UpstreamDone done, void* user) noexcept;
  void on_completion(const io::Completion& c) noexcept;
  // Expires exchanges and queued requests past their deadline.
  void tick() noexcept;
  // The backend is gone (the worker is being destroyed): close sockets directly.
  void teardown() noexcept;

  const PoolStats& stats() const noexcept { return stats_; }

 private:
  struct Job {
    Responder res{nullptr, 0, 0, 0};
    UpstreamDone done = nullptr;
    void* user = nullptr;
    std::size_t path_off = 0, path_len = 0;  // in paths_ while queued
    std::uint64_t deadline = 0;
    bool retried = false;
  };
  enum class State : std::uint8_t { Free, Connecting, Idle, Busy, Closing };
  struct Conn {
    int fd = -1;
    std::uint16_t gen = 0;
    State state = State::Free;
    bool connect_inflight = false, recv_armed = false, send_inflight = false;
    bool reused = false;     // finished an exchange before: its death on first use earns a retry
    bool got_bytes = false;  // this exchange has received something
    Job job;
    std::size_t path_len = 0;  // the path sits at out[4, 4 + path_len)
    core::ByteBuffer out;
    iovec iov{};
    msghdr msg{};
    core::ByteBuffer in;  // the response; capacity always leaves kUpstreamBodyPadding after the bytes
    http::ParsedResponse head;
    http::ChunkedDecoder chunked;
    bool head_done = false;
    std::size_t head_prev = 0, head_len = 0, body_have = 0, raw_off = 0;
  };

  std::uint64_t tag_for(io::Op op, std::uint32_t i) const noexcept;
  void start(std::uint32_t i, const Job& job, std::string_view path) noexcept;
  void open(std::uint32_t i, const Job& job, std::string_view path) noexcept;
  void dispatch(const Job& job, std::string_view path) noexcept;
  void pump() noexcept;
  bool enqueue(const Job& job, std::string_view path, bool front) noexcept;
  void parse(std::uint32_t i) noexcept;
  void complete(std::uint32_t i, std::size_t total) noexcept;
  void fail(std::uint32_t i, UpstreamError e) noexcept;
  void deliver(const Job& job, const UpstreamReply& r) noexcept;
  void retry_or_fail(std::uint32_t i, UpstreamError e) noexcept;
  void close(std::uint32_t i) noexcept;
  void maybe_release(std::uint32_t i) noexcept;

  const Target& target_;
  std::uint16_t index_;
  io::Backend& backend_;
  const std::uint64_t& now_ms_;
  std::vector<Conn> conns_;
  std::vector<std::uint32_t> free_, idle_;
  std::vector<Job> queue_;  // a ring: head_, count_
  std::size_t head_ = 0, count_ = 0;
  core::ByteBuffer paths_;  // queued requests' paths; emptied whenever the queue is
  PoolStats stats_;
};

}  // namespace userd::upstream
