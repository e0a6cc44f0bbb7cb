// server/compression.hpp: which responses are compressed, and with what. Static bodies named in
// ServerConfig::compress are compressed once at start, at the codings' best levels, and shared read-only by every
// loop; other static bodies once per loop, on first use, into a bounded cache; dynamic bodies and streams per
// response, with encoders the loop keeps.
// Not here: the codings themselves (http/compress.hpp), the bytes on the wire (the sessions).
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/compress.hpp"
#include "libuserd/http/response_writer.hpp"
#include "userd/responder.hpp"
#include "userd/server.hpp"

namespace userd::server {

// A static body with its compressed forms; an empty form is one no smaller than the body, never sent.
struct CompressedBody {
  const char* data = nullptr;
  std::size_t size = 0;
  std::array<std::string, http::kCodings> coded{};
  std::array<bool, http::kCodings> done{};
};

// Built by start(), read-only while the loops run.
struct CompressShared {
  std::vector<http::Coding> order;  // offered, in the server's order of preference
  std::size_t min_size = 1024;
  std::vector<CompressedBody> statics;  // sorted by data
};
// ServerConfig::compress checked and its static bodies compressed: one line saying what is wrong otherwise.
std::unique_ptr<CompressShared> make_compress_shared(const CompressConfig& cfg, std::string& why);

// What a response goes out as: its coding, whether it says Vary: Accept-Encoding, and its (coded) body.
struct Coded {
  http::Coding coding = http::Coding::Identity;
  bool vary = false;
  std::string_view body{};
  bool body_static = false;
};

class LoopCompression;

// A stream's encoder, lent by the loop; given back when this goes.
class StreamEncoder {
 public:
  StreamEncoder() noexcept = default;
  StreamEncoder(LoopCompression* owner, std::unique_ptr<http::Encoder> e) noexcept : owner_(owner), enc_(std::move(e)) {}
  StreamEncoder(StreamEncoder&& o) noexcept : owner_(o.owner_), enc_(std::move(o.enc_)) {}
  StreamEncoder& operator=(StreamEncoder&& o) noexcept {
    if (this != &o) {
      release();
      owner_ = o.owner_;
      enc_ = std::move(o.enc_);
    }
    return *this;
  }
  ~StreamEncoder() { release(); }
  http::Encoder* get() const noexcept { return enc_.get(); }
  explicit operator bool() const noexcept { return enc_ != nullptr; }
  void release() noexcept;

 private:
  LoopCompression* owner_ = nullptr;
  std::unique_ptr<http::Encoder> enc_;
};

class LoopCompression {
 public:
  // Streams compressing at once on one loop; beyond, a stream goes out uncompressed. Each holds one encoder
  // (http::Encoder::state_bytes for Effort::Stream: docs/operations.md gives the figures).
  static constexpr unsigned kMaxStreams = 16;
  // Static bodies compressed on first use per loop (those start() did not): this many, this many bytes coded.
  static constexpr std::size_t kLazyEntries = 64, kLazyBytes = 16u << 20;
  // A body coded on the loop (per response, or into the per-loop cache) blocks the loop while it is coded: about
  // 40 ms per MiB of JSON at br 5 or gzip 6, 8 ms at zstd 3. A larger one goes out as it is, so one answer never
  // stalls every other client of the loop for long. (start() codes static_bodies of any size.)
  static constexpr std::size_t kMaxOnLoop = 1u << 20;

  explicit LoopCompression(const CompressShared& shared) noexcept : shared_(&shared) {}

  // What the client accepts, read while its request's headers are at hand.
  http::Coding accepted(std::span<const Header> headers) const noexcept {
    return http::negotiate(headers, shared_->order);
  }
  // r with its headers checked: identity, or a coded body (in a cache, or in scratch(): valid until the next
  // plan or stream write; trim() once it is copied).
  Coded plan(const Response& r, const http::HeaderCheck& check, http::Coding accepted, bool head_only);
  // A stream's head: whether it says Vary, and its encoder (none: it goes out as written).
  StreamEncoder stream(const Response& head, const http::HeaderCheck& check, http::Coding accepted, bool head_only,
                       bool& vary);
  // Where plan() and a stream's writes code into; trim() gives it back once something larger than any body
  // plan() codes (a stream's large write) made it large, so a steady load keeps it and allocates nothing.
  core::ByteBuffer& scratch() noexcept { return scratch_; }
  void trim() noexcept {
    if (scratch_.capacity() > 2 * kMaxOnLoop) scratch_.release();
  }

 private:
  friend class StreamEncoder;
  bool eligible(const Response& r, const http::HeaderCheck& check) const noexcept;
  const std::string* static_form(std::string_view body, http::Coding c);
  void give_back(std::unique_ptr<http::Encoder> e) noexcept;

  const CompressShared* shared_;
  std::array<std::unique_ptr<http::Encoder>, http::kCodings> once_{};  // dynamic bodies, reset after each
  // By address, each entry where it was made: a coded form is sent from where it lives, and a short one lives
  // inside its std::string, which a vector's insert would move.
  std::vector<std::unique_ptr<CompressedBody>> lazy_;
  std::size_t lazy_bytes_ = 0;
  std::array<std::vector<std::unique_ptr<http::Encoder>>, http::kCodings> spare_{};
  unsigned streams_ = 0;
  core::ByteBuffer scratch_;
};

}  // namespace userd::server
