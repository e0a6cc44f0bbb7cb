// tests/fuzz/fuzz_chunked.cpp: the chunked decoder on arbitrary bytes, decoded in place in one call and byte by
// byte into another buffer: both must agree on the verdict, the bytes consumed and the body.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "libuserd/http/chunked.hpp"

using namespace userd::http;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<char> in(data, data + size);  // exact size: an over-read is caught
  ChunkedDecoder a(4096);
  const ChunkStep whole = a.decode(in.data(), in.size(), in.data());
  if (whole.produced > whole.consumed || whole.consumed > size) std::abort();
  const std::string body_a(in.data(), whole.produced);

  ChunkedDecoder b(4096);
  std::string body_b;
  std::size_t consumed = 0;
  ChunkStatus last = ChunkStatus::NeedMore;
  for (std::size_t i = 0; i < size && last == ChunkStatus::NeedMore; ++i) {
    char out;
    ChunkStep s = b.decode(reinterpret_cast<const char*>(data) + i, 1, &out);
    body_b.append(&out, s.produced);
    consumed += s.consumed;
    last = s.status;
  }
  if (last != whole.status) std::abort();
  if (last == ChunkStatus::Done && (consumed != whole.consumed || body_a != body_b)) std::abort();
  if (last == ChunkStatus::NeedMore && body_a != body_b) std::abort();
  return 0;
}
