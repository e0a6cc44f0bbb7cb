// tests/unit/test_chunked.cpp: the chunked decoder, fed whole and then one byte at a time, in place.
#include <doctest/doctest.h>

#include <string>

#include "libuserd/http/chunked.hpp"

using namespace userd::http;

namespace {
struct Decoded {
  ChunkStatus status;
  std::string body;
  std::size_t consumed;
};
Decoded whole(std::string in, std::uint64_t max = 1 << 20) {
  ChunkedDecoder d(max);
  ChunkStep s = d.decode(in.data(), in.size(), in.data());  // in place, as the connection does it
  return {s.status, in.substr(0, s.produced), s.consumed};
}
Decoded bytewise(const std::string& in, std::uint64_t max = 1 << 20) {
  ChunkedDecoder d(max);
  std::string body;
  std::size_t consumed = 0;
  for (char c : in) {
    char out[1];
    ChunkStep s = d.decode(&c, 1, out);
    body.append(out, s.produced);
    consumed += s.consumed;
    if (s.status != ChunkStatus::NeedMore) return {s.status, body, consumed};
  }
  return {ChunkStatus::NeedMore, body, consumed};
}
}  // namespace

TEST_CASE("chunked decoder joins chunks, skips extensions and trailers, stops at the end") {
  const std::string in = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1";
  for (auto d : {whole(in), bytewise(in)}) {
    CHECK(d.status == ChunkStatus::Done);
    CHECK(d.body == "hello, world");
    CHECK(d.consumed == in.find("GET"));
  }
}

TEST_CASE("chunked decoder handles hex sizes of either case and an empty body") {
  CHECK(whole("A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n").body == "01234567890123456789");
  Decoded empty = whole("0\r\n\r\n");
  CHECK(empty.status == ChunkStatus::Done);
  CHECK(empty.body.empty());
}

TEST_CASE("chunked decoder needs more until the final CRLF") {
  const std::string in = "3\r\nabc\r\n0\r\n\r\n";
  for (std::size_t n = 0; n < in.size(); ++n) {
    ChunkedDecoder d;
    std::string copy = in.substr(0, n);
    CHECK(d.decode(copy.data(), copy.size(), copy.data()).status == ChunkStatus::NeedMore);
  }
}

TEST_CASE("chunked decoder rejects malformed framing") {
  for (const char* bad : {"x\r\n", "\r\n", "3\nabc\r\n", "3\r\nabcd\r\n", "3\r\nabc\n", "1234567890abcdef0\r\n",
                          "3 x\r\n", "0\r\n\rX", "0\r\n bad\r\n\r\n", "-1\r\n"}) {
    CHECK_MESSAGE(whole(bad).status == ChunkStatus::Bad, bad);
    CHECK_MESSAGE(bytewise(bad).status == ChunkStatus::Bad, bad);
  }
}

TEST_CASE("chunked decoder stops a body that grows past the limit") {
  CHECK(whole("8\r\n12345678\r\n0\r\n\r\n", 8).status == ChunkStatus::Done);
  CHECK(whole("8\r\n12345678\r\n1\r\nx\r\n0\r\n\r\n", 8).status == ChunkStatus::TooLarge);
  CHECK(whole("fffffffffffffff\r\n", 1 << 20).status == ChunkStatus::TooLarge);
}

TEST_CASE("chunked decoder bounds extensions and trailers") {
  CHECK(whole("1;" + std::string(9000, 'e') + "\r\nx\r\n0\r\n\r\n").status == ChunkStatus::Bad);
  CHECK(whole("0\r\nT: " + std::string(9000, 't') + "\r\n\r\n").status == ChunkStatus::Bad);
}

TEST_CASE("chunked decoder caps each size line, not their sum over a message; trailers as a whole") {
  // 1000 one-byte chunks, each with a 9-byte extension: 9,000 extension bytes in all, none of them long.
  std::string many;
  for (int i = 0; i < 1000; ++i) many += "1;ext=abcd\r\nx\r\n";
  many += "0\r\n";
  std::string few_trailers = many, many_trailers = many;
  for (int i = 0; i < 100; ++i) few_trailers += "T: 12345\r\n";
  few_trailers += "\r\n";
  for (auto d : {whole(few_trailers, 1 << 20), bytewise(few_trailers)}) {
    CHECK(d.status == ChunkStatus::Done);
    CHECK(d.body == std::string(1000, 'x'));
  }
  // Found by reading: the number of trailer lines had no bound, so a message could be made of framing alone.
  for (int i = 0; i < 1000; ++i) many_trailers += "T: 12345\r\n";  // 10,000 bytes of short lines
  many_trailers += "\r\n";
  CHECK(whole(many_trailers).status == ChunkStatus::Bad);
  CHECK(bytewise(many_trailers).status == ChunkStatus::Bad);
}

// Found by reading: leading zeros and whitespace after the size cost nothing, so one size line could be a MiB.
TEST_CASE("chunked decoder bounds a size line's leading zeros and whitespace") {
  CHECK(whole(std::string(1 << 20, '0') + "1\r\nx\r\n0\r\n\r\n").status == ChunkStatus::Bad);
  CHECK(bytewise(std::string(9000, '0') + "1\r\nx\r\n0\r\n\r\n").status == ChunkStatus::Bad);
  CHECK(whole("1" + std::string(9000, ' ') + ";e\r\nx\r\n0\r\n\r\n").status == ChunkStatus::Bad);
  CHECK(whole(std::string(8000, '0') + "1  ;e\r\nx\r\n0\r\n\r\n").status == ChunkStatus::Done);  // long, legal
}

TEST_CASE("chunked decoder takes leading zeros in a chunk size: 1*HEXDIG, only significant digits count") {
  for (auto d : {whole("00000000000000000003\r\nabc\r\n0000\r\n\r\n"), bytewise("00000000000000000003\r\nabc\r\n0000\r\n\r\n")}) {
    CHECK(d.status == ChunkStatus::Done);
    CHECK(d.body == "abc");
  }
  CHECK(whole("0000000000000000" "1234567890abcdef\r\n").status == ChunkStatus::Bad);  // 16 significant digits
  CHECK(whole("00\r\n\r\n").status == ChunkStatus::Done);
}
