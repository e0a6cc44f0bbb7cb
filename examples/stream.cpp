// examples/stream.cpp: an NDJSON stream with backpressure. GET /numbers?count=N answers N lines {"n":i}, written
// while the client keeps up: write() says false once 64 KiB is queued, and on_writable() resumes the producer
// when the output has drained, so a slow reader costs no memory. GET /ticks?count=N writes one line every 10 ms
// from a thread of its own (writes from any thread).
// usage: stream [HOST:PORT] [io_uring|epoll]      (public headers only; prints "listening on HOST:PORT")
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve.hpp"
#include "userd/server.hpp"

namespace {

struct Numbers {
  userd::Stream out;
  unsigned long next = 0, count = 0;
  std::string line;

  // Writes until the client falls behind, then asks to be called again once it has caught up.
  static void pump(const std::shared_ptr<Numbers>& self) {
    Numbers& s = *self;
    for (; s.next < s.count; ++s.next) {
      s.line = "{\"n\":" + std::to_string(s.next) + "}\n";
      if (!s.out.write(s.line)) {  // over the high-water mark (or the client left: then nothing calls back)
        s.out.on_writable([self] { pump(self); });
        return;
      }
    }
    s.out.end();
  }
};

}  // namespace

int main(int argc, char** argv) {
  const userd::ServerConfig cfg = example::config(argc, argv, "127.0.0.1:8084");

  // Ticker threads hold Streams, so they are joined before the server goes; none starts once stopping is set.
  std::mutex tickers_mutex;
  std::vector<std::thread> tickers;
  bool stopping = false;
  userd::Router router;
  router.get("/numbers", [](const userd::Request& req, userd::Responder res) {
    auto s = std::make_shared<Numbers>();
    s->count = std::strtoul(std::string(req.query_param("count")).c_str(), nullptr, 10);
    userd::Response head;
    head.content_type = "application/x-ndjson";
    s->out = res.stream(head);
    Numbers::pump(s);
  });
  router.get("/ticks", [&](const userd::Request& req, userd::Responder res) {
    const unsigned long count = std::strtoul(std::string(req.query_param("count")).c_str(), nullptr, 10);
    std::lock_guard<std::mutex> lock(tickers_mutex);
    if (stopping) {
      userd::Response r;
      r.status = 503;
      res.send(r);
      return;
    }
    userd::Response head;
    head.content_type = "application/x-ndjson";
    userd::Stream s = res.stream(head);
    tickers.emplace_back([s, count] {
      for (unsigned long i = 0; i < count; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (!s.write("{\"tick\":" + std::to_string(i) + "}\n")) return;  // the client left, or the server stops
      }
      s.end();
    });
  });

  userd::Server server(cfg, std::move(router));
  const int code = example::serve("stream", server, cfg, [&] {
    std::lock_guard<std::mutex> lock(tickers_mutex);
    stopping = true;
  });
  for (auto& t : tickers) t.join();  // the server is still there: their last writes answer false
  return code;
}
