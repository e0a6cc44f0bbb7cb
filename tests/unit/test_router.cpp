// tests/unit/test_router.cpp: exact paths, 404 versus 405, HEAD served by GET, Allow values.
#include <doctest/doctest.h>

#include <stdexcept>

#include "libuserd/http/parser.hpp"
#include "libuserd/server/access.hpp"
#include "userd/router.hpp"

using namespace userd;

TEST_CASE("router finds exact paths and tells 404 from 405") {
  Router r;
  int hit = 0;
  r.get("/v1/user", [&](const Request&, Responder) { hit = 1; });
  r.route("POST", "/v1/user", [&](const Request&, Responder) { hit = 2; });
  r.get("/v1/avatar", [&](const Request&, Responder) { hit = 3; });

  Router::Match m = r.find("GET", "/v1/user");
  REQUIRE(m.handler);
  m = r.find("POST", "/v1/user");
  REQUIRE(m.handler);
  CHECK(m.allow == "GET, HEAD, POST");

  m = r.find("DELETE", "/v1/user");
  CHECK_FALSE(m.handler);
  CHECK(m.allow == "GET, HEAD, POST");

  m = r.find("GET", "/v1/users");
  CHECK_FALSE(m.handler);
  CHECK(m.allow.empty());
  CHECK_FALSE(r.find("GET", "/v1/use").handler);
  CHECK_FALSE(r.find("GET", "/V1/USER").handler);  // paths are case-sensitive
}

TEST_CASE("router answers HEAD with the GET handler") {
  Router r;
  r.get("/x", [](const Request&, Responder) {});
  Router::Match m = r.find("HEAD", "/x");
  CHECK(m.handler);
  CHECK(r.find("POST", "/x").allow == "GET, HEAD");
}

TEST_CASE("router refuses a route registered twice, and one of the same method and shape") {
  Router r;
  r.get("/x", [](const Request&, Responder) {});
  CHECK_THROWS_AS(r.get("/x", [](const Request&, Responder) {}), std::invalid_argument);
  r.get("/users/{id}", [](const Request&, Responder) {});
  CHECK_THROWS_AS(r.get("/users/{name}", [](const Request&, Responder) {}), std::invalid_argument);
  r.post("/users/{name}", [](const Request&, Responder) {});  // another method: no conflict
  r.get("/files/{*rest}", [](const Request&, Responder) {});
  CHECK_THROWS_AS(r.get("/files/{*path}", [](const Request&, Responder) {}), std::invalid_argument);
  CHECK(r.find("POST", "/x").allow == "GET, HEAD");
}

namespace {
// Which handler a route table picks, by the number it sets, and what it captured.
struct Table {
  Router r;
  int hit = 0;
  Router::Match m{};
  RouteParams p;
  void add(std::string_view method, std::string_view pattern, int id) {
    r.route(method, pattern, [this, id](const Request&, Responder) { hit = id; });
  }
  int pick(std::string_view method, std::string_view path) {
    hit = 0;
    m = r.find(method, path, p);
    http::RequestHead head;
    if (m.handler) (*m.handler)(server::Access::request(head, {}, "test"), Responder());
    return hit;
  }
  std::string param(std::string_view name) const {
    for (std::size_t i = 0; i < p.count; ++i)
      if (p.names[i] == name) return std::string(p.values[i]);
    return "<none>";
  }
};
}  // namespace

TEST_CASE("router patterns: {name} takes one non-empty segment, {*name} the rest, possibly empty") {
  Table t;
  t.add("GET", "/v1/user/{id}", 1);
  t.add("GET", "/files/{*rest}", 2);
  t.add("GET", "/v1/user/{id}/posts/{post}", 3);
  CHECK(t.pick("GET", "/v1/user/7") == 1);
  CHECK(t.param("id") == "7");
  CHECK(t.pick("GET", "/v1/user/7/posts/9") == 3);
  CHECK((t.param("id") == "7" && t.param("post") == "9"));
  CHECK(t.pick("GET", "/v1/user/") == 0);  // an empty segment is no {id}
  CHECK(t.pick("GET", "/v1/user") == 0);
  CHECK(t.pick("GET", "/v1/user/7/") == 0);
  CHECK(t.pick("GET", "/files/a/b.txt") == 2);
  CHECK(t.param("rest") == "a/b.txt");
  CHECK(t.pick("GET", "/files/") == 2);
  CHECK(t.param("rest") == "");
  CHECK(t.pick("GET", "/files") == 2);
  CHECK(t.param("rest") == "");
  CHECK(t.pick("GET", "/files//x") == 2);
  CHECK(t.param("rest") == "/x");
}

