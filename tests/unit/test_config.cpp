// tests/unit/test_config.cpp: flags, the seed's environment variables, and which wins.
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "userd/config.hpp"

using namespace userd::app;

namespace {
struct Run {
  std::string error;
  Config cfg;
};
Run run(std::vector<const char*> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "userd");
  Run r;
  r.error = parse_config(int(args.size()), args.data(),
                         [&](const char* n) -> const char* {
                           auto it = env.find(n);
                           return it == env.end() ? nullptr : it->second.c_str();
                         },
                         r.cfg);
  return r;
}
}  // namespace

TEST_CASE("defaults listen on 0.0.0.0:8080 and serve /v1/user") {
  Run r = run({});
  CHECK(r.error.empty());
  CHECK(r.cfg.server.host == "0.0.0.0");
  CHECK(r.cfg.server.port == 8080);
  CHECK(r.cfg.user_path == "/v1/user");
}

TEST_CASE("the seed's M1_ variables set the address and path") {
  Run r = run({}, {{"M1_DOMAIN", "http://127.0.0.1"}, {"M1_PORT", "3000"}, {"M1_PATH", "/v2/user"}});
  CHECK(r.error.empty());
  CHECK(r.cfg.server.host == "127.0.0.1");
  CHECK(r.cfg.server.port == 3000);
  CHECK(r.cfg.user_path == "/v2/user");
}

TEST_CASE("flags win over the environment") {
  Run r = run({"--listen", "127.0.0.1:9000", "--user-path=/u"}, {{"M1_PORT", "3000"}, {"M1_PATH", "/v2/user"}});
  CHECK(r.error.empty());
  CHECK(r.cfg.server.port == 9000);
  CHECK(r.cfg.user_path == "/u");
}

TEST_CASE("listen accepts host:port, :port and [v6]:port") {
  std::string host;
  std::uint16_t port = 0;
  CHECK(parse_listen(":81", host, port).empty());
  CHECK((host == "0.0.0.0" && port == 81));
  CHECK(parse_listen("[::1]:82", host, port).empty());
  CHECK((host == "::1" && port == 82));
  CHECK_FALSE(parse_listen("localhost", host, port).empty());
  CHECK_FALSE(parse_listen("a:65536", host, port).empty());
  CHECK_FALSE(parse_listen("a:8o", host, port).empty());
}

TEST_CASE("bad flags and values are one clear message") {
  CHECK(run({"--bogus"}).error == "unknown flag '--bogus' (see --help)");
  CHECK(run({"--listen"}).error == "--listen needs a value (see --help)");
  CHECK(run({"--threads", "-1"}).error == "invalid --threads '-1': expected 0-1024");
  CHECK(run({}, {{"M1_PORT", "http"}}).error == "M1_PORT: invalid port 'http': expected 0-65535");
  CHECK(run({"--user-path", "v1/user"}).error.find("must start with '/'") != std::string::npos);
  CHECK(run({"--help"}).cfg.help);
}

TEST_CASE("HTTP/2 is on by default; --http2 off turns it off, and its stream bound is a flag") {
  CHECK(run({}).cfg.server.http2);
  CHECK_FALSE(run({"--http2", "off"}).cfg.server.http2);
  CHECK(run({"--http2", "on"}).cfg.server.http2);
  CHECK(run({"--http2", "yes"}).error == "invalid --http2 'yes': expected on or off");
  CHECK(run({"--http2-max-streams", "16"}).cfg.server.http2_max_streams == 16);
  CHECK(run({"--http2-max-streams", "0"}).error == "invalid --http2-max-streams '0': expected 1 or more");
}

