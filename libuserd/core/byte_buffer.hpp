// core/byte_buffer.hpp: a growable byte buffer that keeps its capacity, so a connection that reached its working
// size never allocates again. Unlike std::vector<char> it does not zero what it is about to overwrite.
// Not here: any policy on how large it may grow (the connection bounds it).
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>

namespace userd::core {

class ByteBuffer {
 public:
  char* data() noexcept { return data_.get(); }
  const char* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return cap_; }
  bool empty() const noexcept { return size_ == 0; }
  void clear() noexcept { size_ = 0; }

  // Room for n more bytes at end(); write them, then commit(n).
  char* prepare(std::size_t n) {
    if (cap_ - size_ < n) regrow(size_ + n);
    return data_.get() + size_;
  }
  void commit(std::size_t n) noexcept { size_ += n; }
  void append(const char* p, std::size_t n) {
    if (n == 0) return;  // an empty buffer has no memory to copy to, and memcpy must not see null
    std::memcpy(prepare(n), p, n);
    size_ += n;
  }
  void append(std::string_view s) { append(s.data(), s.size()); }
  // Drops the first n bytes, keeping the rest at the front.
  void consume(std::size_t n) noexcept {
    if (n < size_) std::memmove(data_.get(), data_.get() + n, size_ - n);
    size_ = n < size_ ? size_ - n : 0;
  }
  void resize_down(std::size_t n) noexcept { size_ = n < size_ ? n : size_; }
  // Gives the memory back (an idle connection should not pin a large buffer).
  void release() noexcept {
    data_.reset();
    size_ = cap_ = 0;
  }

 private:
  // Doubling up to 64 KiB; beyond, a quarter more than asked, in whole pages: a buffer that grew once for a
  // burst (pipelined input held back by backpressure) does not hold twice the burst.
  void regrow(std::size_t want) {
    std::size_t cap = cap_ ? cap_ : 256;
    while (cap < want && cap < kDoubleBelow) cap *= 2;
    if (cap < want) cap = (want + want / 4 + 4095) & ~std::size_t(4095);
    std::unique_ptr<char[]> d(new char[cap]);
    if (size_) std::memcpy(d.get(), data_.get(), size_);
    data_ = std::move(d);
    cap_ = cap;
  }
  static constexpr std::size_t kDoubleBelow = 64 * 1024;
  std::unique_ptr<char[]> data_;
  std::size_t size_ = 0;
  std::size_t cap_ = 0;
};

}  // namespace userd::core
