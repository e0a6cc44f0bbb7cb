// examples/relay.cpp: a reverse proxy that never holds a whole body. Every request (GET, HEAD, PUT, POST, PATCH,
// DELETE, any path) goes to the upstream with its end-to-end headers; its body streams there as the client
// sends it, and the upstream's answer streams back as it arrives, with backpressure both ways: a slow upstream
// stops the reading of the client, a slow client stops the reading of the upstream. An upstream that fails
// before its head is a 502 (504 for a timeout) with a JSON body; one that fails midway cuts the client's answer
// (a reset), so that the client never takes a cut body for a whole one.
// usage: relay [HOST:PORT] [io_uring|epoll] UPSTREAM_HOST:PORT      (public headers only)
#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <string>

#include "serve.hpp"
#include "userd/server.hpp"

namespace {

constexpr std::uint64_t kMaxBody = std::uint64_t{64} << 30;  // per request; the server's max_body stays 1 MiB
constexpr std::size_t kMaxForwarded = 64;                     // headers a request or an answer carries on

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// Hop-by-hop fields (RFC 9110 7.6.1) and the framing, which each side writes for itself.
bool hop_by_hop(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                             "upgrade", "content-length", "host", "expect"})
    if (iequals(name, h)) return true;
  return false;
}

struct Forwarded {
  std::array<userd::Header, kMaxForwarded> list;
  std::size_t n = 0;
  std::string_view content_type = "application/octet-stream";
  // answer: Content-Type goes to the Stream's head by itself.
  void take(std::span<const userd::Header> from, bool answer) {
    for (const userd::Header& h : from) {
      if (answer && iequals(h.name, "content-type")) content_type = h.value;
      else if (!hop_by_hop(h.name) && n < list.size()) list[n++] = h;
    }
  }
  std::span<const userd::Header> headers() const { return {list.data(), n}; }
};

// The upstream's head: its body is piped to the client (abandoned when this returns if nobody took it).
void on_answer(userd::Responder res, const userd::UpstreamReply& up) {
  if (up.error != userd::UpstreamError::None) {
    res.send({.status = up.error == userd::UpstreamError::Timeout ? 504 : 502,
              .body = std::string("{\"error\":\"") + std::string(userd::describe(up.error)) + "\"}"});
    return;
  }
  Forwarded f;
  f.take(up.headers, true);
  up.stream.pipe(res.stream({.status = up.status, .content_type = f.content_type, .headers = f.headers()}));
}

void relay(const userd::Request& req, userd::Responder res) {
  Forwarded f;
  f.take(req.headers(), false);
  userd::UpstreamRequest up;
  up.method = req.method();
  up.target = req.target();
  up.headers = f.headers();
  up.body_from = req.body_reader();
  up.stream_response = true;
  // Its length when the client said it; an HTTP/1.1 request that did not has no body; anything else goes
  // chunked (HTTP/2 without content-length, HTTP/1.1 chunked).
  const std::string_view length = req.header("content-length");
  std::int64_t n = -1;
  if (!length.empty()) std::from_chars(length.data(), length.data() + length.size(), n);
  else if (req.protocol() != "HTTP/2" && req.header("transfer-encoding").empty()) n = 0;
  up.body_length = n;
  if (const userd::FetchResult r = req.fetch(0, up, res, &on_answer); !r)
    res.send({.status = 503, .body = std::string("{\"error\":\"") + std::string(userd::describe(r.refused)) + "\"}"});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: relay HOST:PORT io_uring|epoll UPSTREAM_HOST:PORT\n");
    return 2;
  }
  userd::ServerConfig cfg = example::config(argc, argv, "127.0.0.1:8080");
  const std::string upstream = argv[3];
  const auto colon = upstream.rfind(':');
  userd::UpstreamConfig to;
  to.host = upstream.substr(0, colon);
  to.port = static_cast<std::uint16_t>(std::stoi(upstream.substr(colon + 1)));
  to.timeout_ms = 10000;  // per wait: the head, then each next piece of the body
  cfg.upstreams.push_back(to);
  userd::Router router;
  for (const char* method : {"GET", "PUT", "POST", "PATCH", "DELETE"})
    router.route(method, "/{*path}", relay, {.stream_body = true, .max_body = kMaxBody});
  userd::Server server(cfg, std::move(router));
  return example::serve("relay", server, cfg);
}
