// tests/unit/test_cross_thread.cpp: handlers that hand their Responder to other threads, which answer: a real
// Server on a loopback port, real sockets, on both backends. Built on its own so that the ThreadSanitizer build
// (./dev test) compiles only this and the library.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "userd/server.hpp"

namespace {

// A small thread pool: the handler's work goes here, and so does its Responder.
class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { run(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(m_);
      done_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  void submit(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> l(m_);
      jobs_.push_back(std::move(f));
      cv_.notify_one();  // under the lock: once it is released, the pool may be gone
    }
  }

 private:
  void run() {
    while (true) {
      std::function<void()> f;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [this] { return done_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        f = std::move(jobs_.front());
        jobs_.pop_front();
      }
      f();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool done_ = false;
  std::vector<std::thread> workers_;
};

int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// Reads responses until `count` bodies have arrived; returns them (Content-Length framing only).
std::vector<std::string> read_bodies(int fd, std::size_t count) {
  std::vector<std::string> bodies;
  std::string buf;
  char chunk[65536];
  while (bodies.size() < count) {
    const std::size_t head_end = buf.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      const std::size_t cl = buf.find("Content-Length: ");
      REQUIRE(cl < head_end);
      const std::size_t len = std::stoul(buf.substr(cl + 16));
      if (buf.size() >= head_end + 4 + len) {
        bodies.push_back(buf.substr(head_end + 4, len));
        buf.erase(0, head_end + 4 + len);
        continue;
      }
    }
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) break;
    buf.append(chunk, std::size_t(n));
  }
  return bodies;
}

// One chunked response read until its last chunk has come (or the connection ends): its head, its body
// de-chunked, and whether the last chunk came.
struct Chunked {
  std::string head, body;
  bool ended = false;
};
Chunked read_chunked(int fd) {
  std::string all;
  char buf[65536];
  for (int i = 0; i < 100'000; ++i) {
    if (all.size() >= 7 && all.compare(all.size() - 7, 7, "\r\n0\r\n\r\n") == 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    all.append(buf, std::size_t(n));
  }
  Chunked r;
  const std::size_t head_end = all.find("\r\n\r\n");
  if (head_end == std::string::npos) return r;
  r.head = all.substr(0, head_end);
  for (std::size_t pos = head_end + 4; pos < all.size();) {
    const std::size_t eol = all.find("\r\n", pos);
    if (eol == std::string::npos) break;
    const std::size_t len = std::stoul(all.substr(pos, eol - pos), nullptr, 16);
    if (len == 0) {
      r.ended = true;
      break;
    }
    r.body.append(all, eol + 2, len);
    pos = eol + 2 + len + 2;
  }
  return r;
}

// True when body is exactly `lines` lines of 1000 bytes, the i-th starting with "i ".
bool numbered_lines(const std::string& body, std::size_t lines) {
  if (body.size() != lines * 1000) return false;
  for (std::size_t i = 0; i < lines; ++i)
    if (body.compare(i * 1000, std::to_string(i).size() + 1, std::to_string(i) + ' ') != 0) return false;
  return true;
}

// Runs body once per backend with a server of `threads` loop threads on 127.0.0.1, started with the routes
// make_routes adds; a backend this kernel refuses is skipped.
void each_backend(unsigned threads, const std::function<void(userd::Router&)>& make_routes,
                  const std::function<void(userd::Server&)>& body) {
  for (auto kind : {userd::BackendKind::IoUring, userd::BackendKind::Epoll}) {
    const std::string backend = kind == userd::BackendKind::IoUring ? "io_uring" : "epoll";  // printed, not a pointer
    CAPTURE(backend);
    userd::Router router;
    make_routes(router);
    userd::ServerConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.threads = threads;
    cfg.backend = kind;
    userd::Server server(cfg, std::move(router));
    if (!server.start()) {
      REQUIRE(kind == userd::BackendKind::IoUring);  // epoll is always there
      MESSAGE("io_uring refused: skipped");
      continue;
    }
    body(server);
  }
}

}  // namespace

TEST_CASE("answers sent from other threads reach their clients, in request order, on both backends") {
  std::optional<Pool> pool;  // stopped before the server: its threads hold Responders
  std::atomic<int> answered{0};
  auto routes = [&](userd::Router& router) {
    pool.emplace(4);
    answered = 0;
    router.get("/work/{n}", [&](const userd::Request& req, userd::Responder res) {
      std::string n(req.param("n"));  // the request's views die with the handler: copy what the work needs
      pool->submit([res, n, &answered] {
        std::this_thread::sleep_for(std::chrono::microseconds(std::stoi(n) % 7 * 100));
        const std::string body = "done " + n;  // send() copies it: it may die right after
        userd::Response r;
        r.content_type = "text/plain";
        r.body = body;
        if (res.send(r)) answered.fetch_add(1);
      });
    });
    router.get("/now", [](const userd::Request&, userd::Responder res) {
      userd::Response r;
      r.body = "now";
      res.send(r);
    });
  };
  each_backend(2, routes, [&](userd::Server& server) {
    constexpr int kClients = 8, kRequests = 40;
    std::vector<std::thread> clients;
    std::atomic<int> good{0};
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        const int fd = connect_to(server.port());
        std::string batch;  // pipelined: answers from the pool must still come back in order
        for (int i = 0; i < kRequests; ++i) {
          const int n = c * 1000 + i;
          batch += i % 5 == 4 ? "GET /now HTTP/1.1\r\nHost: t\r\n\r\n"
                              : "GET /work/" + std::to_string(n) + " HTTP/1.1\r\nHost: t\r\n\r\n";
        }
        [[maybe_unused]] ssize_t w = ::send(fd, batch.data(), batch.size(), MSG_NOSIGNAL);
        const std::vector<std::string> bodies = read_bodies(fd, kRequests);
        bool ok = bodies.size() == std::size_t(kRequests);
        for (int i = 0; ok && i < kRequests; ++i)
          ok = bodies[std::size_t(i)] == (i % 5 == 4 ? std::string("now") : "done " + std::to_string(c * 1000 + i));
        good.fetch_add(ok);
        ::close(fd);
      });
    }
    for (auto& t : clients) t.join();
    pool.reset();
    CHECK(good.load() == kClients);
    CHECK(answered.load() == kClients * kRequests * 4 / 5);
  });
}