TEST_CASE("router precedence: static beats a parameter, a parameter beats a catch-all, with backtracking") {
  Table t;
  t.add("GET", "/users/me", 1);
  t.add("GET", "/users/{id}", 2);
  t.add("GET", "/users/{*rest}", 3);
  t.add("GET", "/users/me/settings", 4);
  t.add("GET", "/users/{id}/posts", 5);
  CHECK(t.pick("GET", "/users/me") == 1);
  CHECK(t.pick("GET", "/users/you") == 2);
  CHECK(t.pick("GET", "/users/me/settings") == 4);
  CHECK(t.pick("GET", "/users/me/posts") == 5);  // static "me" leads nowhere for posts: back up to {id}
  CHECK(t.param("id") == "me");
  CHECK(t.pick("GET", "/users/me/other") == 3);  // neither: the catch-all
  CHECK(t.param("rest") == "me/other");
  CHECK(t.pick("GET", "/users/") == 3);
}

TEST_CASE("router: 404 and 405 per pattern, with Allow; HEAD falls back to GET") {
  Table t;
  t.add("GET", "/items/{id}", 1);
  t.add("PUT", "/items/{id}", 2);
  t.add("DELETE", "/items/{key}", 3);  // same shape, another method and name: no conflict
  CHECK(t.pick("PUT", "/items/3") == 2);
  CHECK(t.pick("DELETE", "/items/3") == 3);
  CHECK(t.param("key") == "3");
  CHECK(t.pick("HEAD", "/items/3") == 1);
  CHECK(t.pick("POST", "/items/3") == 0);
  CHECK(t.m.allow == "GET, HEAD, PUT, DELETE");
  CHECK(t.pick("POST", "/elsewhere") == 0);
  CHECK(t.m.allow.empty());
  CHECK(t.m.route == t.r.route_count());
  CHECK(t.pick("GET", "items/3") == 0);  // not origin-form
}

TEST_CASE("router: the root, trailing slashes and static segments match exactly") {
  Table t;
  t.add("GET", "/", 1);
  t.add("GET", "/a/", 2);
  t.add("GET", "/a", 3);
  CHECK(t.pick("GET", "/") == 1);
  CHECK(t.pick("GET", "/a/") == 2);
  CHECK(t.pick("GET", "/a") == 3);
  CHECK(t.pick("GET", "//") == 0);
  CHECK(t.pick("GET", "/A") == 0);
}

TEST_CASE("router refuses malformed patterns when they are added") {
  Router r;
  auto h = [](const Request&, Responder) {};
  for (const char* bad : {"", "x", "/a/{}", "/a/{*}", "/a/{*rest}/b", "/a/{x", "/a/x}", "/a/b{x}", "/{a}/{a}",
                          "/{a/b}"})
    CHECK_THROWS_AS_MESSAGE(r.get(bad, h), std::invalid_argument, bad);
  std::string many;
  for (std::size_t i = 0; i <= kMaxRouteParams; ++i) many += "/{p" + std::to_string(i) + "}";
  CHECK_THROWS_AS(r.get(many, h), std::invalid_argument);
  CHECK(r.route_count() == 0);
}

TEST_CASE("router with a thousand routes finds each, and nothing else") {
  Table t;
  for (int i = 0; i < 1000; ++i) t.add("GET", "/r" + std::to_string(i) + (i % 2 ? "/{id}" : "/x"), i + 1);
  for (int i = 0; i < 1000; ++i) {
    const std::string path = "/r" + std::to_string(i) + (i % 2 ? "/42" : "/x");
    REQUIRE(t.pick("GET", path) == i + 1);
  }
  CHECK(t.pick("GET", "/r1000/x") == 0);
  CHECK(t.r.route_count() == 1000);
}

// Found by the attack: with GET /a/{x} and POST /a/b, PUT /a/b answered "Allow: POST" though GET and HEAD /a/b
// are served (by the parameter route). RFC 9110 15.5.6: Allow lists the methods the target supports.
TEST_CASE("a 405's Allow lists every method any route matching the path serves") {
  userd::Router r;
  auto h = [](const userd::Request&, userd::Responder) {};
  r.get("/a/{x}", h);
  r.post("/a/b", h);
  r.del("/a/{*rest}", h);
  auto m = r.find("PUT", "/a/b");
  CHECK(m.handler == nullptr);
  CHECK(m.allow == "GET, HEAD, POST, DELETE");
  CHECK(r.find("GET", "/a/b").handler != nullptr);  // GET /a/b is served, by the parameter route
  CHECK(r.find("PUT", "/a/c").allow == "GET, HEAD, DELETE");
  CHECK(r.find("PUT", "/a/c/d").allow == "DELETE");
  CHECK(r.find("GET", "/nope").allow.empty());
}
