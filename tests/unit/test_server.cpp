// tests/unit/test_server.cpp: what Server::start refuses before it binds or starts a thread.
#include <doctest/doctest.h>

#include <string_view>

#include <string>

#include "userd/server.hpp"
#include "userd/version.hpp"

TEST_CASE("a receive buffer count that is not a power of two is a configuration error on every backend") {
  for (auto kind : {userd::BackendKind::Auto, userd::BackendKind::IoUring, userd::BackendKind::Epoll}) {
    userd::ServerConfig cfg;
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.threads = 1;
    cfg.backend = kind;
    cfg.recv_buffers = 100;
    userd::Server s(cfg, userd::Router{});
    auto r = s.start();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == userd::Errc::BadInput);  // not Unsupported: nothing falls back to epoll
    CHECK(std::string_view(r.error().what).find("recv_buffers") == 0);
  }
}

TEST_CASE("userd/version.hpp says the project's version") {
  CHECK(std::string_view(USERD_VERSION_STRING) == USERD_PROJECT_VERSION);
  const std::string parts = std::to_string(USERD_VERSION_MAJOR) + "." + std::to_string(USERD_VERSION_MINOR) + "." +
                            std::to_string(USERD_VERSION_PATCH);
  CHECK(parts == USERD_PROJECT_VERSION);
}
