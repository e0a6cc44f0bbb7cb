// examples/tls.cpp: HTTPS only, with optional mutual TLS: ServerConfig::tls, and Request::tls() telling a handler
// what the connection negotiated and who the verified client is. SIGHUP loads the certificate and key again.
// usage: tls HOST:PORT BACKEND CERT KEY [CLIENT_CA]   (BACKEND: io_uring or epoll)
// GET /whoami answers "TLSv1.3 CN=client" (the client certificate's subject, or "anonymous").
// Public headers only.
#include <signal.h>

#include <cstdio>
#include <string>
#include <thread>

#include "serve.hpp"
#include "userd/server.hpp"

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: tls HOST:PORT BACKEND CERT KEY [CLIENT_CA]\n");
    return 2;
  }
  userd::ServerConfig plain = example::config(argc, argv, "127.0.0.1:8443");
  userd::ServerConfig cfg = plain;
  cfg.plain = false;  // no plain-HTTP listener at all
  userd::TlsConfig& tls = cfg.tls.emplace();
  tls.host = plain.host;
  tls.port = plain.port;
  tls.cert_file = argv[3];
  tls.key_file = argv[4];
  if (argc > 5) tls.client_ca_file = argv[5];

  userd::Router router;
  router.get("/whoami", [](const userd::Request& req, userd::Responder res) {
    thread_local std::string text;
    const userd::TlsInfo t = req.tls();
    text.assign(t.on ? t.version : "plain").append(" ");
    text.append(t.client_subject.empty() ? "anonymous" : t.client_subject).append("\n");
    userd::Response r;
    r.content_type = "text/plain";
    r.body = text;
    res.send(r);
  });

  userd::Server server(cfg, std::move(router));
  // SIGHUP: a certificate renewed on disk is served to new handshakes; a bad file keeps the old one. Every
  // thread blocks the signals first, so that only the waiting threads take them.
  sigset_t hup, all;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  all = hup;
  sigaddset(&all, SIGINT);
  sigaddset(&all, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::thread reloader([&server, hup] {
    int sig;
    while (sigwait(&hup, &sig) == 0) {
      std::string why;
      if (server.reload_tls(&why)) std::fprintf(stderr, "tls: reloaded\n");
      else std::fprintf(stderr, "tls: kept the old certificate: %s\n", why.c_str());
    }
  });
  reloader.detach();
  return example::serve("tls", server, cfg);
}
