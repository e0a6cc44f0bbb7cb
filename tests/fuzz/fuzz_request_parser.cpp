// tests/fuzz/fuzz_request_parser.cpp: the request parser on arbitrary bytes, whole and split at a byte the input
// chooses. A split may only delay a verdict, never change it: Done must consume the same bytes, Bad stay Bad.
// A parsed head's Accept-Encoding lines then go through negotiation, which must pick an offered coding or none.
#include <cstdint>
#include <cstdlib>

#include "libuserd/http/compress.hpp"
#include "libuserd/http/parser.hpp"

using namespace userd::http;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  RequestHead whole;
  const ParseResult w = parse_request({p, size}, 0, whole);
  if (w.status == ParseStatus::Done) {
    if (w.consumed > size) std::abort();
    for (std::size_t i = 0; i < whole.header_count; ++i) {  // views stay inside the input
      const auto& h = whole.headers[i];
      if (h.name.data() < p || h.value.data() + h.value.size() > p + size) std::abort();
    }
    static constexpr Coding kOffered[] = {Coding::Zstd, Coding::Gzip};
    const Coding c = negotiate({whole.headers.data(), whole.header_count}, kOffered);
    if (c != Coding::Identity && c != Coding::Zstd && c != Coding::Gzip) std::abort();
  }
  if (size < 2) return 0;
  const std::size_t split = data[0] % size;
  RequestHead part;
  if (parse_request({p, split}, 0, part).status != ParseStatus::NeedMore) return 0;
  const ParseResult s = parse_request({p, size}, split, part);
  if (s.status == ParseStatus::Done && (w.status != ParseStatus::Done || s.consumed != w.consumed)) std::abort();
  if (s.status == ParseStatus::Bad && w.status != ParseStatus::Bad) std::abort();
  return 0;
}
