// server/server.cpp: Server: resolves the address, binds one SO_REUSEPORT listener per thread (the first picks
// the port when 0 was asked for), starts the workers and chooses the backend once for all of them.
#include "userd/server.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <future>
#include <system_error>
#include <thread>

#include "libuserd/io/epoll_backend.hpp"
#include "libuserd/io/uring_backend.hpp"
#include "libuserd/server/compression.hpp"
#include "libuserd/server/worker.hpp"
#include "libuserd/tls/tls.hpp"

namespace userd {

struct Server::Impl {
  ServerConfig cfg;
  Router router;
  std::vector<upstream::Target> upstreams;  // resolved once; read by every worker
  std::vector<server::Cidr> proxy_from;     // parsed once; read by every worker
  std::unique_ptr<server::CompressShared> compress;  // static bodies compressed once; read by every worker
  std::vector<std::unique_ptr<server::Worker>> workers;
  std::vector<std::thread> threads;
  std::uint16_t port = 0;
  std::uint16_t tls_port = 0;
  std::string_view backend;
  bool started = false;
};

namespace {

unsigned cpus_allowed() noexcept {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return unsigned(CPU_COUNT(&set));
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? unsigned(n) : 1;
}

// Listen addresses are numeric (or localhost). Upstream names: resolve_all.
Result<sockaddr_storage> resolve(const std::string& host, std::uint16_t port, socklen_t& len) noexcept {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  hints.ai_flags |= AI_PASSIVE | (host == "localhost" ? 0 : AI_NUMERICHOST);
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || !res) return fail(Errc::BadInput, EINVAL, "resolve address");
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  freeaddrinfo(res);
  return ss;
}

Result<int> make_listener(const sockaddr_storage& addr, socklen_t len) noexcept {
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::Io, errno, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // One listener per thread: the kernel spreads new connections across them by hash.
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    int e = errno;
    ::close(fd);
    return fail(Errc::Io, e, "setsockopt SO_REUSEPORT");
  }
  // Accepted sockets inherit this: responses go out whole in one send, so Nagle only adds delay.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) < 0) {
    int e = errno;
    ::close(fd);
    return fail(Errc::Io, e, "bind");
  }
  if (::listen(fd, SOMAXCONN) < 0) {
    int e = errno;
    ::close(fd);
    return fail(Errc::Io, e, "listen");
  }
  return fd;
}

std::uint16_t bound_port(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// Any process of the same user may join an SO_REUSEPORT group and silently take a share of the connections. A
// bind without SO_REUSEPORT fails with EADDRINUSE while anyone listens there, group or not, so a probe tells
// whether the port is free before the group is made. (A window of a few microseconds stays between the probe and
// the group's first bind; sharing on purpose skips the probe: ServerConfig::reuse_port.)
Result<void> probe_free(const sockaddr_storage& addr, socklen_t len) noexcept {
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::Io, errno, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // TIME_WAIT leftovers are not a holder
  const int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len);
  const int e = errno;
  ::close(fd);
  if (rc < 0) return fail(Errc::Io, e, e == EADDRINUSE ? "bind (another process listens there)" : "bind");
  return {};
}

// n listeners on host:port sharing one port (SO_REUSEPORT), appended to fds; port tells which one it is. Unless
// shared is set, the port must be free of other listeners first.
Result<void> bind_all(const std::string& host, std::uint16_t& port, unsigned n, bool shared,
                      std::vector<int>& fds) noexcept {
  socklen_t len = 0;
  auto addr = resolve(host, port, len);
  if (!addr) return Unexpected<Error>{addr.error()};
  if (port != 0 && !shared)
    if (auto free = probe_free(*addr, len); !free) return free;
  for (unsigned i = 0; i < n; ++i) {
    auto fd = make_listener(*addr, len);
    if (!fd) return Unexpected<Error>{fd.error()};
    fds.push_back(*fd);
    if (i == 0) {  // the others must share the port the first one got
      port = bound_port(*fd);
      if (addr->ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&*addr)->sin6_port = htons(port);
      else reinterpret_cast<sockaddr_in*>(&*addr)->sin_port = htons(port);
    }
  }
  return {};
}

