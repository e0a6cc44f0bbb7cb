// http/parser.cpp: the request-head parser: one pass over the bytes with character-class tables, strict where
// RFC 9112 lets a server choose (no obs-fold, no bare CR, no whitespace before ':'), lenient only where it says
// MAY (a bare LF ends a line; empty lines before the request line are skipped).
#include "libuserd/http/parser.hpp"

#include <algorithm>
#include <cstring>

namespace userd::http {
namespace {

struct CharTable {
  bool v[256] = {};
  constexpr bool operator[](char c) const { return v[static_cast<unsigned char>(c)]; }
};

// RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
// / DIGIT / ALPHA
constexpr CharTable make_tchar() {
  CharTable t;
  for (int c = '0'; c <= '9'; ++c) t.v[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t.v[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t.v[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t.v[static_cast<unsigned char>(c)] = true;
  return t;
}
// Request target: visible ASCII (RFC 3986 characters and the ones clients send unescaped), plus obs-text bytes
// that some clients send raw in paths. No controls, no space.
constexpr CharTable make_target() {
  CharTable t;
  for (int c = 0x21; c <= 0xff; ++c) t.v[c] = c != 0x7f;
  return t;
}
// RFC 9110 5.5: field-value bytes = VCHAR / SP / HTAB / obs-text. NUL, CR, LF and other controls are not.
constexpr CharTable make_field() {
  CharTable t;
  for (int c = 0x20; c <= 0xff; ++c) t.v[c] = c != 0x7f;
  t.v[static_cast<unsigned char>('\t')] = true;
  return t;
}
constexpr CharTable kTchar = make_tchar();
constexpr CharTable kTarget = make_target();
constexpr CharTable kField = make_field();

constexpr char lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? char(c + 32) : c; }

ParseResult more() noexcept { return {ParseStatus::NeedMore, HttpError::None, 0}; }
ParseResult bad(HttpError e) noexcept { return {ParseStatus::Bad, e, 0}; }

// A complete head contains its blank line: "\n\r\n" or "\n\n".
bool has_head_end(const char* p, std::size_t n) noexcept {
  const char* end = p + n;
  while (true) {
    const char* lf = static_cast<const char*>(std::memchr(p, '\n', end - p));
    if (!lf || lf + 1 >= end) return false;
    if (lf[1] == '\n' || (lf[1] == '\r' && lf + 2 < end && lf[2] == '\n')) return true;
    p = lf + 1;
  }
}

// A head that trickles in is parsed again only once its end has arrived: with prev_len bytes seen before
// (and no error in them), the new bytes must bring the blank line. An oversized head is parsed at once, so
// its limit error is reported.
bool still_incomplete(const char* p, std::size_t n, std::size_t prev_len, const Limits& limits) noexcept {
  if (prev_len == 0 || n > limits.max_head) return false;
  const std::size_t from = prev_len >= 3 ? prev_len - 3 : 0;
  return !has_head_end(p + from, n - from);
}

enum class LineEnd : std::uint8_t { Ok, More, Bad };
// At p[i], CRLF ends the line, and so does a bare LF (RFC 9112 2.2 lets a recipient accept it); i moves past.
LineEnd end_line(const char* p, std::size_t n, std::size_t& i) noexcept {
  if (i == n) return LineEnd::More;
  if (p[i] == '\n') {
    ++i;
    return LineEnd::Ok;
  }
  if (p[i] != '\r') return LineEnd::Bad;
  if (i + 1 == n) return LineEnd::More;
  if (p[i + 1] != '\n') return LineEnd::Bad;
  i += 2;
  return LineEnd::Ok;
}

bool parse_length(std::string_view v, std::uint64_t& out) noexcept {
  // 18 digits stay below 2^63: no overflow check needed, and nothing we accept comes near.
  if (v.empty() || v.size() > 18) return false;
  std::uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + std::uint64_t(c - '0');
  }
  out = n;
  return true;
}

void split_target(RequestHead& h) noexcept {
  std::string_view t = h.target;
  if (!t.empty() && t.front() != '/' && t != "*") {
    // absolute-form (RFC 9112 3.2.2): the path starts after the authority.
    std::size_t scheme = t.find("://");
    if (scheme != std::string_view::npos) {
      std::size_t slash = t.find_first_of("/?", scheme + 3);
      t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
    }
  }
  std::size_t q = t.find('?');
  h.path = t.substr(0, q);
  h.query = q == std::string_view::npos ? std::string_view() : t.substr(q + 1);
  if (h.path.empty()) h.path = "/";
}

// Header fields up to and including the blank line, from p[i]. Shared by requests and responses.
ParseResult parse_fields(const char* p, std::size_t n, std::size_t& i, std::span<Header> out, std::uint16_t& count,
                         const Limits& limits) noexcept {
  auto need_more = [&]() { return n > limits.max_head ? bad(HttpError::HeadTooLarge) : more(); };
  while (true) {
    if (i > limits.max_head) return bad(HttpError::HeadTooLarge);
    if (i == n) return need_more();
    if (p[i] == '\r' || p[i] == '\n') {  // the blank line
      LineEnd e = end_line(p, n, i);
      if (e == LineEnd::Ok) break;
      return e == LineEnd::More ? need_more() : bad(HttpError::BadHeader);
    }
    const std::size_t name_start = i;
    while (i < n && kTchar[p[i]]) ++i;
    if (i == n) return need_more();
    // Covers obs-fold (a line starting with SP/HTAB) and whitespace before the colon: both 400 (RFC 9112 5).
    if (i == name_start || p[i] != ':') return bad(HttpError::BadHeader);
    std::string_view name{p + name_start, i - name_start};
    ++i;
    while (i < n && (p[i] == ' ' || p[i] == '\t')) ++i;
    const std::size_t value_start = i;
    while (i < n && kField[p[i]]) ++i;
    const std::size_t value_end = i;
    if (LineEnd e = end_line(p, n, i); e != LineEnd::Ok)
      return e == LineEnd::More ? need_more() : bad(HttpError::BadHeader);
    if (count == out.size()) return bad(HttpError::TooManyHeaders);
    out[count++] = {name, trim_ows({p + value_start, value_end - value_start})};
  }
  if (i > limits.max_head) return bad(HttpError::HeadTooLarge);
  return {ParseStatus::Done, HttpError::None, std::uint32_t(i)};
}

// Reads framing and connection semantics once the header lines are known to be well formed.
HttpError interpret_headers(RequestHead& h) noexcept {
  int hosts = 0;
  bool te = false, te_chunked_last = false, te_other = false, te_chunked_twice = false;
  bool conn_close = false, conn_keep_alive = false;
  for (std::size_t k = 0; k < h.header_count; ++k) {
    const Header& f = h.headers[k];
    switch (f.name.size()) {
      case 4:
        if (iequals(f.name, "host")) ++hosts;
        break;
      case 6:
        if (iequals(f.name, "expect") && iequals(f.value, "100-continue")) h.expect_continue = true;
        break;
      case 10:
        if (iequals(f.name, "connection")) {
          for_each_token(f.value, [&](std::string_view t) {
            if (iequals(t, "close")) conn_close = true;
            else if (iequals(t, "keep-alive")) conn_keep_alive = true;
          });
        }
        break;
      case 14:
        if (iequals(f.name, "content-length")) {
          std::uint64_t n;
          if (!parse_length(f.value, n)) return HttpError::BadContentLength;
          if (h.has_content_length && n != h.content_length) return HttpError::BadContentLength;
          h.content_length = n;
          h.has_content_length = true;
        }
        break;
      case 17:
        if (iequals(f.name, "transfer-encoding")) {
          te = true;
          for_each_token(f.value, [&](std::string_view t) {
            if (iequals(t, "chunked")) {
              if (te_chunked_last) te_chunked_twice = true;
              te_chunked_last = true;
            } else {
              if (te_chunked_last) te_chunked_twice = true;  // a coding after chunked: framing unknowable
              te_other = true;
            }
          });
        }
        break;
    }
  }
  if (h.minor == 1 && hosts == 0) return HttpError::MissingHost;
  if (hosts > 1) return HttpError::DuplicateHost;
  if (te) {
    // RFC 9112 6.1: both present is a smuggling attempt; TE in 1.0 or a broken list is faulty framing.
    if (h.has_content_length) return HttpError::LengthAndChunked;
    if (h.minor == 0 || te_chunked_twice || (!te_chunked_last && !te_other)) return HttpError::BadFraming;
    if (te_other) return HttpError::UnsupportedCoding;
    h.chunked = true;
  }
  h.keep_alive = h.minor == 1 ? !conn_close : (conn_keep_alive && !conn_close);
  return HttpError::None;
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

ParseResult parse_request(std::span<const char> buf, std::size_t prev_len, RequestHead& h,
                          const Limits& limits) noexcept {
  const char* p = buf.data();
  const std::size_t n = buf.size();
  if (still_incomplete(p, n, prev_len, limits)) return more();
  h.header_count = 0;
  h.content_length = 0;
  h.has_content_length = h.chunked = h.expect_continue = false;
  h.keep_alive = true;
  auto need_more = [&]() { return n > limits.max_head ? bad(HttpError::HeadTooLarge) : more(); };

  std::size_t i = 0;
  while (i < n && (p[i] == '\r' || p[i] == '\n')) {  // empty lines before the request line are skipped
    if (LineEnd e = end_line(p, n, i); e != LineEnd::Ok)
      return e == LineEnd::More ? need_more() : bad(HttpError::BadRequestLine);
  }

  const std::size_t method_start = i;
  while (i < n && kTchar[p[i]]) ++i;
  if (i == n) return need_more();
  if (i == method_start || p[i] != ' ') return bad(HttpError::BadRequestLine);
  h.method = {p + method_start, i - method_start};
  ++i;

  const std::size_t target_start = i;
  while (i < n && kTarget[p[i]]) {
    ++i;
    if (i - target_start > limits.max_target) return bad(HttpError::UriTooLong);
  }
  if (i == n) return need_more();
  if (i == target_start || p[i] != ' ') return bad(HttpError::BadRequestLine);
  h.target = {p + target_start, i - target_start};
  ++i;

  constexpr std::string_view kHttp = "HTTP/";
  const std::size_t have = std::min<std::size_t>(n - i, 8);
  for (std::size_t k = 0; k < have && k < 5; ++k)
    if (p[i + k] != kHttp[k]) return bad(HttpError::BadVersion);
  if (have < 8) {
    if ((have > 5 && (p[i + 5] < '0' || p[i + 5] > '9')) || (have > 6 && p[i + 6] != '.')) return bad(HttpError::BadVersion);
    return need_more();
  }
  const char major = p[i + 5], minor = p[i + 7];
  if (major < '0' || major > '9' || p[i + 6] != '.' || minor < '0' || minor > '9') return bad(HttpError::BadVersion);
  i += 8;
  if (LineEnd e = end_line(p, n, i); e != LineEnd::Ok)
    return e == LineEnd::More ? need_more() : bad(HttpError::BadVersion);
  if (major != '1' || minor > '1') return bad(HttpError::VersionNotSupported);
  h.minor = std::uint8_t(minor - '0');

  if (ParseResult r = parse_fields(p, n, i, h.headers, h.header_count, limits); r.status != ParseStatus::Done)
    return r;
  split_target(h);
  if (HttpError e = interpret_headers(h); e != HttpError::None) return bad(e);
  return {ParseStatus::Done, HttpError::None, std::uint32_t(i)};
}

ParseResult parse_response(std::span<const char> buf, std::size_t prev_len, ParsedResponse& h,
                           const Limits& limits) noexcept {
  const char* p = buf.data();
  const std::size_t n = buf.size();
  if (still_incomplete(p, n, prev_len, limits)) return more();
  // Field by field: the header array (3.2 KB) is bounded by header_count and need not be zeroed for every response.
  h.status = 0;
  h.minor = 1;
  h.header_count = 0;
  h.content_length = 0;
  h.has_content_length = h.chunked = h.until_close = false;
  h.keep_alive = true;
  auto need_more = [&]() { return n > limits.max_head ? bad(HttpError::HeadTooLarge) : more(); };
  // "HTTP/1.x 200 " then a reason of field bytes (RFC 9112 4).
  constexpr std::string_view kHttp = "HTTP/1.";
  std::size_t i = 0;
  for (; i < kHttp.size(); ++i) {
    if (i == n) return need_more();
    if (p[i] != kHttp[i]) return bad(HttpError::BadVersion);
  }
  if (n < 13) return need_more();
  if ((p[7] != '0' && p[7] != '1') || p[8] != ' ') return bad(HttpError::BadVersion);
  h.minor = std::uint8_t(p[7] - '0');
  int status = 0;
  for (int k = 9; k < 12; ++k) {
    if (p[k] < '0' || p[k] > '9') return bad(HttpError::BadRequestLine);
    status = status * 10 + (p[k] - '0');
  }
  if (status < 100) return bad(HttpError::BadRequestLine);
  h.status = status;
  i = 12;
  if (p[i] == ' ') {
    ++i;
    while (i < n && kField[p[i]]) ++i;
  }
  if (LineEnd e = end_line(p, n, i); e != LineEnd::Ok)
    return e == LineEnd::More ? need_more() : bad(HttpError::BadRequestLine);
  ParseResult r = parse_fields(p, n, i, h.headers, h.header_count, limits);
  if (r.status != ParseStatus::Done) return r;

  bool te = false, conn_close = false, conn_keep_alive = false, chunked_only = true;
  unsigned codings = 0;
  for (std::size_t k = 0; k < h.header_count; ++k) {
    const Header& f = h.headers[k];
    if (iequals(f.name, "content-length")) {
      std::uint64_t v;
      if (!parse_length(f.value, v) || (h.has_content_length && v != h.content_length))
        return bad(HttpError::BadContentLength);
      h.content_length = v;
      h.has_content_length = true;
    } else if (iequals(f.name, "transfer-encoding")) {
      te = true;
      for_each_token(f.value, [&](std::string_view t) {
        ++codings;
        chunked_only = chunked_only && iequals(t, "chunked");
      });
    } else if (iequals(f.name, "connection")) {
      for_each_token(f.value, [&](std::string_view t) {
        if (iequals(t, "close")) conn_close = true;
        else if (iequals(t, "keep-alive")) conn_keep_alive = true;
      });
    }
  }
  // A client may refuse what it cannot frame or decode, and a proxy must not forward it as if it could:
  // Transfer-Encoding with Content-Length is an error (RFC 9112 6.3 point 3, a smuggling shape), and a coding
  // other than a single chunked (gzip, "gzip, chunked") would hand over encoded bytes as the body.
  if (te && h.has_content_length) return bad(HttpError::LengthAndChunked);
  if (te && (codings != 1 || !chunked_only)) return bad(HttpError::UnsupportedCoding);
  if (te) {
    h.chunked = true;
  } else if (!h.has_content_length) {
    h.until_close = status >= 200 && status != 204 && status != 304;
  }
  if (status < 200 || status == 204 || status == 304) {
    h.chunked = h.until_close = false;
    h.has_content_length = true;
    h.content_length = 0;
  }
  h.keep_alive = !h.until_close && (h.minor == 1 ? !conn_close : (conn_keep_alive && !conn_close));
  return {ParseStatus::Done, HttpError::None, std::uint32_t(i)};
}

int status_for(HttpError e) noexcept {
  switch (e) {
    case HttpError::UriTooLong: return 414;
    case HttpError::TooManyHeaders:
    case HttpError::HeadTooLarge: return 431;
    case HttpError::VersionNotSupported: return 505;
    case HttpError::UnsupportedCoding: return 501;
    case HttpError::BodyTooLarge: return 413;
    case HttpError::None: return 200;
    default: return 400;
  }
}

std::string_view describe(HttpError e) noexcept {
  switch (e) {
    case HttpError::None: return "ok";
    case HttpError::BadRequestLine: return "malformed request line";
    case HttpError::UriTooLong: return "request target too long";
    case HttpError::BadVersion: return "malformed http version";
    case HttpError::VersionNotSupported: return "http version not supported";
    case HttpError::BadHeader: return "malformed header";
    case HttpError::TooManyHeaders: return "too many headers";
    case HttpError::HeadTooLarge: return "request head too large";
    case HttpError::MissingHost: return "missing host header";
    case HttpError::DuplicateHost: return "duplicate host header";
    case HttpError::BadContentLength: return "invalid content-length";
    case HttpError::LengthAndChunked: return "content-length with transfer-encoding";
    case HttpError::BadFraming: return "invalid transfer-encoding";
    case HttpError::UnsupportedCoding: return "transfer-encoding not implemented";
    case HttpError::BodyTooLarge: return "request body too large";
    case HttpError::BadChunk: return "malformed chunked body";
  }
  return "bad request";
}

bool is_token(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (char c : s)
    if (!kTchar[c]) return false;
  return true;
}

bool is_field_value(std::string_view s) noexcept {
  for (char c : s)
    if (!kField[c]) return false;
  return true;
}

bool is_target(std::string_view s) noexcept {
  for (char c : s)
    if (!kTarget[c]) return false;
  return true;
}

}  // namespace userd::http
