// server/worker.hpp: one loop thread: its listener, its backend, its connection slots. Completions are drained
// in batches and routed by tag to the connection they belong to; nothing here is shared with other workers but
// the read-only router and the stop flag.
// Not here: HTTP (connection.hpp), choosing the backend or binding (server.cpp).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <span>
#include <vector>

#include "libuserd/io/backend.hpp"
#include "libuserd/server/compression.hpp"
#include "libuserd/server/connection.hpp"
#include "libuserd/server/proxy_header.hpp"
#include "libuserd/server/exchanges.hpp"
#include "libuserd/server/reply_target.hpp"
#include "libuserd/upstream/pool.hpp"
#include "userd/server.hpp"

namespace userd::server {

class Worker final : public ReplyTarget {
 public:
  // listen_fd serves plain HTTP, tls_fd HTTPS with tls; either may be -1.
  Worker(const ServerConfig& cfg, const Router& router, int listen_fd, int tls_fd, tls::Context tls,
         const std::vector<upstream::Target>& upstreams, const std::vector<Cidr>* proxy_from = nullptr,
         const CompressShared* compress = nullptr);
  ~Worker();

  // Runs on the worker's own thread: takes the backend made there, serves until stop().
  void run(std::unique_ptr<io::Backend> backend) noexcept;
  // run() is begin() and then turn() until it says false: one wait for completions and everything that follows
  // from them. Separate so that a test can drive a worker over a fake backend one turn at a time.
  void begin(std::unique_ptr<io::Backend> backend) noexcept;
  bool turn() noexcept;
  // Embedders' work on this loop. run_soon: from any thread, fn runs on the loop at its next turn. run_after:
  // on the loop thread, fn runs there after ms. Both bounded (kMaxSoon, kMaxTimers in worker.cpp): false, and fn
  // dropped, when full or once the loop has ended.
  bool run_soon(std::function<void()> fn) noexcept;
  bool run_after(std::uint64_t ms, std::function<void()> fn) noexcept override;
  void set_index(unsigned i) noexcept { ctx_.loop_index = i; }
  // For tests: stream data written off the loop that waits (bytes plus bookkeeping), slots free for reuse.
  std::size_t pending_stream_bytes() const noexcept { return pending_bytes_.load(std::memory_order_relaxed); }
  std::size_t free_slots() const noexcept { return free_.size(); }
  void stop() noexcept;  // any thread
  // Any thread: new TLS handshakes on this loop use ctx from its next turn; open connections keep theirs.
  void replace_tls(tls::Context ctx) noexcept;