// Every address an upstream name resolves to (a numeric one: itself), without repeats. None: *why says why,
// in the resolver's words.
std::vector<upstream::Target::Address> resolve_all(const std::string& host, std::uint16_t port, const char** why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0 || !res) {
    *why = rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
    return {};
  }
  std::vector<upstream::Target::Address> out = upstream::unique_addresses(res);
  freeaddrinfo(res);
  return out;
}


Result<std::unique_ptr<io::Backend>> make_backend(const ServerConfig& cfg, BackendKind kind) noexcept {
  if (kind == BackendKind::Epoll) {
    io::EpollConfig ec;
    ec.buffers = cfg.recv_buffers;
    ec.buffer_size = cfg.recv_buffer_size;
    return io::make_epoll_backend(ec);
  }
  io::UringConfig uc;
  uc.buffers = cfg.recv_buffers;
  uc.buffer_size = cfg.recv_buffer_size;
  return io::make_uring_backend(uc);
}

std::string io_uring_disabled_sysctl() {
  std::FILE* f = std::fopen("/proc/sys/kernel/io_uring_disabled", "r");
  if (!f) return {};
  int v = -1;
  int got = std::fscanf(f, "%d", &v);
  std::fclose(f);
  return got == 1 ? ", kernel.io_uring_disabled=" + std::to_string(v) : std::string();
}

// A throw-away ring tells whether io_uring works here; the loop threads then make their own. Deciding once keeps
// every thread on the same backend. The probe runs on a thread of its own: its ring submits (a self-test receive,
// the wake read), and tearing it down queues io_uring task work to the submitting thread, which interrupts that
// thread's next blocking call with a timeout (EINTR from a recv with SO_RCVTIMEO). That must not be the caller's.
Result<BackendKind> choose_backend(const ServerConfig& cfg) {
  if (cfg.backend == BackendKind::Epoll) return BackendKind::Epoll;
  Result<void> probe;
  try {
    std::thread([&] {
      auto ring = make_backend(cfg, BackendKind::IoUring);
      if (!ring) probe = Unexpected<Error>{ring.error()};
    }).join();
  } catch (const std::system_error& e) {
    return fail(Errc::NoMemory, e.code().value(), "probe thread");
  }
  if (probe) return BackendKind::IoUring;
  const Error e = probe.error();
  if (cfg.backend == BackendKind::IoUring) return Unexpected<Error>{Error{Errc::Unsupported, e.sys, e.what}};
  std::string line = "io_uring unavailable (" + std::string(e.what) + ": " + std::strerror(e.sys) +
                     io_uring_disabled_sysctl() + "); serving on epoll";
  if (cfg.log) cfg.log(line);
  else std::fprintf(stderr, "userd: %s\n", line.c_str());
  return BackendKind::Epoll;
}

}  // namespace

std::string describe_backends() { return io::describe_uring() + "; epoll: always"; }

Server::Server(ServerConfig config, Router router) : impl_(std::make_unique<Impl>()) {
  impl_->cfg = std::move(config);
  impl_->router = std::move(router);
}

Server::~Server() {
  stop();
  wait();
  impl_->workers.clear();
}

