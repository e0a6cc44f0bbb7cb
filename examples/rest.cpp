// examples/rest.cpp: a small REST service on libuserd: route parameters, query values, a JSON body parsed with
// simdjson, answers formatted with fmt, and an API-key middleware. Users live in memory, per process; the
// loop runs on one thread, so the handlers share the map without a lock.
// usage: rest [HOST:PORT] [io_uring|epoll]      (prints "listening on HOST:PORT"; every request needs
//        X-Api-Key: secret)
//   GET    /v1/users?prefix=A   the users whose name starts with prefix (all without it)
//   GET    /v1/users/{id}       one user, 404 when there is none
//   POST   /v1/users            {"name":"Ada","email":"ada@example.org"} -> 201 with its id
//   DELETE /v1/users/{id}       204, or 404
#include <cstdio>
#include <charconv>
#include <map>
#include <string>

#include <fmt/format.h>
#include <simdjson.h>

#include "serve.hpp"
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

// An id is decimal digits only, at most 18 of them: "1abc", "+1", " 1" and "1%2F..%2Fadmin" (decoded
// "1/../admin") name no user, rather than user 1. 0 when the text is not an id.
unsigned long parse_id(std::string_view s) {
  if (s.empty() || s.size() > 18) return 0;
  unsigned long id = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
  return ec == std::errc() && end == s.data() + s.size() && s.front() != '+' ? id : 0;
}

void answer(userd::Responder& res, int status, const std::string& body) {
  userd::Response r;
  r.status = status;
  r.body = body;  // copied by send()
  res.send(r);
}

}  // namespace

int main(int argc, char** argv) {
  // One loop thread (example::config's): the map below needs no lock.
  const userd::ServerConfig cfg = example::config(argc, argv, "127.0.0.1:8083");

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
    const auto it = users.find(parse_id(req.param("id")));
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
    if (!users.erase(parse_id(req.param("id"))))
      return answer(res, 404, R"({"error":"no such user"})");
    userd::Response r;
    r.status = 204;
    res.send(r);
  });

  userd::Server server(cfg, std::move(router));
  return example::serve("rest", server, cfg);
}
