// server/exchanges.hpp: one loop's table of multiplexed exchanges (HTTP/2 streams a handler holds): each request
// gets its own published token and its own count of stream data waiting in the inbox, so that an answer from
// another thread is checked against that request, not against its connection. An HTTP/1.1 connection awaits one
// request at a time and keeps using its slot's token (LoopContext::awaited); a Responder names an entry here by
// a slot with kExchangeSlot set.
// Entries live in chunks made on demand and kept until the loop ends, so other threads can read an entry
// without a lock while the table grows; steady traffic reuses freed entries and allocates nothing.
// Not here: who checks the tokens (worker.cpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <new>

namespace userd::server {

// What a published token holds (LoopContext::awaited per slot, an exchange's here): the awaited request, or 0.
// The flags record what an answer has begun or finished, so that a second answer from any thread is refused
// before it is queued.
constexpr std::uint64_t awaited_token(std::uint16_t gen, std::uint32_t seq) noexcept {
  return 1ull << 63 | std::uint64_t(gen) << 32 | seq;
}
inline constexpr std::uint64_t kAwaitedStreaming = 1ull << 62;  // a Stream was begun: writes and end may follow
inline constexpr std::uint64_t kAwaitedAnswered = 1ull << 61;   // send() or end() is on its way: nothing more

// A stream begun on the loop: writes and the end from other threads may follow. Never undoes an end (a
// compare-and-swap from the bare token only).
inline void publish_streaming(std::atomic<std::uint64_t>& token, std::uint16_t gen, std::uint32_t seq) noexcept {
  std::uint64_t t = awaited_token(gen, seq);
  token.compare_exchange_strong(t, t | kAwaitedStreaming, std::memory_order_relaxed);
}

inline constexpr std::uint32_t kExchangeSlot = 1u << 31;

class ExchangeTable {
 public:
  struct Entry {
    std::atomic<std::uint64_t> token{0};  // as LoopContext::awaited's: 0 when nothing awaits an answer
    std::atomic<std::size_t> pending{0};  // stream data from other threads not yet taken (Worker::post)
    // The loop's own: whose request this is, and the free list.
    std::uint32_t conn_slot = 0;
    std::uint16_t conn_gen = 0;
    bool open = false;
    std::uint32_t next_free = 0;
  };
  struct Opened {
    std::uint32_t slot;  // what the Responder holds: kExchangeSlot | index
    std::uint32_t seq;   // unique on this loop (wrapping past 2^32 requests), so a reused entry's token differs
  };

  // capacity: the most exchanges that can be open at once (connections times streams each).
  explicit ExchangeTable(std::size_t capacity)
      : chunks_(new std::atomic<Entry*>[capacity / kChunk + 1]()), nchunks_(capacity / kChunk + 1) {}
  ~ExchangeTable() {
    for (std::size_t i = 0; i < nchunks_; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
  }
  ExchangeTable(const ExchangeTable&) = delete;
  ExchangeTable& operator=(const ExchangeTable&) = delete;

  // Loop thread. A new exchange for the connection (slot, gen), published with its token. Throws std::bad_alloc
  // when a chunk cannot be made; gives {0, 0} when full.
  Opened open(std::uint32_t conn_slot, std::uint16_t conn_gen) {
    if (free_ == kNone) grow();
    if (free_ == kNone) return {0, 0};
    const std::uint32_t i = free_;
    Entry& e = *at(i);
    free_ = e.next_free;
    e.conn_slot = conn_slot;
    e.conn_gen = conn_gen;
    e.open = true;
    ++open_count_;
    seq_ = seq_ + 1 ? seq_ + 1 : 1;  // 0 names no request
    e.token.store(awaited_token(conn_gen, seq_), std::memory_order_relaxed);
    return {kExchangeSlot | i, seq_};
  }
  // Loop thread: the request is answered (or gone): nothing from elsewhere is taken for it any more.
  void unpublish(std::uint32_t slot) noexcept {
    if (Entry* e = get(slot)) e->token.store(0, std::memory_order_relaxed);
  }
  // Loop thread: its stream has closed; the entry is reused. Data still in the inbox for it is settled against
  // the same entry later, so its pending count nets out; until then a new owner's bound includes it.
  void close(std::uint32_t slot) noexcept {
    Entry* e = get(slot);
    if (!e || !e->open) return;
    e->token.store(0, std::memory_order_relaxed);
    e->open = false;
    --open_count_;
    e->next_free = free_;
    free_ = slot & ~kExchangeSlot;
  }
  // Loop thread: the connection an open exchange belongs to.
  bool owner(std::uint32_t slot, std::uint32_t& conn_slot, std::uint16_t& conn_gen) const noexcept {
    const Entry* e = get(slot);
    if (!e || !e->open) return false;
    conn_slot = e->conn_slot;
    conn_gen = e->conn_gen;
    return true;
  }

  // Loop thread: exchanges open now (each stream a handler was given, until it closes).
  std::size_t open_count() const noexcept { return open_count_; }

  // Any thread: the entry a Responder's slot names, or null when it names none.
  Entry* get(std::uint32_t slot) const noexcept {
    if (!(slot & kExchangeSlot)) return nullptr;
    const std::uint32_t i = slot & ~kExchangeSlot;
    if (i / kChunk >= nchunks_) return nullptr;
    Entry* c = chunks_[i / kChunk].load(std::memory_order_acquire);
    return c ? c + i % kChunk : nullptr;
  }

 private:
  static constexpr std::uint32_t kChunk = 256, kNone = UINT32_MAX;
  Entry* at(std::uint32_t i) const noexcept { return chunks_[i / kChunk].load(std::memory_order_relaxed) + i % kChunk; }
  void grow() {
    if (made_ == nchunks_) return;
    Entry* c = new Entry[kChunk];
    const std::uint32_t base = std::uint32_t(made_) * kChunk;
    for (std::uint32_t k = kChunk; k-- > 0;) {
      c[k].next_free = free_;
      free_ = base + k;
    }
    chunks_[made_++].store(c, std::memory_order_release);
  }

  std::unique_ptr<std::atomic<Entry*>[]> chunks_;
  std::size_t nchunks_;
  std::size_t made_ = 0;
  std::uint32_t free_ = kNone;
  std::uint32_t seq_ = 0;
  std::size_t open_count_ = 0;
};

}  // namespace userd::server
