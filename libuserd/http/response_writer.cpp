// http/response_writer.cpp: response heads by plain appends; the status line comes from a table.
#include "libuserd/http/response_writer.hpp"

#include <charconv>

#include "libuserd/http/parser.hpp"

namespace userd::http {
namespace {

// Headers the writer owns: never copied from the extra headers.
bool server_owned(std::string_view name) noexcept {
  if (name.size() < 4) return false;
  switch (name[0] | 0x20) {
    case 'c': return iequals(name, "content-length") || iequals(name, "connection");
    case 'd': return iequals(name, "date");
    case 't': return iequals(name, "transfer-encoding");
    default: return false;
  }
}

}  // namespace

bool weakened_etag(const Header& h) noexcept {
  return h.name.size() == 4 && iequals(h.name, "etag") && !h.value.empty() && h.value[0] == '"';
}

HeaderCheck check_headers(std::span<const Header> headers, std::string_view content_type,
                          std::optional<std::uint64_t> body_length) noexcept {
  HeaderCheck out;
  auto refuse = [&](std::string_view why) {
    out.ok = false;
    out.why = why;
    return out;
  };
  if (!is_field_value(content_type)) return refuse("control byte in content_type");
  for (const Header& h : headers) {
    if (!is_token(h.name)) return refuse("header name is not a token");
    if (!is_field_value(h.value)) return refuse("control byte in a header value");
    if (h.name.size() < 4) continue;
    const char first = char(h.name[0] | 0x20);
    if (first == 'c' && iequals(h.name, "content-length")) {
      if (!body_length) return refuse("content-length on a stream");
      std::uint64_t n = 0;
      auto [end, ec] = std::from_chars(h.value.data(), h.value.data() + h.value.size(), n);
      if (ec != std::errc() || end != h.value.data() + h.value.size() || n != body_length)
        return refuse("content-length differs from the body");
    } else if (first == 't' && iequals(h.name, "transfer-encoding")) {
      return refuse("transfer-encoding is the server's to choose");
    } else if (first == 'c' && iequals(h.name, "connection")) {
      for_each_token(h.value, [&](std::string_view t) { out.close = out.close || iequals(t, "close"); });
    } else if (first == 'c' && iequals(h.name, "content-type")) {
      out.has_content_type = true;
      out.content_type = h.value;
    } else if (first == 'c' && iequals(h.name, "content-encoding")) {
      out.has_content_encoding = true;
    } else if (first == 'c' && iequals(h.name, "cache-control")) {
      for_each_token(h.value, [&](std::string_view t) { out.no_transform = out.no_transform || iequals(t, "no-transform"); });
    }
  }
  return out;
}

bool trailers_ok(std::span<const Header> trailers) noexcept {
  static constexpr std::string_view kForbidden[] = {
      "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade", "te",
      "trailer", "host", "content-type", "content-encoding", "content-range", "cache-control", "expires", "date",
      "location", "retry-after", "vary", "set-cookie", "authorization", "www-authenticate", "proxy-authenticate",
      "proxy-authorization", "age", "warning", "max-forwards", "expect", "range", "if-match", "if-none-match",
      "if-modified-since", "if-unmodified-since", "if-range"};
  if (trailers.size() > kMaxTrailerFields) return false;
  std::size_t bytes = 0;
  for (const Header& h : trailers) {
    bytes += h.name.size() + h.value.size();
    if (bytes > kMaxTrailerBytes || !is_token(h.name) || !is_field_value(h.value)) return false;
    for (std::string_view f : kForbidden)
      if (iequals(h.name, f)) return false;
  }
  return true;
}

std::string_view reason_phrase(int status) noexcept {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
  }
}

void write_response_head(core::ByteBuffer& out, const ResponseHead& r) {
  const int status = (r.status >= 100 && r.status <= 999) ? r.status : 500;
  char line[16] = {'H', 'T', 'T', 'P', '/', '1', '.', '1', ' ', char('0' + status / 100),
                   char('0' + status / 10 % 10), char('0' + status % 10), ' '};
  out.append(line, 13);
  out.append(reason_phrase(status));
  out.append("\r\n");
  if (!r.content_type.empty() && status != 204) {  // 204 has no content to describe (RFC 9110 15.3.5)
    out.append("Content-Type: ");
    out.append(r.content_type);
    out.append("\r\n");
  }
  for (const Header& h : r.headers) {
    if (server_owned(h.name)) continue;
    out.append(h.name);
    out.append(": ");
    if (!r.content_encoding.empty() && weakened_etag(h)) out.append("W/");
    out.append(h.value);
    out.append("\r\n");
  }
  if (!r.content_encoding.empty()) {
    out.append("Content-Encoding: ");
    out.append(r.content_encoding);
    out.append("\r\n");
  }
  if (r.vary_accept_encoding) out.append("Vary: Accept-Encoding\r\n");
  out.append("Date: ");
  out.append(r.date);
  out.append("\r\n");
  if (status_has_body(status) && r.framing == BodyFraming::Chunked) {
    out.append("Transfer-Encoding: chunked\r\n");
  } else if (status_has_body(status) && r.framing == BodyFraming::Length) {
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, r.content_length);
    (void)ec;
    out.append("Content-Length: ");
    out.append(digits, std::size_t(end - digits));
    out.append("\r\n");
  }
  if (r.connection == ConnectionHeader::Close) out.append("Connection: close\r\n");
  else if (r.connection == ConnectionHeader::KeepAlive) out.append("Connection: keep-alive\r\n");
  out.append("\r\n");
}

std::size_t write_error_response(core::ByteBuffer& out, int status, std::string_view message, std::string_view date,
                          ConnectionHeader connection, bool head_only, std::span<const Header> extra) {
  constexpr std::string_view kOpen = "{\"error\":\"", kClose = "\"}";
  ResponseHead head;
  head.status = status;
  head.content_type = "application/json";
  head.content_length = kOpen.size() + message.size() + kClose.size();
  head.headers = extra;
  head.date = date;
  head.connection = connection;
  write_response_head(out, head);
  if (head_only) return 0;
  out.append(kOpen);
  out.append(message);
  out.append(kClose);
  return head.content_length;
}

}  // namespace userd::http
