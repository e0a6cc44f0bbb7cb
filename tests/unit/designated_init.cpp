// tests/unit/designated_init.cpp: the public structs as the docs initialise them, compiled with -Wall -Wextra
// -Werror (meson.build): an embedder's warning flags must not trip on a member left to its default.
#include "userd/server.hpp"

namespace {
[[maybe_unused]] void documented_initialisations() {
  const userd::ServerConfig cfg{.host = "127.0.0.1", .port = 8080, .threads = 1};
  const userd::TlsConfig tls{.port = 8443, .cert_file = "cert.pem", .key_file = "key.pem"};
  const userd::UpstreamConfig up{.host = "10.0.0.2", .port = 3000};
  const userd::Response r{.status = 201, .body = "{}"};
  const userd::UpstreamRequest req{.method = "POST", .target = "/v1/users", .body = "{}"};
  const userd::Header h{.name = "X-A", .value = "1"};
  const userd::TlsInfo info{.on = true};
  (void)cfg, (void)tls, (void)up, (void)r, (void)req, (void)h, (void)info;
}
}  // namespace
