// tests/unit/test_router.cpp: exact paths, 404 versus 405, HEAD served by GET, Allow values.
#include <doctest/doctest.h>

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

TEST_CASE("router replaces a handler registered twice") {
  Router r;
  int which = 0;
  r.get("/x", [&](const Request&, Responder) { which = 1; });
  r.get("/x", [&](const Request&, Responder) { which = 2; });
  Router::Match m = r.find("GET", "/x");
  REQUIRE(m.handler);
  CHECK(m.allow == "GET, HEAD");
}