  // Responder entry points. reply() from another thread copies the answer into the inbox and wakes the loop;
  // the rest are for the worker's thread.
  bool reply(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r) noexcept override;
  bool awaiting(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) const noexcept override;
  FetchRefused fetch(std::size_t upstream, const UpstreamRequest& request, Responder res,
                     const UpstreamCallback& done) noexcept override;
  bool stream_begin(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& head) noexcept override;
  bool stream_write(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, std::string_view data,
                    bool end, std::span<const Header> trailers) noexcept override;
  void stream_on_writable(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq,
                          std::function<void()> fn) override;
  bool body(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, BodyCall& c) override;
  bool stream_abort(std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept override;

  // For a metrics scrape from any thread (relaxed reads). Null until the loop has started.
  const metrics::ThreadMetrics& metrics() const noexcept { return metrics_; }
  const io::Backend* backend() const noexcept { return wakeable_.load(std::memory_order_acquire); }
  // Valid once backend() is non-null: the pools are made before it is published.
  const std::vector<std::unique_ptr<upstream::Pool>>& pools() const noexcept { return pools_; }

 private:
  Connection* find(std::uint32_t slot, std::uint16_t gen) const noexcept;
  void on_completion(const io::Completion& c) noexcept;
  void on_accept(const io::Completion& c) noexcept;
  void arm_accept_after(unsigned which, const io::Completion& c) noexcept;  // the accept ended: re-arm, or pause
  void after(Connection& conn) noexcept;  // frees the slot once the connection is released
  void arm_accept(unsigned which) noexcept;
  void arm_paused_accepts() noexcept;
  void adopt_tls() noexcept;
  void tick() noexcept;
  void refresh_clock() noexcept;
  void log_accept_pause(int err) noexcept;
  void begin_drain() noexcept;
  void flush_access_log() noexcept;
  enum class Kind : std::uint8_t { Reply, Begin, Write, End };
  bool post(Kind kind, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r);
  bool claim(Kind kind, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq) noexcept;
  struct Published {
    std::atomic<std::uint64_t>* token = nullptr;
    std::atomic<std::size_t>* pending = nullptr;
  };
  Published published(std::uint32_t slot) const noexcept;
  template <class F>
  bool answer(Kind kind, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq, const Response& r, F&& op) noexcept;
  void drain_inbox() noexcept;
  void run_continuations() noexcept;
  void run_timers() noexcept;
  int wait_timeout() const noexcept;

  // An answer sent from another thread, owning copies of what it points to.
  struct Posted {
    Kind kind;
    std::uint32_t slot;
    std::uint16_t gen;
    std::uint32_t seq;
    std::uint32_t conn_slot;  // its connection's slot, once the loop has seen it (stalled_)
    int status;
    std::string content_type, body, header_bytes;  // header names and values back to back
    std::vector<std::size_t> header_lengths;        // name, value, name, value...
    // A reply's static body is not copied (it outlives the server), and stays known as static, so that its
    // compressed forms are found; whether it may be compressed at all.
    std::string_view static_body{};
    bool compressible = true;
    void add_headers(std::span<const Header> headers) {  // copies them (throws std::bad_alloc)
      for (const Header& h : headers) {
        header_bytes.append(h.name).append(h.value);
        header_lengths.push_back(h.name.size());
        header_lengths.push_back(h.value.size());
      }
    }
  };
  static std::size_t pending_cost(std::size_t body) noexcept;
  void settle(const Posted& p) noexcept;
  void deliver(Posted& p, Connection& conn) noexcept;
  void deliver_stalled(Connection& conn) noexcept;
  void drop_stalled(std::uint32_t slot) noexcept;

  const ServerConfig& cfg_;
  // [0] plain HTTP, [1] TLS; the index is the accept tag's slot.
  struct Listener {
    int fd = -1;
    bool armed = false;
    bool paused = false;  // EMFILE/ENFILE: re-armed when a connection closes or on the next tick
    bool proxy = false;   // a PROXY protocol header comes first
  };
  bool source_allowed(int fd) const noexcept;
  const std::vector<Cidr>* proxy_from_;  // the Server's, parsed in start(); null or empty: any source
  Listener listeners_[2];
  tls::Context tls_;                             // what new TLS connections on this loop are made with
  std::atomic<SSL_CTX*> next_tls_{nullptr};      // a reload's context, adopted at the top of a loop turn
  std::unique_ptr<io::Backend> backend_;
  std::unique_ptr<LoopCompression> compress_;  // outlives the connections, whose streams borrow its encoders
  LoopContext ctx_;
  core::ByteBuffer access_log_;  // this thread's lines since the last flush
  std::time_t log_second_ = -1;
  metrics::ThreadMetrics metrics_;
  // Slots are created on demand and reused forever, so a steady number of connections allocates nothing.
  std::vector<std::unique_ptr<Connection>> conns_;
  std::vector<std::uint32_t> free_;
  const std::vector<upstream::Target>& targets_;
  std::vector<std::unique_ptr<upstream::Pool>> pools_;  // one per upstream, made in run() on this thread
  bool draining_ = false;       // stop() was called: no accepting, connections finish and close
  std::uint64_t drain_deadline_ = 0;
  std::array<io::Completion, 256> batch_;  // one wait's completions: enough to amortise it, small enough for cache
  std::vector<std::pair<std::uint32_t, std::uint16_t>> ready_now_, writable_now_;  // the round being run
  std::uint64_t last_tick_ms_ = 0;
  std::uint64_t accept_pauses_ = 0;
  std::uint64_t last_pause_log_s_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> ended_{false};  // the loop has ended: answers from other threads are refused
  std::atomic<io::Backend*> wakeable_{nullptr};  // for stop() from other threads; lives until ~Worker
  std::thread::id loop_thread_;
  std::mutex inbox_mutex_;        // taken only by threads that answer off the loop, and by the loop to drain
  std::vector<Posted> inbox_;     // guarded by inbox_mutex_
  std::vector<Posted> draining_inbox_;  // the loop's: swapped with inbox_ under the mutex
  std::vector<Posted> stalled_;  // stream data and ends whose connection could not take them yet, in order
  std::vector<Header> posted_headers_;
  std::vector<std::function<void()>> soon_, soon_now_;  // run_soon's: soon_ guarded by inbox_mutex_
  struct Timed {
    std::uint64_t due_ms;
    std::uint64_t order;  // among equal deadlines, first come first run
    std::function<void()> fn;
  };
  std::vector<Timed> timed_;  // a min-heap on (due_ms, order)
  std::uint64_t timed_order_ = 0;
  // Stream data written off the loop and not yet taken by its connection (inbox or stalled_), in bytes plus a
  // Posted each: the loop's total, and by slot. Bounded (kLoopPending, kStreamPending in worker.cpp).
  std::atomic<std::size_t> pending_bytes_{0};
  std::unique_ptr<std::atomic<std::size_t>[]> stream_pending_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> awaited_;  // by slot (max_conns of them): see LoopContext
  std::unique_ptr<ExchangeTable> exchanges_;               // HTTP/2's requests (null without HTTP/2)
};

}  // namespace userd::server