Result<void> Server::start() {
  Impl& s = *impl_;
  if (s.started) return fail(Errc::BadInput, EALREADY, "start");
  const unsigned n = s.cfg.threads ? s.cfg.threads : cpus_allowed();
  // A mistake in the configuration is an error, not a reason for io_uring to be refused and epoll chosen.
  const unsigned nb = s.cfg.recv_buffers;
  if (nb == 0 || (nb & (nb - 1)) || nb > 32768) return fail(Errc::BadInput, EINVAL, "recv_buffers (a power of two, 1-32768)");
  if (s.cfg.recv_buffer_size < 512 || s.cfg.recv_buffer_size > (1u << 20))
    return fail(Errc::BadInput, EINVAL, "recv_buffer_size (512 B - 1 MiB)");
  s.proxy_from.clear();
  for (const std::string& c : s.cfg.proxy_from) {
    server::Cidr parsed;
    if (!server::parse_cidr(c, parsed)) return fail(Errc::BadInput, EINVAL, "proxy_from (an address or CIDR)");
    s.proxy_from.push_back(parsed);
  }
  s.compress.reset();
  if (s.cfg.compress.enabled) {
    std::string why;
    try {
      s.compress = server::make_compress_shared(s.cfg.compress, why);
    } catch (const std::bad_alloc&) {
      return fail(Errc::NoMemory, ENOMEM, "compress static bodies");
    }
    if (!s.compress) {
      if (s.cfg.log) s.cfg.log(why);
      else std::fprintf(stderr, "userd: %s\n", why.c_str());
      return fail(Errc::BadInput, EINVAL, "compress codings (br, zstd, gzip, each once)");
    }
  }
  auto kind = choose_backend(s.cfg);
  if (!kind) return Unexpected<Error>{kind.error()};
  s.upstreams.clear();
  if (s.cfg.upstreams.size() > 0xffff) return fail(Errc::BadInput, EINVAL, "upstreams (at most 65535)");
  for (const UpstreamConfig& u : s.cfg.upstreams) {
    // An upstream connection's tag holds its index in 16 bits: more would alias another connection's.
    if (u.max_conns == 0 || u.max_conns > 0xffff) return fail(Errc::BadInput, EINVAL, "upstream max_conns (1-65535)");
    upstream::Target t;
    t.cfg = u;
    const char* why = "no address";
    t.addrs = resolve_all(u.host, u.port, &why);
    if (t.addrs.empty()) {
      Error e{Errc::BadInput, 0, "resolve upstream address"};
      e.detail = why;
      return Unexpected<Error>{e};
    }
    const bool v6 = u.host.find(':') != std::string::npos;
    t.host_header = (v6 ? "[" + u.host + "]" : u.host) + ":" + std::to_string(u.port);
    if (u.tls) {
      std::string why;
      t.tls = tls::client_context(u.ca_file, u.insecure, why);
      if (!t.tls) {
        if (s.cfg.log) s.cfg.log("upstream TLS: " + why);
        else std::fprintf(stderr, "userd: upstream TLS: %s\n", why.c_str());
        return fail(Errc::BadInput, 0, "upstream tls");
      }
    }
    s.upstreams.push_back(std::move(t));
  }
  tls::Context tls_ctx;
  if (s.cfg.tls) {
    std::string why;
    tls_ctx = tls::server_context(*s.cfg.tls, why, s.cfg.http2);
    if (!tls_ctx) {
      if (s.cfg.log) s.cfg.log("TLS: " + why);
      else std::fprintf(stderr, "userd: TLS: %s\n", why.c_str());
      return fail(Errc::BadInput, 0, "tls");
    }
  }
  if (!s.cfg.plain && !s.cfg.tls) return fail(Errc::BadInput, EINVAL, "no listener (plain is off and tls is unset)");
  std::vector<int> fds, tls_fds;
  auto close_all = [&] {
    for (int fd : fds) ::close(fd);
    for (int fd : tls_fds) ::close(fd);
  };
  if (!s.cfg.plain) {
    fds.assign(n, -1);
  } else if (!s.cfg.listen_fds.empty()) {  // inherited: each thread its own descriptor, shared sockets dup'd
    for (unsigned i = 0; i < n; ++i) {
      int fd = i < s.cfg.listen_fds.size() ? s.cfg.listen_fds[i] : fcntl(s.cfg.listen_fds[i % s.cfg.listen_fds.size()], F_DUPFD_CLOEXEC, 3);
      if (fd < 0) {
        close_all();
        return fail(Errc::Io, errno, "dup inherited socket");
      }
      fcntl(fd, F_SETFD, FD_CLOEXEC);
      fds.push_back(fd);
    }
    s.port = bound_port(fds[0]);
  }
  if (fds.empty()) {
    s.port = s.cfg.port;
    if (auto r = bind_all(s.cfg.host, s.port, n, s.cfg.reuse_port, fds); !r) {
      close_all();
      return r;
    }
  }
  if (s.cfg.tls) {
    s.tls_port = s.cfg.tls->port;
    if (auto r = bind_all(s.cfg.tls->host, s.tls_port, n, s.cfg.reuse_port, tls_fds); !r) {
      close_all();
      return r;
    }
  } else {
    tls_fds.assign(n, -1);
  }

  // Each backend is made on its own thread (io_uring's SINGLE_ISSUER binds a ring to its creator); start()
  // waits for every thread's verdict so a refusal is reported here, not lost in a thread.
  std::vector<std::promise<Result<std::string_view>>> verdicts(n);
  for (unsigned i = 0; i < n; ++i) {
    s.workers.push_back(std::make_unique<server::Worker>(s.cfg, s.router, fds[i], tls_fds[i], tls_ctx, s.upstreams,
                                                       &s.proxy_from, s.compress.get()));
    server::Worker* w = s.workers.back().get();
    w->set_index(i);
    std::promise<Result<std::string_view>>* verdict = &verdicts[i];
    s.threads.emplace_back([w, verdict, &cfg = s.cfg, kind = *kind] {
      auto backend = make_backend(cfg, kind);
      if (!backend) {
        verdict->set_value(Unexpected<Error>{backend.error()});
        return;
      }
      verdict->set_value((*backend)->name());
      w->run(std::move(*backend));
    });
  }
  s.started = true;
  Result<void> outcome;
  for (auto& v : verdicts) {
    auto r = v.get_future().get();
    if (!r) outcome = Unexpected<Error>{r.error()};
    else s.backend = *r;
  }
  if (!outcome) {
    stop();
    wait();
  }
  return outcome;
}