TEST_CASE("the seed's M2_ variables turn the proxy on") {
  Run r = run({}, {{"M2_DOMAIN", "http://127.0.0.1"}, {"M2_PORT", "3000"}, {"M2_PATH", "/v1/avatar"}});
  CHECK(r.error.empty());
  CHECK(r.cfg.proxy);
  REQUIRE(r.cfg.server.upstreams.size() == 1);
  CHECK(r.cfg.server.upstreams[0].host == "127.0.0.1");
  CHECK(r.cfg.server.upstreams[0].port == 3000);
  CHECK(r.cfg.upstream_path == "/v1/avatar");
  CHECK(r.cfg.server.upstreams[0].timeout_ms == 2000);
  CHECK(r.cfg.server.upstreams[0].max_conns == 64);
  CHECK_FALSE(run({}).cfg.proxy);
}

TEST_CASE("--upstream wins over M2_ and takes its timeout and pool size") {
  Run r = run({"--upstream", "http://[::1]:4000/a/b", "--upstream-timeout", "0.25", "--upstream-conns", "8",
               "--no-validate"},
              {{"M2_DOMAIN", "other"}, {"M2_PORT", "1"}});
  CHECK(r.error.empty());
  REQUIRE(r.cfg.server.upstreams.size() == 1);
  CHECK(r.cfg.server.upstreams[0].host == "::1");
  CHECK(r.cfg.server.upstreams[0].port == 4000);
  CHECK(r.cfg.upstream_path == "/a/b");
  CHECK(r.cfg.server.upstreams[0].timeout_ms == 250);
  CHECK(r.cfg.server.upstreams[0].max_conns == 8);
  CHECK_FALSE(r.cfg.validate);
}

TEST_CASE("upstream URLs are checked") {
  std::string host, path;
  std::uint16_t port = 0;
  CHECK(parse_url("http://svc", host, port, path).empty());
  CHECK((host == "svc" && port == 80 && path == "/"));
  CHECK_FALSE(parse_url("https://svc/", host, port, path).empty());
  CHECK_FALSE(parse_url("http://:80/", host, port, path).empty());
  CHECK_FALSE(parse_url("http://svc:99999/", host, port, path).empty());
  CHECK(run({"--upstream-timeout", "0"}).error.find("invalid --upstream-timeout") == 0);
  CHECK(run({"--upstream-conns", "0"}).error.find("invalid --upstream-conns") == 0);
}

TEST_CASE("--send-timeout, --handler-timeout and --upstream-queue set their bounds") {
  Run r = run({"--send-timeout", "2.5", "--handler-timeout", "1", "--upstream", "http://127.0.0.1:3000/x",
               "--upstream-queue", "7"});
  REQUIRE(r.error.empty());
  CHECK(r.cfg.server.send_timeout_ms == 2500);
  CHECK(r.cfg.server.handler_timeout_ms == 1000);
  REQUIRE(r.cfg.server.upstreams.size() == 1);
  CHECK(r.cfg.server.upstreams[0].max_queue == 7);
  Run d = run({"--upstream", "http://127.0.0.1:3000/x"});
  CHECK(d.cfg.server.send_timeout_ms == 30000);
  CHECK(d.cfg.server.handler_timeout_ms == 30000);
  CHECK(d.cfg.server.upstreams[0].max_queue == 1024);
  for (const char* bad : {"0", "-1", "x"}) {
    CHECK(run({"--send-timeout", bad}).error.find("invalid --send-timeout") == 0);
    CHECK(run({"--handler-timeout", bad}).error.find("invalid --handler-timeout") == 0);
    CHECK(run({"--upstream-queue", bad}).error.find("invalid --upstream-queue") == 0);
  }
}

TEST_CASE("--extra-routes takes a count") {
  CHECK(run({"--extra-routes", "1000"}).cfg.extra_routes == 1000);
  CHECK(run({"--extra-routes", "x"}).error.find("invalid --extra-routes") == 0);
}

