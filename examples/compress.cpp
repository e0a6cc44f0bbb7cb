// examples/compress.cpp: compressed answers (ServerConfig::compress). The server picks br, zstd or gzip from the
// client's Accept-Encoding; the handlers do nothing for it but say when a body must stay as it is.
//   GET /catalog          a 64 KiB JSON catalog, registered in static_bodies: compressed once, at start
//   GET /page             an HTML page sent with body_is_static but not registered: compressed on first use
//   GET /report?bytes=N   a JSON report made per request: compressed per response
//   GET /feed?lines=N     an NDJSON stream, compressed as it is written (each write flushed)
//   GET /small            a body under min_size; GET /logo.png an image: neither is compressed
//   GET /archive          gzip the handler made itself (its own Content-Encoding): sent as it is
//   GET /raw              Cache-Control: no-transform; GET /exact: Response::compressible = false
//   GET /versioned        an ETag, made weak when the body is compressed
//   GET /empty (204), GET /unchanged (304): no body to compress
// usage: compress [HOST:PORT] [io_uring|epoll]      (public headers only; prints "listening on HOST:PORT")
#include <zlib.h>

#include <charconv>
#include <memory>
#include <string>

#include "serve.hpp"
#include "userd/server.hpp"

namespace {

std::string catalog() {
  std::string s = "[";
  for (int i = 0; s.size() < 64 * 1024; ++i)
    s += "{\"sku\":" + std::to_string(100000 + i * 37) + ",\"title\":\"Item " + std::to_string(i) +
         "\",\"price\":" + std::to_string(i % 97) + ".99,\"tags\":[\"new\",\"sale\"]},";
  s.back() = ']';
  return s;
}

std::string page() {
  std::string s = "<!doctype html><html><head><title>Items</title></head><body><ul>";
  for (int i = 0; i < 400; ++i) s += "<li class=\"item\">Item number " + std::to_string(i) + "</li>";
  return s + "</ul></body></html>";
}

std::string gzipped(const std::string& in) {
  z_stream z{};
  deflateInit2(&z, 9, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, uLong(in.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = uInt(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = uInt(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

unsigned long number(const userd::Request& req, std::string_view name, unsigned long fallback, unsigned long max) {
  const std::string_view v = req.query_param(name);
  unsigned long n = fallback;
  if (!v.empty()) std::from_chars(v.data(), v.data() + v.size(), n);
  return n < max ? n : max;
}

struct Feed {
  userd::Stream out;
  unsigned long next = 0, lines = 0;
  std::string line;
  static void pump(const std::shared_ptr<Feed>& self) {
    Feed& f = *self;
    for (; f.next < f.lines; ++f.next) {
      f.line = "{\"event\":" + std::to_string(f.next) + ",\"kind\":\"tick\",\"detail\":\"nothing happened\"}\n";
      if (!f.out.write(f.line)) {
        f.out.on_writable([self] { pump(self); });
        return;
      }
    }
    f.out.end();
  }
};

}  // namespace

int main(int argc, char** argv) {
  // The bodies outlive the server: they are sent with body_is_static.
  static const std::string kCatalog = catalog(), kPage = page(), kArchive = gzipped(kCatalog);
  static const std::string kSmall = R"({"ok":true})", kLogo(8192, '\x89');

  userd::ServerConfig cfg = example::config(argc, argv, "127.0.0.1:8080");
  cfg.compress.enabled = true;
  cfg.compress.static_bodies = {kCatalog};

  userd::Router router;
  auto fixed = [](const std::string& body, std::string_view type) {
    return [&body, type](const userd::Request&, userd::Responder res) {
      userd::Response r;
      r.content_type = type;
      r.body = body;
      r.body_is_static = true;
      res.send(r);
    };
  };
  router.get("/catalog", fixed(kCatalog, "application/json"));
  router.get("/page", fixed(kPage, "text/html; charset=utf-8"));
  router.get("/small", fixed(kSmall, "application/json"));
  router.get("/logo.png", fixed(kLogo, "image/png"));
  router.get("/report", [](const userd::Request& req, userd::Responder res) {
    const unsigned long bytes = number(req, "bytes", 4096, 16u << 20);
    std::string body = "{\"rows\":[";
    for (unsigned long i = 0; body.size() + 40 < bytes; ++i) body += "{\"row\":" + std::to_string(i) + ",\"v\":\"x\"},";
    body += "{}]}";
    userd::Response r;
    r.body = body;  // copied (or compressed) before send() returns
    res.send(r);
  });
  router.get("/feed", [](const userd::Request& req, userd::Responder res) {
    auto f = std::make_shared<Feed>();
    f->lines = number(req, "lines", 100, 10'000'000);
    userd::Response head;
    head.content_type = "application/x-ndjson";
    f->out = res.stream(head);
    Feed::pump(f);
  });
  router.get("/archive", [](const userd::Request&, userd::Responder res) {
    static const userd::Header coded[] = {{"Content-Encoding", "gzip"}};
    userd::Response r;
    r.body = kArchive;
    r.body_is_static = true;
    r.headers = coded;
    res.send(r);
  });
  router.get("/raw", [](const userd::Request&, userd::Responder res) {
    static const userd::Header h[] = {{"Cache-Control", "no-transform"}};
    userd::Response r;
    r.body = kCatalog;
    r.body_is_static = true;
    r.headers = h;
    res.send(r);
  });
  router.get("/exact", [](const userd::Request&, userd::Responder res) {
    userd::Response r;
    r.body = kCatalog;
    r.body_is_static = true;
    r.compressible = false;
    res.send(r);
  });
  router.get("/versioned", [](const userd::Request&, userd::Responder res) {
    static const userd::Header h[] = {{"ETag", "\"v1\""}};
    userd::Response r;
    r.body = kCatalog;
    r.body_is_static = true;
    r.headers = h;
    res.send(r);
  });
  router.get("/empty", [](const userd::Request&, userd::Responder res) {
    userd::Response r;
    r.status = 204;
    r.body = kCatalog;  // dropped: 204 has no body
    res.send(r);
  });
  router.get("/unchanged", [](const userd::Request&, userd::Responder res) {
    userd::Response r;
    r.status = 304;
    res.send(r);
  });
  userd::Server server(cfg, std::move(router));
  return example::serve("compress", server, cfg);
}
