// examples/serve.hpp: the start-up and shutdown every example program shares, so that each file shows only
// what it is about. Public headers only. (hello.cpp keeps its own copy: the install test builds it alone.)
#pragma once

#include <signal.h>

#include <cstdio>
#include <functional>
#include <string>

#include "userd/server.hpp"

namespace example {

// argv[1]: HOST:PORT (default `listen`); argv[2]: io_uring or epoll (default: io_uring if the kernel allows it).
// One loop thread.
// Also blocks SIGINT and SIGTERM for the whole process (serve() takes them with sigwait): called first in main,
// before any thread exists, so that no thread an example starts later dies of a second signal during the drain.
inline sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

inline userd::ServerConfig config(int argc, char** argv, const std::string& listen) {
  (void)block_stop_signals();
  const std::string addr = argc > 1 ? argv[1] : listen;
  const auto colon = addr.rfind(':');
  userd::ServerConfig cfg;
  cfg.host = addr.substr(0, colon);
  cfg.port = static_cast<std::uint16_t>(std::stoi(addr.substr(colon + 1)));
  cfg.threads = 1;
  if (argc > 2) cfg.backend = std::string(argv[2]) == "epoll" ? userd::BackendKind::Epoll : userd::BackendKind::IoUring;
  return cfg;
}

// Starts the server, prints "NAME: listening on HOST:PORT", serves until SIGINT or SIGTERM, then stops and joins
// the loops; before_stop runs first (stop starting new work elsewhere). Returns the exit code. The Server stays
// alive after this returns, so threads that hold Responders can be joined before it goes.
inline int serve(const char* name, userd::Server& server, const userd::ServerConfig& cfg,
                 const std::function<void()>& before_stop = {}) {
  // Blocked before start(): the loop threads inherit the mask, and sigwait below takes the signals.
  const sigset_t set = block_stop_signals();
  if (auto r = server.start(); !r) {
    std::fprintf(stderr, "%s: cannot start: %s\n", name, r.error().what);
    return 1;
  }
  std::fprintf(stderr, "%s: listening on %s:%u (%.*s)\n", name, cfg.plain ? cfg.host.c_str() : cfg.tls->host.c_str(),
               cfg.plain ? server.port() : server.tls_port(), int(server.backend().size()), server.backend().data());
  int sig;
  sigwait(&set, &sig);
  if (before_stop) before_stop();
  server.stop();
  server.wait();
  return 0;
}

}  // namespace example
