// examples/hello.cpp: the smallest program embedding libuserd: two routes, one that answers at once and one
// that answers on a later request's turn, started on the address given as argv[1] (default 127.0.0.1:8081),
// on the backend named by argv[2] (io_uring or epoll; default: io_uring if the kernel allows it); argv[3], if
// given, is the handler timeout in seconds (a /wait nobody wakes is then answered 503).
// It uses only the public headers under libuserd/include/userd.
#include <signal.h>

#include <cstdio>
#include <optional>
#include <string>

#include "userd/server.hpp"

int main(int argc, char** argv) {
  std::string listen = argc > 1 ? argv[1] : "127.0.0.1:8081";
  auto colon = listen.rfind(':');
  userd::ServerConfig cfg;
  cfg.host = listen.substr(0, colon);
  cfg.port = static_cast<std::uint16_t>(std::stoi(listen.substr(colon + 1)));
  cfg.threads = 1;
  if (argc > 2) cfg.backend = std::string(argv[2]) == "epoll" ? userd::BackendKind::Epoll : userd::BackendKind::IoUring;
  if (argc > 3) cfg.handler_timeout_ms = static_cast<unsigned>(std::stod(argv[3]) * 1000);

  // A handler may keep its Responder and answer later on the same thread: here /wait is answered when the
  // next /wake arrives, the way a handler answers after an upstream reply.
  std::optional<userd::Responder> waiting;
  userd::Router router;
  router.get("/hello", [](const userd::Request& req, userd::Responder res) {
    userd::Response r;
    r.content_type = "text/plain";
    r.body = req.query() == "name=embedder" ? "hello, embedder\n" : "hello\n";
    res.send(r);
  });
  // Which protocol carried the request: a handler needs no change for HTTP/2.
  router.get("/protocol", [](const userd::Request& req, userd::Responder res) {
    userd::Response r;
    r.content_type = "text/plain";
    r.body = req.protocol();
    res.send(r);
  });
  // A route parameter, a query value (both percent-decoded) and the client's address.
  router.get("/greet/{name}", [](const userd::Request& req, userd::Responder res) {
    thread_local std::string text;  // the body is copied by send(): one buffer per thread is enough
    text.assign("hello, ").append(req.param("name")).append(req.query_param("punct")).append(" from ");
    text.append(req.peer()).append("\n");
    userd::Response r;
    r.content_type = "text/plain";
    r.body = text;
    res.send(r);
  });
  router.get("/wait", [&waiting](const userd::Request&, userd::Responder res) { waiting = res; });
  router.get("/wake", [&waiting](const userd::Request&, userd::Responder res) {
    userd::Response r;
    r.content_type = "text/plain";
    bool woke = waiting && waiting->alive();
    if (woke) {
      r.body = "woken\n";
      waiting->send(r);
    }
    waiting.reset();
    r.body = woke ? "woke one\n" : "nobody waiting\n";
    res.send(r);
  });

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  userd::Server server(cfg, std::move(router));
  if (auto r = server.start(); !r) {
    std::fprintf(stderr, "hello: cannot start: %s\n", r.error().what);
    return 1;
  }
  std::fprintf(stderr, "hello: listening on %s:%u (%.*s)\n", cfg.host.c_str(), server.port(),
               int(server.backend().size()), server.backend().data());
  int sig;
  sigwait(&set, &sig);
  server.stop();
  server.wait();
  return 0;
}
