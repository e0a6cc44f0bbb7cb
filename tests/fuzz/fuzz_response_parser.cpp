// tests/fuzz/fuzz_response_parser.cpp: the upstream response parser on arbitrary bytes, whole and split.
#include <cstdint>
#include <cstdlib>

#include "libuserd/http/parser.hpp"

using namespace userd::http;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  ParsedResponse whole;
  const ParseResult w = parse_response({p, size}, 0, whole);
  if (w.status == ParseStatus::Done) {
    if (w.consumed > size || whole.status < 100 || whole.status > 999) std::abort();
    if (int(whole.chunked) + int(whole.until_close) + int(whole.has_content_length) > 1) std::abort();
  }
  if (size < 2) return 0;
  const std::size_t split = data[0] % size;
  ParsedResponse part;
  if (parse_response({p, split}, 0, part).status != ParseStatus::NeedMore) return 0;
  const ParseResult s = parse_response({p, size}, split, part);
  if (s.status == ParseStatus::Done && (w.status != ParseStatus::Done || s.consumed != w.consumed)) std::abort();
  return 0;
}
