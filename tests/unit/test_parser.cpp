// tests/unit/test_parser.cpp: the request-head parser: every strictness rule, every split, pipelining.
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "libuserd/http/parser.hpp"

using namespace userd::http;

namespace {
ParseResult parse(std::string_view s, RequestHead& h) { return parse_request({s.data(), s.size()}, 0, h); }
int status_of(std::string_view s) {
  RequestHead h;
  ParseResult r = parse(s, h);
  if (r.status == ParseStatus::NeedMore) return 0;
  return r.status == ParseStatus::Done ? 200 : status_for(r.error);
}
}  // namespace

TEST_CASE("parser reads the request line, headers and framing of a typical request") {
  constexpr std::string_view req =
      "GET /v1/user?id=7 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/7.88\r\nAccept: */*  \r\n\r\n";
  RequestHead h;
  ParseResult r = parse(req, h);
  REQUIRE(r.status == ParseStatus::Done);
  CHECK(r.consumed == req.size());
  CHECK(h.method == "GET");
  CHECK(h.target == "/v1/user?id=7");
  CHECK(h.path == "/v1/user");
  CHECK(h.query == "id=7");
  CHECK(h.minor == 1);
  REQUIRE(h.header_count == 3);
  CHECK(h.headers[0].name == "Host");
  CHECK(h.headers[0].value == "localhost:8080");
  CHECK(h.headers[2].value == "*/*");  // trailing whitespace is not part of the value
  CHECK(h.keep_alive);
  CHECK_FALSE(h.chunked);
  CHECK_FALSE(h.has_content_length);
}

TEST_CASE("parser asks for more bytes on every strict prefix of a valid request") {
  constexpr std::string_view req = "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
  RequestHead head;
  for (std::size_t n = 0; n < req.size(); ++n)
    CHECK_MESSAGE(parse_request({req.data(), n}, 0, head).status == ParseStatus::NeedMore, "prefix " << n);
}

TEST_CASE("parser gives the same head whichever byte the input is split at") {
  constexpr std::string_view req = "GET /a/b HTTP/1.1\r\nHost: x\r\nX-Long: 0123456789\r\n\r\nGET /next";
  const std::size_t head_len = req.find("\r\n\r\n") + 4;
  for (std::size_t split = 1; split < head_len; ++split) {
    RequestHead h;
    REQUIRE(parse_request({req.data(), split}, 0, h).status == ParseStatus::NeedMore);
    ParseResult r = parse_request({req.data(), req.size()}, split, h);
    REQUIRE_MESSAGE(r.status == ParseStatus::Done, "split " << split);
    CHECK(r.consumed == head_len);
    CHECK(h.path == "/a/b");
    CHECK(h.headers[1].value == "0123456789");
  }
}

TEST_CASE("parser takes pipelined requests one at a time by the bytes each consumed") {
  std::string buf;
  for (int i = 0; i < 3; ++i) buf += "GET /r" + std::to_string(i) + " HTTP/1.1\r\nHost: h\r\n\r\n";
  std::size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    RequestHead h;
    ParseResult r = parse_request({buf.data() + pos, buf.size() - pos}, 0, h);
    REQUIRE(r.status == ParseStatus::Done);
    CHECK(h.path == "/r" + std::to_string(i));
    pos += r.consumed;
  }
  CHECK(pos == buf.size());
}