TEST_CASE("--tls-listen adds HTTPS; the plain listener stays only when asked for") {
  Run tls_only = run({"--tls-listen", "127.0.0.1:8443", "--tls-cert", "c.pem", "--tls-key", "k.pem"});
  REQUIRE(tls_only.error.empty());
  REQUIRE(tls_only.cfg.server.tls);
  CHECK(tls_only.cfg.server.tls->port == 8443);
  CHECK(tls_only.cfg.server.tls->cert_file == "c.pem");
  CHECK_FALSE(tls_only.cfg.server.plain);
  Run both = run({"--listen", ":8080", "--tls-listen", ":8443", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca",
                  "ca"});
  CHECK((both.error.empty() && both.cfg.server.plain && both.cfg.server.tls->client_ca_file == "ca"));
  Run seed = run({"--tls-listen", ":8443", "--tls-cert", "c", "--tls-key", "k"}, {{"M1_PORT", "3000"}});
  CHECK((seed.error.empty() && seed.cfg.server.plain && seed.cfg.server.port == 3000));
  CHECK(run({}).cfg.server.plain);
  CHECK_FALSE(run({}).cfg.server.tls);
  CHECK(run({"--tls-listen", ":8443"}).error == "--tls-listen needs --tls-cert and --tls-key");
  CHECK(run({"--tls-listen", ":8443", "--tls-cert", "c"}).error == "--tls-listen needs --tls-cert and --tls-key");
  CHECK(run({"--tls-cert", "c", "--tls-key", "k"}).error.find("need --tls-listen") != std::string::npos);
  CHECK(run({"--tls-listen", "nowhere"}).error.find("--tls-listen: invalid") == 0);
}

TEST_CASE("an https upstream verifies by default; --upstream-ca and --upstream-insecure need one") {
  Run r = run({"--upstream", "https://svc.internal/v1/avatar", "--upstream-ca", "ca.pem"});
  REQUIRE(r.error.empty());
  const userd::UpstreamConfig& u = r.cfg.server.upstreams[0];
  CHECK((u.tls && u.host == "svc.internal" && u.port == 443 && u.ca_file == "ca.pem" && !u.insecure));
  CHECK(run({"--upstream", "https://svc:8443/x", "--upstream-insecure"}).cfg.server.upstreams[0].insecure);
  Run env = run({}, {{"M2_DOMAIN", "https://svc"}, {"M2_PORT", "9443"}});
  CHECK((env.error.empty() && env.cfg.server.upstreams[0].tls && env.cfg.server.upstreams[0].port == 9443));
  CHECK(run({"--upstream", "http://svc/x", "--upstream-insecure"}).error.find("need an https:// upstream") !=
        std::string::npos);
  CHECK(run({"--upstream-ca", "ca.pem"}).error.find("need an https:// upstream") != std::string::npos);
  CHECK(run({"--upstream", "ftp://svc/x"}).error.find("expected http[s]://") != std::string::npos);
}

TEST_CASE("--proxy-protocol covers both listeners; --proxy-from takes addresses and CIDRs") {
  Run r = run({"--proxy-protocol", "--proxy-from", "10.0.0.0/8,::1,192.0.2.7", "--tls-listen", ":8443", "--tls-cert",
               "c.pem", "--tls-key", "k.pem", "--listen", ":8080"});
  REQUIRE(r.error.empty());
  CHECK(r.cfg.server.proxy_protocol);
  REQUIRE(r.cfg.server.tls);
  CHECK(r.cfg.server.tls->proxy_protocol);
  CHECK(r.cfg.server.proxy_from == std::vector<std::string>{"10.0.0.0/8", "::1", "192.0.2.7"});
  CHECK_FALSE(run({}).cfg.server.proxy_protocol);
  CHECK(run({"--proxy-from", "10.0.0.0/8"}).error == "--proxy-from needs --proxy-protocol");
  CHECK(run({"--proxy-protocol", "--proxy-from", "10.0.0.1/8"}).error.find("invalid --proxy-from '10.0.0.1/8'") == 0);
  CHECK(run({"--proxy-protocol", "--proxy-from", "10.0.0.0/8,,::1"}).error.find("invalid --proxy-from ''") == 0);
  CHECK(run({"--proxy-protocol", "--proxy-from", ""}).error == "--proxy-from needs addresses or CIDRs");
}
