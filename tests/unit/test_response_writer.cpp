// tests/unit/test_response_writer.cpp: response heads byte for byte.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "libuserd/http/date.hpp"
#include "libuserd/http/response_writer.hpp"

using namespace userd;
using namespace userd::http;

namespace {
std::string str(const core::ByteBuffer& b) { return {b.data(), b.size()}; }
}  // namespace

TEST_CASE("response writer puts status, type, extra headers, date and length in order") {
  core::ByteBuffer out;
  const Header extra[] = {{"Engine", "userd/io_uring"}, {"Location", "/v1/user"}};
  ResponseHead h;
  h.status = 200;
  h.content_type = "application/json";
  h.content_length = 3696;
  h.headers = extra;
  h.date = "Sat, 28 Nov 2026 13:38:41 GMT";
  write_response_head(out, h);
  CHECK(str(out) ==
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nEngine: userd/io_uring\r\nLocation: /v1/user\r\n"
        "Date: Sat, 28 Nov 2026 13:38:41 GMT\r\nContent-Length: 3696\r\n\r\n");
}

TEST_CASE("response writer says close or keep-alive when asked, and omits the length where no body may be") {
  core::ByteBuffer out;
  ResponseHead h;
  h.status = 204;
  h.content_type = "application/json";  // a default type: 204 has no content to describe
  h.date = "D";
  h.connection = ConnectionHeader::Close;
  write_response_head(out, h);
  CHECK(str(out) == "HTTP/1.1 204 No Content\r\nDate: D\r\nConnection: close\r\n\r\n");
  h.content_type = {};
  out.clear();
  h.status = 200;
  h.connection = ConnectionHeader::KeepAlive;
  write_response_head(out, h);
  CHECK(str(out) == "HTTP/1.1 200 OK\r\nDate: D\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
}

TEST_CASE("error responses carry a short JSON body, or only its length for HEAD") {
  core::ByteBuffer out;
  const Header allow{"Allow", "GET, HEAD"};
  CHECK(write_error_response(out, 405, "method not allowed", "D", ConnectionHeader::None, false, {&allow, 1}) == 30);
  CHECK(str(out) ==
        "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nAllow: GET, HEAD\r\nDate: D\r\n"
        "Content-Length: 30\r\n\r\n{\"error\":\"method not allowed\"}");
  out.clear();
  CHECK(write_error_response(out, 404, "not found", "D", ConnectionHeader::None, true) == 0);
  CHECK(str(out) == "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nDate: D\r\nContent-Length: 21\r\n\r\n");
}

TEST_CASE("date renders IMF-fixdate in English whatever the second") {
  DateCache d;
  d.update(784111777);  // RFC 9110's example
  CHECK(d.value() == "Sun, 06 Nov 1994 08:49:37 GMT");
  d.update(1795873121);
  CHECK(d.value() == "Sat, 28 Nov 2026 13:38:41 GMT");
}

TEST_CASE("unknown statuses still get a valid status line") {
  core::ByteBuffer out;
  ResponseHead h;
  h.status = 299;
  h.date = "D";
  write_response_head(out, h);
  CHECK(str(out).substr(0, 17) == "HTTP/1.1 299 Stat");
}

TEST_CASE("trailers: valid fields pass; forbidden names, bad bytes and too many or too large are refused") {
  using userd::Header;
  const Header ok[] = {{"x-checksum", "abc"}, {"Server-Timing", "db;dur=53"}};
  CHECK(userd::http::trailers_ok(ok));
  CHECK(userd::http::trailers_ok({}));
  for (const char* name : {"Content-Length", "transfer-encoding", "host", "Content-Type", "connection", "te",
                           "trailer", "authorization", "set-cookie", "cache-control"}) {
    const Header bad[] = {{name, "1"}};
    CHECK_MESSAGE(!userd::http::trailers_ok(bad), name);
  }
  const Header split[] = {{"x-a", "1\r\nx-b: 2"}};
  CHECK(!userd::http::trailers_ok(split));
  const Header space[] = {{"x a", "1"}};
  CHECK(!userd::http::trailers_ok(space));
  std::vector<Header> many(userd::http::kMaxTrailerFields + 1, Header{"x-a", "1"});
  CHECK(!userd::http::trailers_ok(many));
  many.resize(userd::http::kMaxTrailerFields);
  CHECK(userd::http::trailers_ok(many));
  const std::string big(userd::http::kMaxTrailerBytes, 'v');
  const Header large[] = {{"x-a", big}};
  CHECK(!userd::http::trailers_ok(large));
}
