// metrics/metrics.hpp: per-thread counters, summed when scraped. Each counter has one writer (its loop thread),
// which bumps it with a relaxed load and store: no lock and no read-modify-write on the request path. A scrape
// from another thread reads them relaxed: each value is exact, the set is not one instant.
// Not here: the text exposition (server.cpp builds it from these).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace userd::metrics {

class Counter {
 public:
  void add(std::uint64_t n = 1) noexcept { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void sub(std::uint64_t n = 1) noexcept { v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  std::uint64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

// Every status code registered with IANA for final responses gets a series of its own; an unregistered one is
// counted under its class ("2xx" ... "5xx"). Handlers send only 200-599 (the connection refuses the rest).
inline constexpr std::array kCodes = {
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400, 401,
    402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424,
    425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511};
inline constexpr std::size_t kCodeSlots = kCodes.size() + 4;  // then 2xx, 3xx, 4xx, 5xx
inline constexpr auto kCodeIndex = [] {
  std::array<std::uint8_t, 600> t{};
  for (int s = 0; s < 600; ++s) t[std::size_t(s)] = std::uint8_t(kCodes.size() + (s < 200 ? 0 : s / 100 - 2));
  for (std::size_t i = kCodes.size(); i-- > 0;) t[std::size_t(kCodes[i])] = std::uint8_t(i);
  return t;
}();
// One table look-up per request: the slot of status (its own, or its class's).
inline constexpr std::size_t code_index(int status) noexcept {
  return status >= 0 && status < 600 ? kCodeIndex[std::size_t(status)] : kCodeSlots - 1;
}
// The label of a slot: "404", or "4xx".
inline std::string code_label(std::size_t slot) {
  if (slot < kCodes.size()) return std::to_string(kCodes[slot]);
  return std::to_string(slot - kCodes.size() + 2) + "xx";
}

// Request duration buckets in microseconds (upper bounds), from a cache hit to a slow upstream.
inline constexpr std::array<std::uint64_t, 14> kBucketsUs = {50, 100, 250, 500, 1'000, 2'500, 5'000, 10'000,
                                                             25'000, 50'000, 100'000, 250'000, 1'000'000, 2'500'000};

inline constexpr std::array<const char*, 3> kProtocols = {"HTTP/1.0", "HTTP/1.1", "HTTP/2"};

struct ThreadMetrics {
  explicit ThreadMetrics(std::size_t routes) : requests((routes + 1) * kCodeSlots) {}
  // requests[route * kCodeSlots + code_index(status)]; the last route is "unmatched" (404)
  std::vector<Counter> requests;
  std::array<Counter, 3> by_protocol;  // HTTP/1.0, HTTP/1.1, HTTP/2 (kProtocols)
  Counter http2_connections;           // connections that became HTTP/2
  std::array<Counter, kBucketsUs.size() + 1> duration_buckets;  // not cumulative; the last is +Inf
  Counter duration_sum_us;
  Counter duration_count;
  Counter connections_open;
  Counter connections_accepted;
  Counter connections_refused;  // --max-conns
  Counter send_timeouts;        // connections closed because their output made no progress
  Counter handler_timeouts;     // requests answered 503 because their handler did not answer in time
  Counter recv_pauses;          // receives ended by backpressure
  Counter alloc_failures;       // connections closed because memory ran out
  Counter bad_responses;        // handler responses refused (CR/LF/NUL in a header, contradictory framing)
  Counter tls_handshakes;        // TLS handshakes completed
  Counter tls_resumed;           // of which resumed a session (a ticket)
  Counter tls_handshake_failures;  // TLS connections closed before their handshake completed (bad, stalled)
  Counter tls_handshakes_refused;  // TLS connections closed at accept: max_tls_handshakes were in progress
  Counter tls_record_failures;   // TLS connections closed after it: a bad record, a renegotiation attempt
  Counter proxy_header_failures;  // PROXY listener: closed on a bad, oversized, truncated or late header
  Counter proxy_refused;          // PROXY listener: closed at accept, the source not in proxy_from

  void record(std::size_t route, int status, std::uint64_t micros, std::size_t protocol = 1) noexcept {
    requests[route * kCodeSlots + code_index(status)].add();
    by_protocol[protocol].add();
    std::size_t b = 0;
    while (b < kBucketsUs.size() && micros > kBucketsUs[b]) ++b;
    duration_buckets[b].add();
    duration_sum_us.add(micros);
    duration_count.add();
  }
};

}  // namespace userd::metrics
