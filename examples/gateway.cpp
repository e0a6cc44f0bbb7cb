// examples/gateway.cpp: embedding libuserd with an upstream: GET /now answers at once; GET /users answers after
// asking the upstream given as argv[2] (host:port, its /v1/avatar), without blocking the loop thread.
// usage: gateway LISTEN_HOST:PORT UPSTREAM_HOST:PORT      (public headers only)
#include <signal.h>

#include <cstdio>
#include <string>

#include "userd/server.hpp"

namespace {

// Runs on the loop thread when the upstream exchange ends. `res` may belong to a client that has left; then
// send() does nothing and returns false.
void on_users(void* /*user*/, userd::Responder res, const userd::UpstreamReply& up) {
  userd::Response r;
  if (up.error != userd::UpstreamError::None) {
    r.status = up.error == userd::UpstreamError::Timeout ? 504 : 502;
    r.body = R"({"error":"upstream failed"})";
  } else {
    r.status = up.status;
    r.body = up.body;  // valid only in this callback: send() copies it
  }
  res.send(r);
}

std::pair<std::string, std::uint16_t> split(const std::string& hp) {
  auto colon = hp.rfind(':');
  return {hp.substr(0, colon), static_cast<std::uint16_t>(std::stoi(hp.substr(colon + 1)))};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: gateway LISTEN_HOST:PORT UPSTREAM_HOST:PORT\n");
    return 2;
  }
  userd::ServerConfig cfg;
  std::tie(cfg.host, cfg.port) = split(argv[1]);
  cfg.threads = 1;
  userd::UpstreamConfig upstream;
  std::tie(upstream.host, upstream.port) = split(argv[2]);
  upstream.timeout_ms = 1000;
  cfg.upstreams.push_back(upstream);  // index 0

  userd::Router router;
  router.get("/now", [](const userd::Request&, userd::Responder res) {
    userd::Response r;
    r.body = R"({"now":true})";
    res.send(r);
  });
  router.get("/users", [](const userd::Request& req, userd::Responder res) {
    if (!req.fetch(0, "/v1/avatar", res, &on_users)) {  // queue full: answer here
      userd::Response r;
      r.status = 503;
      r.body = R"({"error":"busy"})";
      res.send(r);
    }
  });

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the loop threads start, so only sigwait sees them
  userd::Server server(cfg, std::move(router));
  if (auto ok = server.start(); !ok) {
    std::fprintf(stderr, "gateway: cannot start: %s\n", ok.error().what);
    return 1;
  }
  std::fprintf(stderr, "gateway: listening on %s:%u\n", cfg.host.c_str(), server.port());
  int sig;
  sigwait(&set, &sig);
  server.stop();  // graceful: requests in flight finish
  server.wait();
  return 0;
}
