// userd/config.cpp: flag and environment parsing: strict numbers, no silent fallbacks.
#include "userd/config.hpp"

#include <fmt/format.h>

#include <charconv>

#include "libuserd/server/proxy_header.hpp"

namespace userd::app {
namespace {

bool parse_uint(std::string_view s, unsigned long max, unsigned long& out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && out <= max;
}

// Seconds, fractions allowed (tests use 0.2), more than 0 and at most a day.
std::string parse_seconds(std::string_view flag, std::string_view s, unsigned& ms) {
  double secs = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), secs);
  if (ec != std::errc() || end != s.data() + s.size() || !(secs > 0) || secs > 86400)
    return fmt::format("invalid {} '{}': expected seconds, more than 0", flag, s);
  ms = unsigned(secs * 1000 + 0.5);
  return {};
}

std::string parse_port(std::string_view s, std::uint16_t& port) {
  unsigned long v;
  if (!parse_uint(s, 65535, v)) return fmt::format("invalid port '{}': expected 0-65535", s);
  port = std::uint16_t(v);
  return {};
}

std::string check_path(std::string_view p, std::string_view what) {
  if (p.empty() || p.front() != '/') return fmt::format("invalid {} '{}': must start with '/'", what, p);
  for (char c : p)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '?')
      return fmt::format("invalid {} '{}': no spaces, controls or '?'", what, p);
  return {};
}

}  // namespace

std::string parse_listen(std::string_view s, std::string& host, std::uint16_t& port) {
  std::size_t colon = s.rfind(':');
  if (colon == std::string_view::npos) return fmt::format("invalid --listen '{}': expected HOST:PORT", s);
  std::string_view h = s.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  host = h.empty() ? "0.0.0.0" : std::string(h);
  return parse_port(s.substr(colon + 1), port);
}

std::string parse_url(std::string_view url, std::string& host, std::uint16_t& port, std::string& path, bool* tls) {
  std::string_view rest = url;
  const bool https = rest.substr(0, 8) == "https://";
  if (tls) *tls = https;
  if (rest.substr(0, 7) != "http://" && !(https && tls))
    return fmt::format("invalid --upstream '{}': expected http{}://HOST:PORT/PATH", url, tls ? "[s]" : "");
  rest.remove_prefix(https ? 8 : 7);
  std::size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (std::string e = check_path(path, "upstream path"); !e.empty()) return e;
  port = https ? 443 : 80;
  std::string_view h = authority;
  if (!authority.empty() && authority.front() == '[') {  // [v6]:port
    std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return fmt::format("invalid --upstream '{}': unclosed '['", url);
    h = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return fmt::format("invalid --upstream '{}'", url);
      if (std::string e = parse_port(after.substr(1), port); !e.empty()) return e;
    }
  } else if (std::size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    h = authority.substr(0, colon);
    if (std::string e = parse_port(authority.substr(colon + 1), port); !e.empty()) return e;
  }
  if (h.empty()) return fmt::format("invalid --upstream '{}': no host", url);
  host = std::string(h);
  return {};
}

