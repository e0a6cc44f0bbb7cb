// examples/rest.cpp: a small REST service on libuserd: route parameters, query values, a JSON body parsed with
// simdjson, answers formatted with fmt, and an API-key middleware. Users live in memory, per process; the
// loop runs on one thread, so the handlers share the map without a lock.
// usage: rest [HOST:PORT] [io_uring|epoll]      (prints "listening on HOST:PORT"; every request needs
//        X-Api-Key: secret)
//   GET    /v1/users?prefix=A   the users whose name starts with prefix (all without it)
//   GET    /v1/users/{id}       one user, 404 when there is none
//   POST   /v1/users            {"name":"Ada","email":"ada@example.org"} -> 201 with its id
//   DELETE /v1/users/{id}       204, or 404
#include <signal.h>

#include <cstdio>
#include <map>
#include <string>

#include <fmt/format.h>
#include <simdjson.h>

#include "userd/server.hpp"

namespace {

struct User {
  std::string name, email;
};

// JSON string contents: quotes, backslashes and control bytes escaped.
std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", c);
    else out += c;
  }
  return out;
}

std::string json_user(unsigned long id, const User& u) {
  return fmt::format(R"({{"id":{},"name":"{}","email":"{}"}})", id, escape(u.name), escape(u.email));
}

void answer(userd::Responder& res, int status, const std::string& body) {
  userd::Response r;
  r.status = status;
  r.body = body;  // copied by send()
  res.send(r);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = argc > 1 ? argv[1] : "127.0.0.1:8083";
  const auto colon = listen.rfind(':');
  userd::ServerConfig cfg;
  cfg.host = listen.substr(0, colon);
  cfg.port = static_cast<std::uint16_t>(std::stoi(listen.substr(colon + 1)));
  cfg.threads = 1;  // one loop thread: the map below needs no lock
  if (argc > 2) cfg.backend = std::string(argv[2]) == "epoll" ? userd::BackendKind::Epoll : userd::BackendKind::IoUring;

  std::map<unsigned long, User> users;
  unsigned long next_id = 1;
  simdjson::dom::parser parser;

  userd::Router router;
  router.use([](const userd::Request& req, userd::Responder& res) {
    if (req.header("x-api-key") == "secret") return true;
    answer(res, 401, R"({"error":"unauthorized"})");
    return false;
  });
  router.get("/v1/users", [&](const userd::Request& req, userd::Responder res) {
    const std::string_view prefix = req.query_param("prefix");
    std::string body = "[";
    for (const auto& [id, u] : users)
      if (std::string_view(u.name).substr(0, prefix.size()) == prefix) {
        if (body.size() > 1) body += ',';
        body += json_user(id, u);
      }
    body += ']';
    answer(res, 200, body);
  });
  router.get("/v1/users/{id}", [&](const userd::Request& req, userd::Responder res) {
    const auto it = users.find(std::strtoul(std::string(req.param("id")).c_str(), nullptr, 10));
    if (it == users.end()) return answer(res, 404, R"({"error":"no such user"})");
    answer(res, 200, json_user(it->first, it->second));
  });
  router.post("/v1/users", [&](const userd::Request& req, userd::Responder res) {
    simdjson::dom::element doc;
    std::string_view name, email;
    if (parser.parse(req.body().data(), req.body().size()).get(doc) || doc["name"].get(name) ||
        doc["email"].get(email) || name.empty())
      return answer(res, 400, R"({"error":"expected {\"name\":...,\"email\":...}"})");
    const unsigned long id = next_id++;
    users[id] = User{std::string(name), std::string(email)};
    answer(res, 201, json_user(id, users[id]));
  });
  router.del("/v1/users/{id}", [&](const userd::Request& req, userd::Responder res) {
    if (!users.erase(std::strtoul(std::string(req.param("id")).c_str(), nullptr, 10)))
      return answer(res, 404, R"({"error":"no such user"})");
    userd::Response r;
    r.status = 204;
    res.send(r);
  });

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  userd::Server server(cfg, std::move(router));
  if (auto r = server.start(); !r) {
    std::fprintf(stderr, "rest: cannot start: %s\n", r.error().what);
    return 1;
  }
  std::fprintf(stderr, "rest: listening on %s:%u (%.*s)\n", cfg.host.c_str(), server.port(),
               int(server.backend().size()), server.backend().data());
  int sig;
  sigwait(&set, &sig);
  server.stop();
  server.wait();
  return 0;
}