TEST_CASE("parser follows RFC 9112 on connection persistence") {
  RequestHead h;
  REQUIRE(parse("GET / HTTP/1.0\r\n\r\n", h).status == ParseStatus::Done);
  CHECK_FALSE(h.keep_alive);
  REQUIRE(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", h).status == ParseStatus::Done);
  CHECK(h.keep_alive);
  REQUIRE(parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", h).status == ParseStatus::Done);
  CHECK_FALSE(h.keep_alive);
  REQUIRE(parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n", h).status == ParseStatus::Done);
  CHECK(h.keep_alive);
}

TEST_CASE("parser reads body framing: Content-Length, chunked, Expect") {
  RequestHead h;
  REQUIRE(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n", h).status == ParseStatus::Done);
  CHECK(h.has_content_length);
  CHECK(h.content_length == 42);
  REQUIRE(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", h).status ==
          ParseStatus::Done);
  CHECK(h.content_length == 5);
  REQUIRE(parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n", h).status ==
          ParseStatus::Done);
  CHECK(h.chunked);
  CHECK(h.expect_continue);
}

TEST_CASE("parser accepts what RFC 9112 lets a server accept") {
  RequestHead h;
  CHECK(parse("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", h).status == ParseStatus::Done);  // leading empty lines
  CHECK(parse("GET / HTTP/1.1\nHost: a\n\n", h).status == ParseStatus::Done);                // bare LF line ends
  REQUIRE(parse("GET http://example.com:80/x/y?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", h).status ==
          ParseStatus::Done);
  CHECK(h.path == "/x/y");
  CHECK(h.query == "q=1");
  REQUIRE(parse("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", h).status == ParseStatus::Done);
  CHECK(h.path == "*");
  CHECK(parse("GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n", h).status == ParseStatus::Done);
  CHECK(h.headers[1].value.empty());
  CHECK(h.headers[2].value == "v");
  CHECK(parse("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\nX: \xff\r\n\r\n", h).status == ParseStatus::Done);
}

TEST_CASE("parser answers each malformed request with its status") {
  struct Case {
    const char* why;
    std::string req;
    int status;
  };
  const std::vector<Case> cases = {
      {"no method", " / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"bad method byte", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"two spaces", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"no target", "GET HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"control in target", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400},
      {"version garbage", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400},
      {"version too long", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400},
      {"no version", "GET /\r\nHost: a\r\n\r\n", 400},
      {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
      {"HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505},
      {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", 505},
      {"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
      {"missing host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400},
      {"duplicate host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
      {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
      {"no colon", "GET / HTTP/1.1\r\nHost a\r\n\r\n", 400},
      {"empty name", "GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", 400},
      {"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  b\r\n\r\n", 400},
      {"bare CR in value", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400},
      {"NUL in value", std::string("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 27), 400},
      {"bare CR after line", "GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n", 400},
      {"CL not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400},
      {"CL negative", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
      {"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400},
      {"CL differing", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
      {"CL huge", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
      {"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
      {"TE chunked, gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400},
      {"TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"TE empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400},
  };
  for (const Case& c : cases) CHECK_MESSAGE(status_of(c.req) == c.status, c.why);
}

TEST_CASE("parser enforces the size limits, on incomplete input too") {
  RequestHead h;
  std::string long_target = "GET /" + std::string(9000, 'a');
  CHECK(status_of(long_target) == 414);  // still reading the target: 414 at once
  CHECK(status_of(long_target + " HTTP/1.1\r\nHost: a\r\n\r\n") == 414);
  std::string exact = "GET /" + std::string(8100, 'a') + " HTTP/1.1\r\n";  // long, but the head still fits
  CHECK(status_of(exact) == 0);
  std::string big_head = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(9000, 'b') + "\r\n\r\n";
  CHECK(status_of(big_head) == 431);
  CHECK(status_of(big_head.substr(0, 8500)) == 431);  // no end in sight and already too large
  std::string many = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 150; ++i) many += "X:1\r\n";
  CHECK(status_of(many + "\r\n") == 431);
  std::string at_limit = "GET / HTTP/1.1\r\n";
  for (std::size_t i = 0; i < kMaxHeaders - 1; ++i) at_limit += "X:1\r\n";
  CHECK(status_of(at_limit + "Host: a\r\n\r\n") == 200);
}

TEST_CASE("parser stops at the first bad byte without waiting for the rest") {
  CHECK(status_of("\x16\x03\x01\x02") == 400);  // a TLS ClientHello
  CHECK(status_of("GET / HTTP/1.1\r\nHo st") == 400);
  CHECK(status_of("GET / HTTX") == 400);
}

TEST_CASE("header lookups ignore case") {
  CHECK(iequals("Content-Length", "content-length"));
  CHECK_FALSE(iequals("Content-Length", "content-lengtx"));
  CHECK_FALSE(iequals("Host", "Hos"));
}

TEST_CASE("response parser resolves framing: length, chunked, until close, no body") {
  ParsedResponse r;
  auto parse_resp = [&](std::string_view s) { return parse_response({s.data(), s.size()}, 0, r); };
  REQUIRE(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").status == ParseStatus::Done);
  CHECK((r.status == 200 && r.has_content_length && r.content_length == 12 && r.keep_alive && !r.until_close));
  REQUIRE(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").status == ParseStatus::Done);
  CHECK((r.chunked && !r.has_content_length && r.keep_alive));
  REQUIRE(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n").status == ParseStatus::Done);
  CHECK(r.chunked);
  REQUIRE(parse_resp("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n").status == ParseStatus::Done);
  CHECK((r.until_close && !r.keep_alive));
  REQUIRE(parse_resp("HTTP/1.1 204 No Content\r\n\r\n").status == ParseStatus::Done);
  CHECK((r.has_content_length && r.content_length == 0 && r.keep_alive));
  REQUIRE(parse_resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").status == ParseStatus::Done);
  CHECK_FALSE(r.keep_alive);
  REQUIRE(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n").status == ParseStatus::Done);
  CHECK_FALSE(r.keep_alive);
  REQUIRE(parse_resp("HTTP/1.1 502\r\nContent-Length: 0\r\n\r\n").status == ParseStatus::Done);  // no reason
  CHECK(r.status == 502);
}

TEST_CASE("response parser rejects what is not an HTTP/1.x response") {
  ParsedResponse r;
  for (std::string_view bad : {"HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
                               "ICY 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                               "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                               "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"})
    CHECK_MESSAGE(parse_response({bad.data(), bad.size()}, 0, r).status == ParseStatus::Bad, bad);
  // Framing a client cannot trust or a proxy must not forward (RFC 9112 6.3): each refused with its reason.
  const std::pair<std::string_view, HttpError> framing[] = {
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", HttpError::LengthAndChunked},
      {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", HttpError::LengthAndChunked},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", HttpError::UnsupportedCoding},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HttpError::UnsupportedCoding},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HttpError::UnsupportedCoding},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", HttpError::UnsupportedCoding}};
  for (auto [bad, why] : framing) {
    ParseResult pr = parse_response({bad.data(), bad.size()}, 0, r);
    CHECK_MESSAGE(pr.status == ParseStatus::Bad, bad);
    CHECK_MESSAGE(pr.error == why, bad);
  }
  constexpr std::string_view ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
  for (std::size_t n = 0; n < ok.size(); ++n)
    CHECK(parse_response({ok.data(), n}, 0, r).status == ParseStatus::NeedMore);
}
