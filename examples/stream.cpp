// examples/stream.cpp: an NDJSON stream with backpressure. GET /numbers?count=N answers N lines {"n":i}, written
// while the client keeps up: write() says false once 64 KiB is queued, and on_writable() resumes the producer
// when the output has drained, so a slow reader costs no memory. GET /ticks?count=N writes one line every 10 ms
// from a thread of its own (writes from any thread).
// usage: stream [HOST:PORT] [io_uring|epoll]      (public headers only; prints "listening on HOST:PORT")
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
  std::string listen = argc > 1 ? argv[1] : "127.0.0.1:8084";
  const auto colon = listen.rfind(':');
  userd::ServerConfig cfg;
  cfg.host = listen.substr(0, colon);
  cfg.port = static_cast<std::uint16_t>(std::stoi(listen.substr(colon + 1)));
  cfg.threads = 1;
  if (argc > 2) cfg.backend = std::string(argv[2]) == "epoll" ? userd::BackendKind::Epoll : userd::BackendKind::IoUring;

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

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  userd::Server server(cfg, std::move(router));
  if (auto r = server.start(); !r) {
    std::fprintf(stderr, "stream: cannot start: %s\n", r.error().what);
    return 1;
  }
  std::fprintf(stderr, "stream: listening on %s:%u (%.*s)\n", cfg.host.c_str(), server.port(),
               int(server.backend().size()), server.backend().data());
  int sig;
  sigwait(&set, &sig);
  {
    std::lock_guard<std::mutex> lock(tickers_mutex);
    stopping = true;
  }
  server.stop();  // from here a ticker's write returns false, and it returns
  server.wait();  // the workers stay until `server` goes: the tickers may finish after this
  for (auto& t : tickers) t.join();
  return 0;
}
