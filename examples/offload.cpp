// examples/offload.cpp: CPU-heavy requests answered from a small thread pool, so the loop thread never blocks:
// GET /fib/{n} hands its Responder to one of four pool threads, which computes and answers from there. At most 64
// jobs wait (503 beyond), and a job whose client has left is skipped, not computed.
// usage: offload [HOST:PORT] [io_uring|epoll]      (public headers only; prints "listening on HOST:PORT")
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve.hpp"
#include "userd/server.hpp"

namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { run(); });
  }
  ~ThreadPool() {  // finishes what was submitted, then joins
    {
      std::lock_guard<std::mutex> l(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // False when kMaxQueued jobs wait already: the caller answers 503 instead of making everyone wait longer.
  bool submit(std::function<void()> job) {
    std::lock_guard<std::mutex> l(m_);
    if (jobs_.size() >= kMaxQueued) return false;
    jobs_.push_back(std::move(job));
    cv_.notify_one();  // under the lock: once it is released, the pool may be gone
    return true;
  }
  static constexpr std::size_t kMaxQueued = 64;

 private:
  void run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

unsigned long long fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

}  // namespace

int main(int argc, char** argv) {
  const userd::ServerConfig cfg = example::config(argc, argv, "127.0.0.1:8082");

  auto pool = std::make_unique<ThreadPool>(4);
  userd::Router router;
  router.get("/fib/{n}", [&pool](const userd::Request& req, userd::Responder res) {
    const unsigned n = static_cast<unsigned>(std::strtoul(std::string(req.param("n")).c_str(), nullptr, 10));
    if (n > 35) {  // bounded work: a client cannot ask for an hour of CPU
      userd::Response r;
      r.status = 400;
      r.body = R"({"error":"n must be 35 or less"})";
      res.send(r);
      return;
    }
    const bool queued = pool->submit([res, n] {
      if (!res.alive()) return;  // the client left (or was answered 503 by the deadline): no work for nobody
      const std::string body = "{\"n\":" + std::to_string(n) + ",\"fib\":" + std::to_string(fib(n)) + "}";
      userd::Response r;
      r.body = body;  // send() copies it
      res.send(r);
    });
    if (!queued) {
      userd::Response r;
      r.status = 503;
      r.body = R"({"error":"busy, try again"})";
      res.send(r);
    }
  });

  userd::Server server(cfg, std::move(router));
  const int code = example::serve("offload", server, cfg);
  pool.reset();  // its threads hold Responders: they finish (answering false) before the server goes
  return code;
}
