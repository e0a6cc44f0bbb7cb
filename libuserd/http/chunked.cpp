// http/chunked.cpp: the chunked decoder's byte-at-a-time state machine; data runs are moved in one memmove.
#include "libuserd/http/chunked.hpp"

#include <algorithm>
#include <cstring>

#include "libuserd/http/percent.hpp"

namespace userd::http {
namespace {
// Extensions and trailers are legal but nobody needs many: 8 KiB matches the request head limit. It bounds a
// whole size line (leading zeros, whitespace and extensions count) and the whole trailer section (every line of
// it), so that framing cannot be made to cost more than the data it frames without limit.
constexpr std::uint32_t kMaxLineBytes = 8 * 1024;

bool is_field_byte(char c) noexcept {
  auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}
}  // namespace

ChunkStep ChunkedDecoder::decode(const char* src, std::size_t n, char* dst) noexcept {
  std::size_t i = 0, out = 0;
  auto result = [&](ChunkStatus s) { return ChunkStep{s, i, out}; };
  while (i < n) {
    const char c = src[i];
    switch (state_) {
      case State::Size: {
        int v = hex_digit(c);
        if (++line_bytes_ > kMaxLineBytes) return result(ChunkStatus::Bad);
        if (v >= 0) {
          // chunk-size is 1*HEXDIG: leading zeros are allowed and cost nothing. 15 significant digits is 2^60:
          // far beyond any limit, and the shift cannot overflow.
          seen_digit_ = true;
          if (remaining_ != 0 || v != 0) ++digits_;
          if (digits_ > 15) return result(ChunkStatus::Bad);
          remaining_ = remaining_ << 4 | std::uint64_t(v);
          ++i;
          break;
        }
        if (!seen_digit_) return result(ChunkStatus::Bad);
        if (c == ' ' || c == '\t') state_ = State::SizeWs;
        else if (c == ';') state_ = State::Ext;
        else if (c == '\r') state_ = State::SizeLf;
        else return result(ChunkStatus::Bad);
        ++i;
        break;
      }
      case State::SizeWs:  // BWS before an extension: only more whitespace or ';' may follow
        if (++line_bytes_ > kMaxLineBytes) return result(ChunkStatus::Bad);
        if (c == ';') state_ = State::Ext;
        else if (c != ' ' && c != '\t') return result(ChunkStatus::Bad);
        ++i;
        break;
      case State::Ext:
        if (c == '\r') state_ = State::SizeLf;
        else if (!is_field_byte(c) || ++line_bytes_ > kMaxLineBytes) return result(ChunkStatus::Bad);
        ++i;
        break;
      case State::SizeLf:
        if (c != '\n') return result(ChunkStatus::Bad);
        ++i;
        digits_ = 0;
        seen_digit_ = false;
        line_bytes_ = 0;
        if (remaining_ == 0) {
          state_ = State::LineStart;  // line_bytes_ now counts the whole trailer section
          break;
        }
        if (remaining_ > max_body_ - total_) return result(ChunkStatus::TooLarge);
        total_ += remaining_;
        state_ = State::Data;
        break;
      case State::Data: {
        std::size_t take = std::size_t(std::min<std::uint64_t>(remaining_, n - i));
        if (dst + out != src + i) std::memmove(dst + out, src + i, take);
        out += take;
        i += take;
        remaining_ -= take;
        if (remaining_ == 0) state_ = State::DataCr;
        break;
      }
      case State::DataCr:
        if (c != '\r') return result(ChunkStatus::Bad);
        state_ = State::DataLf;
        ++i;
        break;
      case State::DataLf:
        if (c != '\n') return result(ChunkStatus::Bad);
        state_ = State::Size;
        ++i;
        break;
      case State::LineStart:  // after the last chunk: a trailer field, or the final CRLF
        if (++line_bytes_ > kMaxLineBytes) return result(ChunkStatus::Bad);
        if (c == '\r') state_ = State::FinalLf;
        else if (is_field_byte(c) && c != ' ' && c != '\t') state_ = State::Trailer;
        else return result(ChunkStatus::Bad);
        ++i;
        break;
      case State::Trailer:
        if (c == '\r') state_ = State::TrailerLf;
        else if (!is_field_byte(c)) return result(ChunkStatus::Bad);
        if (++line_bytes_ > kMaxLineBytes) return result(ChunkStatus::Bad);
        ++i;
        break;
      case State::TrailerLf:
        if (c != '\n') return result(ChunkStatus::Bad);
        state_ = State::LineStart;
        ++i;
        break;
      case State::FinalLf:
        if (c != '\n') return result(ChunkStatus::Bad);
        state_ = State::Done;
        ++i;
        return result(ChunkStatus::Done);
      case State::Done:
        return result(ChunkStatus::Done);
    }
  }
  return result(state_ == State::Done ? ChunkStatus::Done : ChunkStatus::NeedMore);
}

}  // namespace userd::http