std::string usage() {
  return "usage: userd [flags]\n"
         "Serves GET /v1/user and GET /v1/avatar (a JSON list of users) over HTTP/1.1 on io_uring, plus\n"
         "GET /healthz and GET /metrics (Prometheus). SIGTERM/SIGINT stop it gracefully; SIGHUP reloads the TLS\n"
         "certificate and key.\n"
         "\n"
         "  --listen HOST:PORT   address to listen on (env M1_DOMAIN, M1_PORT; default 0.0.0.0:8080, or none\n"
         "                       when only --tls-listen is given)\n"
         "  --tls-listen HOST:PORT  serve HTTPS there too (TLS 1.2/1.3, ALPN h2 and http/1.1); needs --tls-cert, --tls-key\n"
         "  --tls-cert FILE      PEM certificate (leaf first, then its chain); SIGHUP reloads it and the key\n"
         "  --tls-key FILE       PEM private key of --tls-cert\n"
         "  --tls-client-ca FILE mutual TLS: clients must present a certificate signed by a CA in this PEM file\n"
         "  --user-path PATH     path of the user route (env M1_PATH; default /v1/user)\n"
         "  --reuse-port         share the port with other userd processes already on it (a rolling restart);\n"
         "                       without it, a port another process listens on is refused (exit 1)\n"
         "  --threads N          loop threads (default 0: one per CPU the process may run on)\n"
         "  --backend KIND       auto, io_uring or epoll (default auto: io_uring, else epoll with a log line)\n"
         "  --data FILE          serve this JSON array of objects (default: the embedded dataset)\n"
         "  --upstream URL       proxy the user path to http[s]://HOST:PORT/PATH (env M2_DOMAIN, M2_PORT, M2_PATH;\n"
         "                       default: none, the user path serves the dataset)\n"
         "  --upstream-timeout S seconds for the whole upstream exchange, then 504 (default 2)\n"
         "  --upstream-conns N   keep-alive connections to the upstream per thread (default 64)\n"
         "  --upstream-queue N   requests that may wait for an upstream connection, per thread; beyond it 503\n"
         "                       at once (default 1024)\n"
         "  --upstream-ca FILE   verify an https upstream against these CAs (PEM) instead of the system store\n"
         "  --upstream-insecure  do not verify an https upstream's certificate (encrypts, proves nothing)\n"
         "  --no-validate        forward the upstream body without checking it is JSON (default: validate)\n"
         "  --header-timeout S   a request head must complete within S seconds of its first byte, else 408 (10)\n"
         "  --body-timeout S     a request body must complete within S seconds of its head, else 408 (30)\n"
         "  --idle-timeout S     close keep-alive connections idle this long (60)\n"
         "  --send-timeout S     close a connection whose output makes no progress this long (30)\n"
         "  --handler-timeout S  answer 503 for a request its handler has not answered in this long (30)\n"
         "  --max-conns N        connections per thread; more are accepted and closed at once (10000)\n"
         "  --max-tls-handshakes N  TLS handshakes in progress per thread; more are closed at once (512)\n"
         "  --http2 on|off       HTTP/2 beside HTTP/1.1: prior knowledge on plain ports, ALPN h2 on TLS (on)\n"
         "  --http2-max-streams N  streams an HTTP/2 client may have open at once (128)\n"
         "  --drain-timeout S    on SIGTERM/SIGINT, how long requests in flight may take to finish (10)\n"
         "  --proxy-protocol     behind a load balancer: every connection starts with a PROXY protocol header (v1\n"
         "                       or v2; haproxy send-proxy, nginx proxy_protocol), which names the client\n"
         "  --proxy-from CIDR,...  only these sources may connect to a --proxy-protocol listener (default: any)\n"
         "  --compress on|off    br, zstd or gzip for clients whose Accept-Encoding asks, JSON and text of 1 KiB\n"
         "                       or more; the dataset is compressed once, at start (on)\n"
         "  --compress-proxied on|off  compress an upstream's uncompressed body too, per request (off: proxied\n"
         "                       bodies go out as the upstream sent them)\n"
         "  --access-log PATH|-  one line per request, appended to PATH or written to stdout (off)\n"
         "  --extra-routes N     add N placeholder routes (/extra/N/{id}): to measure what routing costs (0)\n"
         "  --help               this text\n"
         "  --version            version, kernel, the io_uring features and opcodes it offers, and TLS\n"
         "Socket activation: with LISTEN_PID/LISTEN_FDS set (systemd), the inherited sockets are used instead.\n";
}