std::uint16_t Server::port() const noexcept { return impl_->port; }
std::uint16_t Server::tls_port() const noexcept { return impl_->tls_port; }

Result<void> Server::reload_tls(std::string* why) {
  Impl& s = *impl_;
  std::string reason;
  if (!s.cfg.tls || !s.started) {
    if (why) *why = "TLS is not configured";
    return fail(Errc::BadInput, EINVAL, "tls");
  }
  tls::Context ctx = tls::server_context(*s.cfg.tls, reason, s.cfg.http2);
  if (!ctx) {
    if (why) *why = reason;
    return fail(Errc::BadInput, 0, "tls");
  }
  for (auto& w : s.workers) w->replace_tls(ctx);
  return {};
}

std::string check_tls(const TlsConfig& cfg) {
  std::string why;
  return tls::server_context(cfg, why) ? std::string() : why;
}

std::string describe_tls() { return tls::describe(); }
std::string_view Server::backend() const noexcept { return impl_->backend; }
unsigned Server::threads() const noexcept { return unsigned(impl_->workers.size()); }

bool Server::post(unsigned loop, std::function<void()> fn) {
  Impl& s = *impl_;
  if (!s.started || loop >= s.workers.size()) return false;
  return s.workers[loop]->run_soon(std::move(fn));
}

namespace {
constexpr const char* kUpstreamResults[] = {"ok", "unreachable", "timeout", "closed", "bad_response", "too_large",
                                            "overloaded", "body_failed"};

void series(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, const std::string& name_labels, std::uint64_t v) {
  out += name_labels;
  out += ' ';
  out += std::to_string(v);
  out += '\n';
}
}  // namespace