TEST_CASE("a stream written and ended from another thread arrives whole, chunked, in order") {
  std::vector<std::thread> producers;
  std::mutex m;
  auto routes = [&](userd::Router& router) {
    router.get("/s/{n}", [&](const userd::Request& req, userd::Responder res) {
      const int n = std::stoi(std::string(req.param("n")));
      userd::Response head;
      head.content_type = "text/plain";
      std::lock_guard<std::mutex> l(m);
      producers.emplace_back([s = res.stream(head), n] {
        for (int i = 0; i < n; ++i) {
          const std::string line = std::to_string(i) + "\n";
          while (!s.write(line)) {  // the inbox is full, or the stream is over (then no retry can help)
            if (!s.alive()) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }
        s.end();
      });
    });
  };
  each_backend(1, routes, [&](userd::Server& server) {
    const int fd = connect_to(server.port());
    const std::string req = "GET /s/2000 HTTP/1.1\r\nHost: t\r\n\r\n";
    [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    const Chunked got = read_chunked(fd);
    ::close(fd);
    {
      std::lock_guard<std::mutex> l(m);
      for (auto& t : producers) t.join();
      producers.clear();
    }
    std::string want;
    for (int i = 0; i < 2000; ++i) want += std::to_string(i) + "\n";
    CHECK(got.head.find("Transfer-Encoding: chunked") != std::string::npos);
    CHECK(got.ended);
    CHECK(got.body == want);
  });
}

TEST_CASE("from another thread: send after the client left and a second send say false; a send during the drain is delivered") {
  std::mutex m;
  std::vector<userd::Responder> held;
  auto routes = [&](userd::Router& router) {
    held.clear();
    router.get("/hold", [&](const userd::Request&, userd::Responder res) {
      std::lock_guard<std::mutex> l(m);
      held.push_back(res);
    });
  };
  // Runs f on a thread that is not the server's, holding the lock on `held`.
  auto elsewhere = [&](const std::function<void()>& f) {
    std::thread([&] {
      std::lock_guard<std::mutex> l(m);
      f();
    }).join();
  };
  each_backend(1, routes, [&](userd::Server& server) {
    auto hold = [&](int fd) {
      const std::string req = "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n";
      [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
      for (int i = 0; i < 400; ++i) {
        {
          std::lock_guard<std::mutex> l(m);
          if (!held.empty()) return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    };
    userd::Response r;
    r.body = "answer";
    // Answered once from another thread: true; again, at once or later: false.
    const int kept = connect_to(server.port());
    hold(kept);
    elsewhere([&] {
      REQUIRE(held.size() == 1);
      CHECK(held[0].alive());
      CHECK(held[0].send(r));
      CHECK_FALSE(held[0].send(r));  // before the loop has even taken the first: refused, not queued
      CHECK_FALSE(held[0].alive());
    });
    CHECK(read_bodies(kept, 1) == std::vector<std::string>{"answer"});
    elsewhere([&] {
      CHECK_FALSE(held[0].send(r));
      held.clear();
    });
    // The client leaves first (a reset: an EOF alone may be a half-close that still wants its answer): false.
    const int gone = connect_to(server.port());
    hold(gone);
    linger reset{1, 0};
    setsockopt(gone, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    ::close(gone);
    bool refused = false;
    for (int i = 0; i < 200 && !refused; ++i) {  // until the loop has seen it go
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      elsewhere([&] { refused = !held[0].alive(); });
    }
    CHECK(refused);
    elsewhere([&] {
      CHECK_FALSE(held[0].send(r));
      held.clear();
    });
    // Held across a stop: still answered (the drain waits for it), with Connection: close, then the close. Once
    // the loops have ended: false.
    hold(kept);
    server.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the loop has begun its drain
    elsewhere([&] {
      REQUIRE(held.size() == 1);
      CHECK(held[0].alive());
      CHECK(held[0].send(r));
    });
    std::string rest;
    char buf[4096];
    for (ssize_t n; (n = ::recv(kept, buf, sizeof buf, 0)) > 0;) rest.append(buf, std::size_t(n));
    CHECK(rest.find("Connection: close\r\n") != std::string::npos);
    CHECK(rest.substr(rest.size() - 6) == "answer");  // then EOF
    server.wait();
    elsewhere([&] {
      CHECK_FALSE(held[0].alive());
      CHECK_FALSE(held[0].send(r));
    });
    ::close(kept);
  });
}

// A producer off the loop that outruns its client: write() may say false (the inbox is full) and the producer
// retries, but every write that said true must reach the client, in order, even though the connection's own
// output was past its high-water mark when the loop took the data from the inbox.
TEST_CASE("a stream from another thread to a client that reads late loses no accepted write") {
  std::vector<std::thread> producers;
  std::mutex m;
  std::atomic<int> refused{0}, written{0};
  // The producer writes 1000-byte lines until the server has pushed back (write() false) once, which happens
  // only after the kernel's socket buffers (up to tcp_wmem's 4 MiB here), the connection's 64 KiB and what
  // may wait for it are full; then 500 more, so that data waits again; then it ends.
  constexpr int kMaxLines = 60'000;
  auto routes = [&](userd::Router& router) {
    router.get("/big", [&](const userd::Request&, userd::Responder res) {
      userd::Response head;
      head.content_type = "text/plain";
      std::lock_guard<std::mutex> l(m);
      producers.emplace_back([s = res.stream(head), &refused, &written] {
        std::string line(1000, 'x');
        int last = kMaxLines;
        for (int i = 0; i < last; ++i) {
          const std::string n = std::to_string(i);
          line.replace(0, n.size() + 1, n + ' ');
          while (!s.write(line)) {
            if (!s.alive()) return;
            if (refused.fetch_add(1) == 0) last = std::min(last, i + 500);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
          written.store(i + 1);
        }
        s.end();
      });
    });
  };
  each_backend(1, routes, [&](userd::Server& server) {
    refused = 0;
    written = 0;
    const int fd = connect_to(server.port());
    int small = 32 * 1024;  // a small receive window, so the server's output backs up while this client sleeps
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    const std::string req = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n";
    [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    for (int i = 0; i < 3000 && refused.load() == 0; ++i)  // until the producer has filled everything
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const Chunked got = read_chunked(fd);
    ::close(fd);
    {
      std::lock_guard<std::mutex> l(m);
      for (auto& t : producers) t.join();
      producers.clear();
    }
    REQUIRE(refused.load() > 0);  // the server did push back: the case this test is about happened
    const std::size_t lines = std::size_t(written.load());
    CHECK(got.ended);
    CHECK(got.body.size() == lines * 1000);
    CHECK(numbered_lines(got.body, lines));
  });
}

TEST_CASE("Stream::alive from another thread: true while the stream takes writes, false after its end or its client") {
  std::mutex m;
  std::vector<userd::Stream> held;
  auto routes = [&](userd::Router& router) {
    held.clear();
    router.get("/s", [&](const userd::Request&, userd::Responder res) {
      userd::Response head;
      std::lock_guard<std::mutex> l(m);
      held.push_back(res.stream(head));
    });
  };
  auto elsewhere = [&](const std::function<void()>& f) {
    std::thread([&] {
      std::lock_guard<std::mutex> l(m);
      f();
    }).join();
  };
  auto open_stream = [&](std::uint16_t port) {
    const int fd = connect_to(port);
    const std::string req = "GET /s HTTP/1.1\r\nHost: t\r\n\r\n";
    [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    for (int i = 0; i < 400; ++i) {
      {
        std::lock_guard<std::mutex> l(m);
        if (!held.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return fd;
  };
  each_backend(1, routes, [&](userd::Server& server) {
    CHECK_FALSE(userd::Stream().alive());
    const int ended = open_stream(server.port());
    elsewhere([&] {
      REQUIRE(held.size() == 1);
      CHECK(held[0].alive());
      CHECK(held[0].write("a"));
      CHECK(held[0].end());
      CHECK_FALSE(held[0].alive());  // at once: the end is taken, not yet delivered
      CHECK_FALSE(held[0].write("b"));
      held.clear();
    });
    const Chunked got = read_chunked(ended);
    CHECK(got.ended);
    CHECK(got.body == "a");
    ::close(ended);

    const int gone = open_stream(server.port());
    linger reset{1, 0};
    setsockopt(gone, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    ::close(gone);
    bool dead = false;
    for (int i = 0; i < 200 && !dead; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      elsewhere([&] { dead = !held[0].alive(); });
    }
    CHECK(dead);
    elsewhere([&] {
      CHECK_FALSE(held[0].write("c"));
      held.clear();
    });
  });
}

// A stream written from a thread and ended on the loop (here by another request's handler, which runs there):
// the end must wait behind the data the thread was told was taken, not overtake it and cut the body short.
TEST_CASE("a stream ended on the loop while data written from another thread still waits arrives whole") {
  std::vector<std::thread> producers;
  std::mutex m;
  std::optional<userd::Stream> stream;
  std::atomic<int> written{0};
  std::atomic<bool> refused{false};
  std::atomic<int> ended{-1};
  auto routes = [&](userd::Router& router) {
    router.get("/big", [&](const userd::Request&, userd::Responder res) {
      userd::Response head;
      std::lock_guard<std::mutex> l(m);
      stream = res.stream(head);
      // Writes until everything is full (the kernel's socket buffers too: up to tcp_wmem's 4 MiB), that is
      // until the server has refused for 200 ms on end; then data surely waits in the server, and it stops.
      producers.emplace_back([s = *stream, &written, &refused] {
        std::string line(1000, 'x');
        for (int i = 0, no = 0; i < 60'000 && no < 200;) {
          const std::string n = std::to_string(i);
          line.replace(0, n.size() + 1, n + ' ');
          if (s.write(line)) {
            written.store(++i);
            no = 0;
          } else {
            ++no;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }
        refused = true;
      });
    });
    router.get("/finish", [&](const userd::Request&, userd::Responder res) {
      std::lock_guard<std::mutex> l(m);
      ended = stream ? int(stream->end()) : -1;
      userd::Response r;
      r.body = "ok";
      res.send(r);
    });
  };
  each_backend(1, routes, [&](userd::Server& server) {
    written = 0;
    refused = false;
    ended = -1;
    const int fd = connect_to(server.port());
    int small = 32 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    const std::string req = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n";
    [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    {
      std::unique_lock<std::mutex> l(m, std::defer_lock);
      for (int i = 0; i < 6000 && !refused; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      l.lock();
      for (auto& t : producers) t.join();
      producers.clear();
    }
    REQUIRE(refused.load());
    const int other = connect_to(server.port());
    const std::string fin = "GET /finish HTTP/1.1\r\nHost: t\r\n\r\n";
    w = ::send(other, fin.data(), fin.size(), MSG_NOSIGNAL);
    CHECK(read_bodies(other, 1) == std::vector<std::string>{"ok"});
    ::close(other);
    CHECK(ended.load() == 1);
    const Chunked got = read_chunked(fd);
    ::close(fd);
    const std::size_t lines = std::size_t(written.load());
    CHECK(got.ended);
    CHECK(got.body.size() == lines * 1000);
    CHECK(numbered_lines(got.body, lines));
    std::lock_guard<std::mutex> l(m);
    stream.reset();
  });
}

TEST_CASE("timers, work posted onto a loop, and the loop index: an SSE-like feed needs no thread of its own") {
  std::mutex m;
  std::vector<std::thread::id> loop_threads;
  auto routes = [&](userd::Router& router) {
    loop_threads.clear();
    // Three events 20 ms apart from a timer on the handler's own loop, then the end.
    router.get("/feed", [](const userd::Request& req, userd::Responder res) {
      userd::Stream s = res.stream(userd::Response{});
      auto tick = std::make_shared<std::function<void(int)>>();
      *tick = [s, tick](int n) {
        if (n == 3) {
          s.end();
          *tick = nullptr;  // breaks the cycle
          return;
        }
        s.write("event " + std::to_string(n) + "\n");
        if (!s.after(20, [tick, n] { (*tick)(n + 1); })) s.end();
      };
      req.after(20, [tick] { (*tick)(0); });
    });
    router.get("/where", [&](const userd::Request& req, userd::Responder res) {
      {
        std::lock_guard<std::mutex> l(m);
        if (loop_threads.size() <= req.loop_index()) loop_threads.resize(req.loop_index() + 1);
        loop_threads[req.loop_index()] = std::this_thread::get_id();
      }
      const std::string body = std::to_string(req.loop_index());
      userd::Response r;
      r.body = body;
      res.send(r);
    });
  };
  each_backend(2, routes, [&](userd::Server& server) {
    const int fd = connect_to(server.port());
    const std::string req = "GET /feed HTTP/1.1\r\nHost: t\r\n\r\n";
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size()));
    const Chunked c = read_chunked(fd);
    CHECK(c.ended);
    CHECK(c.body == "event 0\nevent 1\nevent 2\n");
    CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(60));
    ::close(fd);
    // Until each loop has answered a /where: fresh connections spread over the two loops.
    for (int i = 0; i < 64; ++i) {
      const int w = connect_to(server.port());
      const std::string get = "GET /where HTTP/1.1\r\nHost: t\r\n\r\n";
      REQUIRE(::send(w, get.data(), get.size(), MSG_NOSIGNAL) == ssize_t(get.size()));
      const auto bodies = read_bodies(w, 1);
      REQUIRE(bodies.size() == 1);
      CHECK((bodies[0] == "0" || bodies[0] == "1"));
      ::close(w);
      std::lock_guard<std::mutex> l(m);
      if (loop_threads.size() == 2 && loop_threads[0] != std::thread::id() && loop_threads[1] != std::thread::id())
        break;
    }
    {
      std::lock_guard<std::mutex> l(m);  // 64 fresh connections over two SO_REUSEPORT listeners reach both
      REQUIRE(loop_threads.size() == 2);
      REQUIRE(loop_threads[0] != std::thread::id());
      REQUIRE(loop_threads[1] != std::thread::id());
      CHECK(loop_threads[0] != loop_threads[1]);
    }
    for (unsigned loop = 0; loop < 2; ++loop) {
      std::thread::id ran;
      std::atomic<bool> done{false};
      REQUIRE(server.post(loop, [&] {
        ran = std::this_thread::get_id();
        done = true;
      }));
      for (int i = 0; i < 400 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      REQUIRE(done);
      std::lock_guard<std::mutex> l(m);
      CHECK(ran == loop_threads[loop]);
    }
    CHECK_FALSE(server.post(2, [] {}));  // no such loop
    server.stop();
    server.wait();
    CHECK_FALSE(server.post(0, [] {}));  // its loop has ended
  });
}

namespace {

std::string gunzip(const std::string& in) {
  z_stream z{};
  REQUIRE(inflateInit2(&z, 16 + 15) == Z_OK);
  std::string out(in.size() * 20 + 1024, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = uInt(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = uInt(out.size());
  const int rc = inflate(&z, Z_FINISH);
  out.resize(rc == Z_STREAM_END ? z.total_out : 0);
  inflateEnd(&z);
  return out;
}

// One response, Content-Length framed: its head and body.
std::pair<std::string, std::string> exchange(std::uint16_t port, const std::string& path) {
  const int fd = connect_to(port);
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";
  [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string all;
  char buf[65536];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) all.append(buf, std::size_t(n));
  ::close(fd);
  const std::size_t end = all.find("\r\n\r\n");
  REQUIRE(end != std::string::npos);
  return {all.substr(0, end), all.substr(end + 4)};
}

}  // namespace

TEST_CASE("compression of answers from other threads: a static body keeps its start-time forms, compressible holds") {
  static const std::string kBody = [] {
    std::string s = "[";
    for (int i = 0; i < 2000; ++i) s += "{\"n\":" + std::to_string(i) + "},";
    s.back() = ']';
    return s;
  }();
  for (auto kind : {userd::BackendKind::IoUring, userd::BackendKind::Epoll}) {
    std::optional<Pool> pool;
    pool.emplace(2);
    userd::Router router;
    auto answer = [&](bool on_loop, bool compressible, bool is_static) {
      return [&, on_loop, compressible, is_static](const userd::Request&, userd::Responder res) {
        auto send = [res, compressible, is_static] {
          userd::Response r;
          r.body = kBody;
          r.body_is_static = is_static;
          r.compressible = compressible;
          res.send(r);
        };
        if (on_loop) send();
        else pool->submit(send);
      };
    };
    router.get("/loop", answer(true, true, true));
    router.get("/static", answer(false, true, true));
    router.get("/exact", answer(false, false, true));
    router.get("/copied", answer(false, true, false));
    router.get("/stream", [&](const userd::Request&, userd::Responder res) {
      pool->submit([res] {
        userd::Response head;
        head.content_type = "application/x-ndjson";
        const userd::Stream s = res.stream(head);
        for (int i = 0; i < 100; ++i)
          while (!s.write(kBody.substr(std::size_t(i) * 100, 100)) && s.alive()) std::this_thread::yield();
        s.end();
      });
    });
    userd::ServerConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.threads = 1;
    cfg.backend = kind;
    cfg.compress.enabled = true;
    cfg.compress.static_bodies = {kBody};
    userd::Server server(cfg, std::move(router));
    if (!server.start()) continue;  // io_uring refused: the other backend still runs
    const auto loop = exchange(server.port(), "/loop");
    CHECK(loop.first.find("Content-Encoding: gzip") != std::string::npos);
    CHECK(gunzip(loop.second) == kBody);
    const auto off = exchange(server.port(), "/static");
    CHECK(off.second == loop.second);  // the same start-time bytes, not compressed again
    const auto exact = exchange(server.port(), "/exact");
    CHECK(exact.first.find("Content-Encoding") == std::string::npos);
    CHECK(exact.second == kBody);
    const auto copied = exchange(server.port(), "/copied");
    CHECK(copied.first.find("Content-Encoding: gzip") != std::string::npos);
    CHECK(gunzip(copied.second) == kBody);
    const int fd = connect_to(server.port());
    const std::string req = "GET /stream HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n";
    [[maybe_unused]] ssize_t w = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    const Chunked c = read_chunked(fd);
    ::close(fd);
    CHECK(c.ended);
    CHECK(c.head.find("Content-Encoding: gzip") != std::string::npos);
    CHECK(gunzip(c.body) == kBody.substr(0, 10000));
    pool.reset();
  }
}
