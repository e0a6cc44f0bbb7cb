// userd/main.cpp: the daemon: config, dataset, routes, start, then wait for SIGINT/SIGTERM and stop cleanly
// (SIGHUP reloads the TLS certificate and key). Exit codes: 0 after a signal, 1 when the server cannot start
// (address in use), 2 for a bad flag, dataset or TLS file, an upstream name that does not resolve, or when
// --backend io_uring was asked for and the kernel refuses it.
#include <fmt/format.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "userd/config.hpp"
#include "userd/dataset.hpp"
#include "userd/ops_handler.hpp"
#include "userd/server.hpp"
#include "userd/user_handler.hpp"

#ifndef USERD_VERSION
#define USERD_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  using namespace userd;
  app::Config cfg;
  if (std::string err = app::parse_config(argc, argv, [](const char* n) { return std::getenv(n); }, cfg);
      !err.empty()) {
    fmt::print(stderr, "userd: {}\n", err);
    return 2;
  }
  if (cfg.help) {
    fmt::print("{}", app::usage());
    return 0;
  }
  if (cfg.version) {
    utsname u{};
    uname(&u);
    fmt::print("userd {}\nkernel: {} {}\n{}\nTLS: {}\n", USERD_VERSION, u.sysname, u.release, describe_backends(),
               describe_tls());
    return 0;
  }

  std::string file_data;
  std::string_view dataset = app::embedded_dataset();
  if (!cfg.data_file.empty()) {
    std::string err;
    if (!app::load_dataset(cfg.data_file, file_data, err)) {
      fmt::print(stderr, "userd: {}\n", err);
      return 2;
    }
    dataset = file_data;
  } else if (std::string why = app::validate_dataset(dataset); !why.empty()) {
    fmt::print(stderr, "userd: embedded dataset: {}\n", why);
    return 2;
  }

  if (cfg.server.tls) {
    if (std::string why = check_tls(*cfg.server.tls); !why.empty()) {
      fmt::print(stderr, "userd: {}\n", why);
      return 2;
    }
  }

  if (!cfg.access_log.empty()) {
    cfg.server.access_log_fd =
        cfg.access_log == "-" ? 1 : ::open(cfg.access_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (cfg.server.access_log_fd < 0) {
      fmt::print(stderr, "userd: --access-log {}: {}\n", cfg.access_log, std::strerror(errno));
      return 2;
    }
  }

  // Signals are taken by sigwait on this thread only: block them before any loop thread exists.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // sends use MSG_NOSIGNAL; this guards anything that does not

  // Socket activation (systemd's LISTEN_PID/LISTEN_FDS protocol, read without libsystemd): the sockets are
  // fds 3.. and are ours only if LISTEN_PID names this process.
  if (const char* pid = std::getenv("LISTEN_PID"), *n = std::getenv("LISTEN_FDS"); pid && n && std::atol(pid) == getpid()) {
    for (int i = 0; i < std::atoi(n); ++i) cfg.server.listen_fds.push_back(3 + i);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
  }

  Router router;
  app::RouteOptions routes;
  routes.user_path = cfg.user_path;
  routes.proxy = cfg.proxy;
  routes.upstream_path = cfg.upstream_path;
  routes.validate = cfg.validate;
  routes.compress_proxied = cfg.compress_proxied;
  cfg.server.compress.static_bodies.push_back(dataset);  // compressed once, at start
  app::add_user_routes(router, dataset, routes);
  for (unsigned i = 0; i < cfg.extra_routes; ++i)  // never matched by the benchmark's requests, only walked past
    router.get("/extra/" + std::to_string(i) + "/{id}", [](const Request&, Responder res) { res.send(Response{}); });
  // The routes are made before the server exists; scrapes only come once it has started.
  Server* running = nullptr;
  app::add_ops_routes(router, [&running] { return running ? running->metrics_text() : std::string(); });
  Server server(cfg.server, std::move(router));
  running = &server;
  if (auto r = server.start(); !r) {
    if (r.error().code == Errc::Unsupported) {
      fmt::print(stderr, "userd: --backend io_uring refused by this kernel: {}: {}\n", r.error().what,
                 std::strerror(r.error().sys));
      return 2;
    }
    if (r.error().code == Errc::BadInput) {  // what was asked for cannot be: like a bad flag
      fmt::print(stderr, "userd: {}\n", r.error().message());
      return 2;
    }
    fmt::print(stderr, "userd: cannot start on {}:{}: {}\n", cfg.server.host, cfg.server.port, r.error().message());
    return 1;
  }
  const bool v6 = cfg.server.host.find(':') != std::string::npos;
  if (!cfg.server.listen_fds.empty())
    fmt::print(stderr, "userd: using {} inherited socket(s) (socket activation)\n", cfg.server.listen_fds.size());
  if (cfg.proxy) {
    const UpstreamConfig& u = cfg.server.upstreams[0];
    fmt::print(stderr, "userd: {} proxies to http{}://{}:{}{}{}\n", cfg.user_path, u.tls ? "s" : "", u.host, u.port,
               cfg.upstream_path, u.tls && u.insecure ? " (certificate not verified: --upstream-insecure)" : "");
  }
  if (cfg.server.plain)
    fmt::print(stderr, "userd: listening on {}{}{}:{} ({}, {} threads)\n", v6 ? "[" : "", cfg.server.host,
               v6 ? "]" : "", server.port(), server.backend(), server.threads());
  if (cfg.server.tls) {
    const bool tv6 = cfg.server.tls->host.find(':') != std::string::npos;
    fmt::print(stderr, "userd: HTTPS listening on {}{}{}:{} ({}, {} threads)\n", tv6 ? "[" : "", cfg.server.tls->host,
               tv6 ? "]" : "", server.tls_port(), server.backend(), server.threads());
  }
  std::fflush(stderr);

  int sig = 0;
  while (sigwait(&stop_signals, &sig) == 0 && sig == SIGHUP) {
    // A bad file keeps the old certificate: a reload never takes HTTPS down.
    std::string why;
    if (!cfg.server.tls) fmt::print(stderr, "userd: SIGHUP: no TLS certificate to reload\n");
    else if (server.reload_tls(&why)) fmt::print(stderr, "userd: SIGHUP: TLS certificate and key reloaded\n");
    else fmt::print(stderr, "userd: SIGHUP: keeping the previous TLS certificate: {}\n", why);
    std::fflush(stderr);
  }
  fmt::print(stderr, "userd: {} received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server.stop();
  server.wait();
  return 0;
}
