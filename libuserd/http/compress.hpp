// http/compress.hpp: content codings (RFC 9110 8.4): what a client's Accept-Encoding accepts, and encoders for
// br (libbrotli), zstd (libzstd) and gzip (zlib) that keep their state between bodies, so a loop that compressed
// once compresses again without allocating.
// Not here: which responses are compressed, and the caches of static bodies (server/compression.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "libuserd/core/byte_buffer.hpp"
#include "userd/request.hpp"

namespace userd::http {

enum class Coding : std::uint8_t { Identity = 0, Br = 1, Zstd = 2, Gzip = 3 };
inline constexpr std::size_t kCodings = 4;

std::string_view coding_name(Coding c) noexcept;  // "br", "zstd", "gzip"; "identity"
std::optional<Coding> parse_coding(std::string_view name) noexcept;  // one of those, case-insensitive

// The coding a response to these request headers gets, from the codings the server offers (in its order of
// preference), by every Accept-Encoding line's q-values (RFC 9110 12.5.3): the highest q above 0 wins, ties go
// to the server's order; "x-gzip" is gzip; "*" stands for every coding not listed; an element whose q does not
// parse is ignored. Identity when the client sent no Accept-Encoding, accepts none of the offered codings, or
// weights identity (listed, or through "*") strictly above the best of them. A client that refuses identity too
// ("identity;q=0") still gets identity when nothing else is acceptable: a 406 would help nobody.
Coding negotiate(std::span<const Header> headers, std::span<const Coding> offered) noexcept;

// Levels: a body compressed once and kept (a static body, at start: br 11, zstd 19, gzip 9), one compressed
// whole as it is sent (br 5, zstd 3, gzip 6), and a stream, whose encoder lives as long as the stream and so
// gets smaller windows (br 3 with 64 KiB, zstd 3 with 64 KiB, gzip 6 with 16 KiB).
enum class Effort : std::uint8_t { Best, Dynamic, Stream };

// One coding's compressor. A body is written through write() in pieces, each flushed so the client can decode
// what it has (a stream), or whole with finish; after the finish, reset() makes it ready for the next body and
// keeps its memory. state_bytes() says how much it holds.
class Encoder {
 public:
  Encoder(Coding c, Effort e);
  ~Encoder();
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  Coding coding() const noexcept { return coding_; }
  // Appends in's compressed bytes to out: flushed (all of in decodable from out), or the end of the body. False
  // when the library failed (out of memory): out then holds nothing usable and the encoder must be reset.
  bool write(std::string_view in, bool finish, core::ByteBuffer& out);
  void reset();
  std::size_t state_bytes() const noexcept;

 private:
  struct Impl;
  int window_bits() const noexcept { return effort_ == Effort::Stream ? 14 : 15; }
  int mem_level() const noexcept { return effort_ == Effort::Stream ? 7 : 8; }
  Coding coding_;
  Effort effort_;
  std::unique_ptr<Impl> impl_;
};

// in compressed whole into out (cleared first) with a one-off encoder; false on failure.
bool compress_whole(Coding c, Effort e, std::string_view in, core::ByteBuffer& out);

// Whether a media type is one compression helps: "text/*", JSON, JavaScript, XML, SVG, anything "+json" or "+xml",
// NDJSON, WebAssembly's and fonts' uncompressed forms. Parameters ("; charset=utf-8") are ignored.
bool compressible_type(std::string_view content_type) noexcept;

}  // namespace userd::http