std::string Server::metrics_text() const {
  const Impl& s = *impl_;
  std::string out;
  out.reserve(4096);
  const std::size_t routes = s.router.route_count();
  const std::size_t codes = metrics::kCodeSlots;
  auto sum = [&](auto&& get) {
    std::uint64_t v = 0;
    for (const auto& w : s.workers) v += get(*w);
    return v;
  };

  series(out, "userd_requests_total", "counter", "Requests answered, by route and status code.");
  for (std::size_t r = 0; r <= routes; ++r) {
    for (std::size_t c = 0; c < codes; ++c) {
      const std::uint64_t v = sum([&](const server::Worker& w) { return w.metrics().requests[r * codes + c].get(); });
      if (!v) continue;
      std::string labels = "userd_requests_total{route=\"";
      labels += r < routes ? std::string(s.router.route_path(r)) : std::string("other");
      labels += "\",code=\"";
      labels += metrics::code_label(c);
      labels += "\"}";
      sample(out, labels, v);
    }
  }

  series(out, "userd_requests_by_protocol_total", "counter", "Requests answered, by the protocol that carried them.");
  for (std::size_t p = 0; p < metrics::kProtocols.size(); ++p)
    sample(out, std::string("userd_requests_by_protocol_total{protocol=\"") + metrics::kProtocols[p] + "\"}",
           sum([&](const server::Worker& w) { return w.metrics().by_protocol[p].get(); }));
  series(out, "userd_http2_connections_total", "counter", "Connections that spoke HTTP/2 (prior knowledge or ALPN h2).");
  sample(out, "userd_http2_connections_total", sum([&](const server::Worker& w) { return w.metrics().http2_connections.get(); }));

  series(out, "userd_request_duration_seconds", "histogram", "Time from a request's dispatch to its response being queued.");
  std::uint64_t cumulative = 0;
  for (std::size_t b = 0; b <= metrics::kBucketsUs.size(); ++b) {
    cumulative += sum([&](const server::Worker& w) { return w.metrics().duration_buckets[b].get(); });
    char le[32];
    if (b < metrics::kBucketsUs.size()) std::snprintf(le, sizeof le, "%g", double(metrics::kBucketsUs[b]) / 1e6);
    else std::snprintf(le, sizeof le, "+Inf");
    sample(out, std::string("userd_request_duration_seconds_bucket{le=\"") + le + "\"}", cumulative);
  }
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.6f",
                double(sum([](const server::Worker& w) { return w.metrics().duration_sum_us.get(); })) / 1e6);
  out += "userd_request_duration_seconds_sum ";
  out += seconds;
  out += '\n';
  sample(out, "userd_request_duration_seconds_count", sum([](const server::Worker& w) { return w.metrics().duration_count.get(); }));

  series(out, "userd_connections_open", "gauge", "Client connections open now.");
  sample(out, "userd_connections_open", sum([](const server::Worker& w) { return w.metrics().connections_open.get(); }));
  series(out, "userd_connections_accepted_total", "counter", "Client connections accepted.");
  sample(out, "userd_connections_accepted_total",
         sum([](const server::Worker& w) { return w.metrics().connections_accepted.get(); }));
  series(out, "userd_connections_refused_total", "counter", "Connections closed at once for --max-conns.");
  sample(out, "userd_connections_refused_total",
         sum([](const server::Worker& w) { return w.metrics().connections_refused.get(); }));
  struct Bound {
    const char* name;
    metrics::Counter metrics::ThreadMetrics::*counter;
    const char* help;
  };
  const Bound bounds[] = {
      {"userd_send_timeouts_total", &metrics::ThreadMetrics::send_timeouts,
       "Connections closed because their output made no progress for the send timeout."},
      {"userd_handler_timeouts_total", &metrics::ThreadMetrics::handler_timeouts,
       "Requests answered 503 because their handler did not answer in time."},
      {"userd_recv_pauses_total", &metrics::ThreadMetrics::recv_pauses,
       "Times a connection stopped being read because too much was queued (backpressure)."},
      {"userd_alloc_failures_total", &metrics::ThreadMetrics::alloc_failures,
       "Connections closed because memory could not be allocated."},
      {"userd_bad_responses_total", &metrics::ThreadMetrics::bad_responses,
       "Handler responses refused with 500 (a bad status, CR, LF or NUL in a header, contradictory framing)."},
      {"userd_tls_handshakes_total", &metrics::ThreadMetrics::tls_handshakes, "TLS handshakes completed."},
      {"userd_tls_resumed_total", &metrics::ThreadMetrics::tls_resumed,
       "TLS handshakes that resumed a session (a ticket) instead of a full handshake."},
      {"userd_tls_handshake_failures_total", &metrics::ThreadMetrics::tls_handshake_failures,
       "TLS connections closed before their handshake completed (bad, refused or stalled)."},
      {"userd_tls_handshakes_refused_total", &metrics::ThreadMetrics::tls_handshakes_refused,
       "TLS connections closed at accept because --max-tls-handshakes were in progress."},
      {"userd_tls_record_failures_total", &metrics::ThreadMetrics::tls_record_failures,
       "TLS connections closed after their handshake: a bad record, a renegotiation attempt, a close inside a record."},
      {"userd_proxy_header_failures_total", &metrics::ThreadMetrics::proxy_header_failures,
       "PROXY protocol connections closed unanswered: a malformed, oversized, truncated or late header."},
      {"userd_proxy_refused_total", &metrics::ThreadMetrics::proxy_refused,
       "PROXY protocol connections closed at accept: the source is not in --proxy-from."}};
  for (const Bound& b : bounds) {
    series(out, b.name, "counter", b.help);
    sample(out, b.name, sum([&](const server::Worker& w) { return (w.metrics().*b.counter).get(); }));
  }

  series(out, "userd_upstream_requests_total", "counter", "Upstream exchanges, by result.");
  series(out, "userd_upstream_pool_connections", "gauge", "Upstream connections open now (idle or busy).");
  std::string pools, retries;
  for (std::size_t u = 0; u < s.upstreams.size(); ++u) {
    auto pool_sum = [&](auto&& get) {
      std::uint64_t v = 0;
      for (const auto& w : s.workers)
        if (w->backend() && u < w->pools().size()) v += get(w->pools()[u]->stats());
      return v;
    };
    const std::string up = "upstream=\"" + s.upstreams[u].host_header + "\"";
    for (std::size_t k = 0; k < std::size(kUpstreamResults); ++k) {
      const std::uint64_t v = k == 0 ? pool_sum([](const upstream::PoolStats& p) { return p.ok.get(); })
                                     : pool_sum([&](const upstream::PoolStats& p) { return p.errors[k].get(); });
      sample(out, "userd_upstream_requests_total{" + up + ",result=\"" + kUpstreamResults[k] + "\"}", v);
    }
    sample(pools, "userd_upstream_pool_connections{" + up + "}",
           pool_sum([](const upstream::PoolStats& p) { return p.open.get(); }));
    sample(retries, "userd_upstream_retries_total{" + up + "}",
           pool_sum([](const upstream::PoolStats& p) { return p.retries.get(); }));
  }
  out += pools;
  series(out, "userd_upstream_retries_total", "counter",
         "Requests sent again on a fresh connection after a reused one died before answering.");
  out += retries;

  series(out, "userd_backend_info", "gauge", "The I/O backend serving (1).");
  sample(out, std::string("userd_backend_info{backend=\"") + std::string(s.backend) + "\"}", 1);
  if (s.backend == "io_uring") {
    auto stat = [&](auto&& get) {
      std::uint64_t v = 0;
      for (const auto& w : s.workers)
        if (const io::Backend* b = w->backend()) v += get(b->stats());
      return v;
    };
    series(out, "userd_uring_submit_calls_total", "counter", "io_uring_enter calls (one per loop turn).");
    sample(out, "userd_uring_submit_calls_total", stat([](const io::BackendStats& b) { return b.submit_calls.get(); }));
    series(out, "userd_uring_sqes_total", "counter", "Submission queue entries prepared.");
    sample(out, "userd_uring_sqes_total", stat([](const io::BackendStats& b) { return b.sqes.get(); }));
    series(out, "userd_uring_enobufs_total", "counter", "Multishot receives that found no buffer and were re-armed.");
    sample(out, "userd_uring_enobufs_total", stat([](const io::BackendStats& b) { return b.enobufs.get(); }));
    series(out, "userd_uring_cq_overflows_total", "counter", "Times the completion queue overflowed.");
    sample(out, "userd_uring_cq_overflows_total", stat([](const io::BackendStats& b) { return b.cq_overflows.get(); }));
    series(out, "userd_uring_submit_errors_total", "counter", "Submissions the kernel refused (short of memory).");
    sample(out, "userd_uring_submit_errors_total", stat([](const io::BackendStats& b) { return b.submit_errors.get(); }));
  }
  return out;
}

void Server::stop() noexcept {
  for (auto& w : impl_->workers) w->stop();
}

void Server::wait() {
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
  // The workers stay until the Server goes: a Responder some other thread still holds says false (the server
  // stopped) instead of reaching freed memory.
  impl_->threads.clear();
}

}  // namespace userd
