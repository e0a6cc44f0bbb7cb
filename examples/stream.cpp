// examples/stream.cpp: an NDJSON stream with backpressure. GET /numbers?count=N answers N lines {"n":i}, written
// while the client keeps up: write() says false once 64 KiB is queued, and on_writable() resumes the producer
// when the output has drained, so a slow reader costs no memory. GET /ticks?count=N writes one line every 10 ms
// from another thread (writes from any thread): one ticker thread for every such stream, at most 256 of them.
// With &trailers=1 either ends with a trailer field, x-lines: N (trailers after the body: HTTP/2's last HEADERS
// frame, HTTP/1.1's chunked trailer section). /ticks&size=B pads each line with spaces to B bytes (at most
// 64 KiB): a producer that outruns its client sooner.
// usage: stream [HOST:PORT] [io_uring|epoll]      (public headers only; prints "listening on HOST:PORT")
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve.hpp"
#include "userd/server.hpp"

namespace {

// The end of a stream: with its line count as a trailer when the client asked for one.
void finish(const userd::Stream& out, bool trailers, unsigned long lines) {
  if (!trailers) {
    out.end();
    return;
  }
  const std::string n = std::to_string(lines);
  const userd::Header t[] = {{"x-lines", n}};
  out.end(t);
}

struct Numbers {
  userd::Stream out;
  unsigned long next = 0, count = 0;
  bool trailers = false;
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
    finish(s.out, s.trailers, s.count);
  }
};

}  // namespace

// Every /ticks stream, written by one thread: a line to each every 10 ms. At most kMaxTicks streams at once (a
// 503 beyond), so a flood of requests costs a bounded list, not a thread each.
class Ticker {
 public:
  static constexpr std::size_t kMaxTicks = 256;
  Ticker() : thread_([this] { run(); }) {}
  ~Ticker() {  // before the server goes: its streams' last writes answer false
    {
      std::lock_guard<std::mutex> lock(m_);
      stopping_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  // Starts a stream on res, or answers 503 when kMaxTicks are running already.
  static constexpr std::size_t kMaxLine = 64 * 1024;
  void add(const userd::Responder& res, unsigned long count, bool trailers, std::size_t size) {
    std::lock_guard<std::mutex> lock(m_);
    if (stopping_ || ticks_.size() >= kMaxTicks) {
      userd::Response busy;
      busy.status = 503;
      busy.body = R"({"error":"too many streams"})";
      res.send(busy);
      return;
    }
    userd::Response head;
    head.content_type = "application/x-ndjson";
    const userd::Stream s = res.stream(head);
    if (s.alive()) ticks_.push_back({s, 0, count, trailers, std::min(size, kMaxLine)});  // not for HEAD: the head was the whole answer
  }

 private:
  struct Tick {
    userd::Stream out;
    unsigned long next, count;
    bool trailers;
    std::size_t size;
  };
  static std::string line(const Tick& t) {
    std::string l = "{\"tick\":" + std::to_string(t.next) + "}";
    if (t.size > l.size() + 1) l.resize(t.size - 1, ' ');
    return l + "\n";
  }
  void run() {
    std::unique_lock<std::mutex> lock(m_);
    while (!(stopping_ && ticks_.empty())) {
      cv_.wait_for(lock, std::chrono::milliseconds(10));
      for (std::size_t i = 0; i < ticks_.size();) {
        Tick& t = ticks_[i];
        bool drop = false;
        if (t.next == t.count) {
          finish(t.out, t.trailers, t.count);
          drop = true;
        } else if (t.out.write(line(t))) {
          ++t.next;
        } else {
          // Refused while alive: too much waits for a slow client, and the same tick goes next time. Refused
          // and not alive: the client left, or the server has stopped.
          drop = !t.out.alive();
        }
        if (drop) {
          ticks_[i] = ticks_.back();
          ticks_.pop_back();
        } else {
          ++i;
        }
      }
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<Tick> ticks_;
  bool stopping_ = false;
  std::thread thread_;
};

int main(int argc, char** argv) {
  const userd::ServerConfig cfg = example::config(argc, argv, "127.0.0.1:8084");

  auto ticker = std::make_unique<Ticker>();
  userd::Router router;
  router.get("/numbers", [](const userd::Request& req, userd::Responder res) {
    auto s = std::make_shared<Numbers>();
    s->count = std::strtoul(std::string(req.query_param("count")).c_str(), nullptr, 10);
    s->trailers = req.query_param("trailers") == "1";
    userd::Response head;
    head.content_type = "application/x-ndjson";
    s->out = res.stream(head);
    Numbers::pump(s);
  });
  router.get("/ticks", [&ticker](const userd::Request& req, userd::Responder res) {
    ticker->add(res, std::strtoul(std::string(req.query_param("count")).c_str(), nullptr, 10),
                req.query_param("trailers") == "1",
                std::strtoul(std::string(req.query_param("size")).c_str(), nullptr, 10));
  });

  userd::Server server(cfg, std::move(router));
  const int code = example::serve("stream", server, cfg);
  ticker.reset();  // the server is still there: the ticker's last writes answer false
  return code;
}
