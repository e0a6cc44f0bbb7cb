// http/chunked.hpp: incremental decoder for the chunked transfer coding (RFC 9112 7.1), in place.
// Feed it bytes as they come, in any splits; it writes the de-chunked data to dst, which may alias src because
// output never overtakes input. Strict: CRLF line ends only, at most 15 significant hex digits, a size line
// (leading zeros, whitespace and extensions included) of at most 8 KiB, and at most 8 KiB of trailers in all.
// Not here: the request head (parser.hpp), where bytes are kept (server/connection.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace userd::http {

enum class ChunkStatus : std::uint8_t { Done, NeedMore, Bad, TooLarge };

struct ChunkStep {
  ChunkStatus status;
  std::size_t consumed;  // input bytes used; on Done, the rest belongs to the next message
  std::size_t produced;  // bytes written to dst
};

class ChunkedDecoder {
 public:
  explicit ChunkedDecoder(std::uint64_t max_body = UINT64_MAX) noexcept : max_body_(max_body) {}
  void reset(std::uint64_t max_body) noexcept { *this = ChunkedDecoder(max_body); }
  ChunkStep decode(const char* src, std::size_t n, char* dst) noexcept;

 private:
  enum class State : std::uint8_t { Size, SizeWs, Ext, SizeLf, Data, DataCr, DataLf, LineStart, Trailer, TrailerLf, FinalLf, Done };
  State state_ = State::Size;
  std::uint8_t digits_ = 0;  // significant digits of the size
  bool seen_digit_ = false;
  std::uint64_t remaining_ = 0;  // chunk size being read, then data bytes left in the chunk
  std::uint64_t total_ = 0;
  std::uint64_t max_body_;
  std::uint32_t line_bytes_ = 0;  // bytes of the current size line, or of the trailer section so far
};

}  // namespace userd::http