std::string parse_config(int argc, const char* const* argv, const Getenv& getenv, Config& out) {
  unsigned timeout_ms = 2000, conns = 64, queue = 1024;
  bool listen_given = false;  // a plain listener was asked for (flag or M1_*): kept beside --tls-listen
  std::string upstream_ca;
  bool upstream_insecure = false;
  auto tls = [&]() -> TlsConfig& {
    if (!out.server.tls) out.server.tls.emplace();
    return *out.server.tls;
  };
  bool tls_listen = false;
  // The seed's variables first; flags override them below.
  if (const char* d = getenv("M1_DOMAIN"); d && *d) {
    std::string_view v = d;
    for (std::string_view scheme : {"http://", "https://"})
      if (v.substr(0, scheme.size()) == scheme) v.remove_prefix(scheme.size());
    if (!v.empty() && v.back() == '/') v.remove_suffix(1);
    if (v.size() >= 2 && v.front() == '[' && v.back() == ']') v = v.substr(1, v.size() - 2);
    out.server.host = std::string(v);
    listen_given = true;
  }
  if (const char* p = getenv("M1_PORT"); p && *p) {
    if (std::string e = parse_port(p, out.server.port); !e.empty()) return "M1_PORT: " + e;
    listen_given = true;
  }
  if (const char* p = getenv("M1_PATH"); p && *p) {
    if (std::string e = check_path(p, "M1_PATH"); !e.empty()) return e;
    out.user_path = p;
  }

  // M2_DOMAIN turns the proxy on, as in the seed (M2_DOMAIN=http://127.0.0.1 M2_PORT=3000 M2_PATH=/v1/avatar).
  if (const char* d = getenv("M2_DOMAIN"); d && *d) {
    std::string url = d;
    if (url.find("://") == std::string::npos) url = "http://" + url;
    while (!url.empty() && url.back() == '/') url.pop_back();
    if (const char* p = getenv("M2_PORT"); p && *p) url += std::string(":") + p;
    const char* path = getenv("M2_PATH");
    url += path && *path ? path : "/v1/avatar";
    UpstreamConfig& u = out.server.upstreams.emplace_back();
    if (std::string e = parse_url(url, u.host, u.port, out.upstream_path, &u.tls); !e.empty())
      return "M2_DOMAIN/M2_PORT/M2_PATH: " + e;
    out.proxy = true;
  }

  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool has_value = false;
    if (std::size_t eq = arg.find('='); arg.substr(0, 2) == "--" && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto need = [&](std::string& err) -> bool {
      if (has_value) return true;
      if (i + 1 >= argc) {
        err = fmt::format("{} needs a value (see --help)", arg);
        return false;
      }
      value = argv[++i];
      return true;
    };
    std::string err;
    if (arg == "--help" || arg == "-h") {
      out.help = true;
    } else if (arg == "--version") {
      out.version = true;
    } else if (arg == "--listen") {
      if (!need(err)) return err;
      if (std::string e = parse_listen(value, out.server.host, out.server.port); !e.empty()) return e;
      listen_given = true;
    } else if (arg == "--tls-listen") {
      if (!need(err)) return err;
      if (std::string e = parse_listen(value, tls().host, tls().port); !e.empty()) return "--tls-listen: " + e;
      tls_listen = true;
    } else if (arg == "--tls-cert" || arg == "--tls-key" || arg == "--tls-client-ca") {
      if (!need(err)) return err;
      if (value.empty()) return fmt::format("{} needs a file name", arg);
      (arg == "--tls-cert" ? tls().cert_file : arg == "--tls-key" ? tls().key_file : tls().client_ca_file) = value;
    } else if (arg == "--upstream-ca") {
      if (!need(err)) return err;
      if (value.empty()) return "--upstream-ca needs a file name";
      upstream_ca = std::string(value);
    } else if (arg == "--upstream-insecure") {
      upstream_insecure = true;
    } else if (arg == "--user-path") {
      if (!need(err)) return err;
      if (std::string e = check_path(value, "--user-path"); !e.empty()) return e;
      out.user_path = std::string(value);
    } else if (arg == "--threads") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 1024, n)) return fmt::format("invalid --threads '{}': expected 0-1024", value);
      out.server.threads = unsigned(n);
    } else if (arg == "--backend") {
      if (!need(err)) return err;
      if (value == "auto") out.server.backend = BackendKind::Auto;
      else if (value == "io_uring") out.server.backend = BackendKind::IoUring;
      else if (value == "epoll") out.server.backend = BackendKind::Epoll;
      else return fmt::format("invalid --backend '{}': expected auto, io_uring or epoll", value);
    } else if (arg == "--upstream") {
      if (!need(err)) return err;
      out.server.upstreams.assign(1, UpstreamConfig{});
      UpstreamConfig& u = out.server.upstreams[0];
      if (std::string e = parse_url(value, u.host, u.port, out.upstream_path, &u.tls); !e.empty())
        return e;
      out.proxy = true;
    } else if (arg == "--upstream-timeout") {
      if (!need(err)) return err;
      if (std::string e = parse_seconds(arg, value, timeout_ms); !e.empty()) return e;
    } else if (arg == "--access-log") {
      if (!need(err)) return err;
      if (value.empty()) return "--access-log needs a path, or - for stdout";
      out.access_log = std::string(value);
    } else if (arg == "--drain-timeout") {
      if (!need(err)) return err;
      if (std::string e = parse_seconds(arg, value, out.server.drain_timeout_ms); !e.empty()) return e;
    } else if (arg == "--header-timeout" || arg == "--body-timeout" || arg == "--idle-timeout" ||
               arg == "--send-timeout" || arg == "--handler-timeout") {
      if (!need(err)) return err;
      unsigned ms;
      if (std::string e = parse_seconds(arg, value, ms); !e.empty()) return e;
      (arg == "--header-timeout"  ? out.server.header_timeout_ms
       : arg == "--body-timeout"  ? out.server.body_timeout_ms
       : arg == "--idle-timeout"  ? out.server.idle_timeout_ms
       : arg == "--send-timeout"  ? out.server.send_timeout_ms
                                  : out.server.handler_timeout_ms) = ms;
    } else if (arg == "--max-conns") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 10'000'000, n) || n == 0) return fmt::format("invalid --max-conns '{}': expected 1 or more", value);
      out.server.max_conns = unsigned(n);
    } else if (arg == "--max-tls-handshakes") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 10'000'000, n) || n == 0)
        return fmt::format("invalid --max-tls-handshakes '{}': expected 1 or more", value);
      out.server.max_tls_handshakes = unsigned(n);
    } else if (arg == "--http2") {
      if (!need(err)) return err;
      if (value != "on" && value != "off") return fmt::format("invalid --http2 '{}': expected on or off", value);
      out.server.http2 = value == "on";
    } else if (arg == "--compress" || arg == "--compress-proxied") {
      if (!need(err)) return err;
      if (value != "on" && value != "off") return fmt::format("invalid {} '{}': expected on or off", arg, value);
      (arg == "--compress" ? out.compress : out.compress_proxied) = value == "on";
    } else if (arg == "--http2-max-streams") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 1'000'000, n) || n == 0)
        return fmt::format("invalid --http2-max-streams '{}': expected 1 or more", value);
      out.server.http2_max_streams = unsigned(n);
    } else if (arg == "--upstream-conns") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 65535, n) || n == 0)
        return fmt::format("invalid --upstream-conns '{}': expected 1-65535", value);
      conns = unsigned(n);
    } else if (arg == "--upstream-queue") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 1'000'000, n) || n == 0)
        return fmt::format("invalid --upstream-queue '{}': expected 1-1000000", value);
      queue = unsigned(n);
    } else if (arg == "--extra-routes") {
      if (!need(err)) return err;
      unsigned long n;
      if (!parse_uint(value, 100'000, n)) return fmt::format("invalid --extra-routes '{}': expected 0-100000", value);
      out.extra_routes = unsigned(n);
    } else if (arg == "--proxy-protocol") {
      out.server.proxy_protocol = true;
    } else if (arg == "--proxy-from") {
      if (!need(err)) return err;
      if (value.empty()) return "--proxy-from needs addresses or CIDRs";
      out.server.proxy_from.clear();
      for (std::string_view rest = value;;) {
        const std::size_t comma = rest.find(',');
        const std::string_view one = rest.substr(0, comma);
        server::Cidr c;
        if (!server::parse_cidr(one, c))
          return fmt::format("invalid --proxy-from '{}': expected addresses or CIDRs, comma-separated", one);
        out.server.proxy_from.emplace_back(one);
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
    } else if (arg == "--reuse-port") {
      out.server.reuse_port = true;
    } else if (arg == "--no-validate") {
      out.validate = false;
    } else if (arg == "--data") {
      if (!need(err)) return err;
      if (value.empty()) return "--data needs a file name";
      out.data_file = std::string(value);
    } else {
      return fmt::format("unknown flag '{}' (see --help)", argv[i]);
    }
  }
  if (out.user_path == "/v1/avatar") return "the user path must differ from /v1/avatar";
  if (out.server.tls && !tls_listen) return "--tls-cert, --tls-key and --tls-client-ca need --tls-listen";
  if (tls_listen && (out.server.tls->cert_file.empty() || out.server.tls->key_file.empty()))
    return "--tls-listen needs --tls-cert and --tls-key";
  out.server.plain = !tls_listen || listen_given;
  if (!out.server.proxy_from.empty() && !out.server.proxy_protocol) return "--proxy-from needs --proxy-protocol";
  if (out.server.tls) out.server.tls->proxy_protocol = out.server.proxy_protocol;
  if (out.compress_proxied && !out.compress) return "--compress-proxied on needs --compress on";
  out.server.compress.enabled = out.compress;
  for (UpstreamConfig& u : out.server.upstreams) {
    u.timeout_ms = timeout_ms;
    u.max_conns = conns;
    u.max_queue = queue;
    if (u.tls) {
      u.ca_file = upstream_ca;
      u.insecure = upstream_insecure;
    }
  }
  const bool any_tls = !out.server.upstreams.empty() && out.server.upstreams[0].tls;
  if ((!upstream_ca.empty() || upstream_insecure) && !any_tls)
    return "--upstream-ca and --upstream-insecure need an https:// upstream";
  return {};
}

}  // namespace userd::app
