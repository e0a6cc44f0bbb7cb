// userd/server.hpp: the embedder's entry point: configure, route, start, stop.
// One loop thread per CPU by default, each with its own listener (SO_REUSEPORT), ring or epoll set, buffers and
// connections; nothing is shared between threads on the request path.
// Not here: signals (the embedding program decides what stops the server), flags (userd/config.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "userd/result.hpp"
#include "userd/router.hpp"
#include "userd/upstream.hpp"

namespace userd {

enum class BackendKind : std::uint8_t { Auto, IoUring, Epoll };

// HTTPS on the same loops (OpenSSL 3 through memory BIOs): TLS 1.2 and 1.3, ALPN http/1.1, session tickets.
struct TlsConfig {
  std::string host = "0.0.0.0";  // the TLS listener: numeric address or "localhost"
  std::uint16_t port = 8443;     // 0: the kernel picks one; Server::tls_port() tells which
  // The certificate (the file may hold a chain, leaf first) and its private key, PEM: files, or the PEM text
  // itself in cert_pem / key_pem (used when the file name is empty).
  std::string cert_file{}, key_file{};
  std::string cert_pem{}, key_pem{};
  // Mutual TLS: when set, a client must present a certificate signed by one of these CAs (PEM) or the handshake
  // fails; Request::tls() then carries its subject.
  std::string client_ca_file{};
  // The TLS listener's connections start with a PROXY protocol header, before the ClientHello (see
  // ServerConfig::proxy_protocol).
  bool proxy_protocol = false;
};

// Compressed answers (RFC 9110 8.4): a response is compressed when the client's Accept-Encoding accepts one of
// codings, its content type is one compression helps (text/*, JSON, JavaScript, XML, SVG, +json, +xml), its
// body is at least min_size bytes (a stream: any size), and nothing rules it out: HEAD, 204, 304, a handler's own
// Content-Encoding, "Cache-Control: no-transform", Response::compressible false. Such a response says
// "Vary: Accept-Encoding" whichever coding it gets; a compressed one's strong ETag becomes weak. A coded form no
// smaller than the body is never sent.
struct CompressConfig {
  bool enabled = false;
  // Offered, in the server's order of preference (a client's q-values come first): "br", "zstd", "gzip".
  std::vector<std::string> codings{"br", "zstd", "gzip"};
  std::size_t min_size = 1024;
  // Bodies that will be sent with body_is_static (a dataset): start() compresses each in every coding at the
  // best levels (br 11, zstd 19, gzip 9; about a second per MiB), so sending one compressed costs nothing more
  // than sending it plain. Other static bodies are compressed on first use, once per loop (at most 64 of them
  // and 16 MiB of coded bytes a loop; beyond, per response); dynamic ones per response. Bodies over 1 MiB that
  // are not listed here are sent uncompressed: coding them would hold the loop for tens of milliseconds.
  std::vector<std::string_view> static_bodies{};
};

struct ServerConfig {
  std::string host = "0.0.0.0";  // numeric IPv4 or IPv6 address, or "localhost"
  std::uint16_t port = 8080;     // 0: the kernel picks one; Server::port() tells which
  unsigned threads = 0;          // 0: one per CPU the process may run on
  BackendKind backend = BackendKind::Auto;
  // Receive buffers per thread: every connection of the thread draws from them, and each returns at once after
  // its bytes are parsed or copied, so the count bounds bytes read per loop turn, not connections.
  unsigned recv_buffers = 256;
  // 2 KiB holds any ordinary request head; it also bounds what a multishot receive lands for one client before a
  // backpressure pause takes effect (the kernel hands over up to 32 buffers in one go): 64 KiB, not 128.
  unsigned recv_buffer_size = 2048;
  std::size_t max_head = 8 * 1024;    // request line + headers; beyond: 431
  std::size_t max_target = 8 * 1024;  // request target; beyond: 414
  std::size_t max_body = 1 << 20;     // beyond: 413
  unsigned linger_ms = 2000;          // after a final response, how long unread input is drained before closing
  // Deadlines (checked every 100 ms): a request head must complete within header_timeout_ms of its first
  // byte, a body within body_timeout_ms of its head (else 408 and close); a connection with nothing to do is
  // closed after idle_timeout_ms.
  unsigned header_timeout_ms = 10'000;
  unsigned body_timeout_ms = 30'000;
  unsigned idle_timeout_ms = 60'000;
  // Output that makes no progress for send_timeout_ms closes the connection (a client that stopped reading;
  // nginx's send_timeout). Progress is a send completing or, at the deadline, the socket's own queue draining
  // (checked again a second later), so a slow but steady reader is never cut and one that stopped is cut about
  // a second after the deadline. A request whose handler has not answered within handler_timeout_ms is answered
  // 503 with a JSON body, and its Responder becomes a no-op; a stream's producer is cut when it has written
  // nothing for that long while not held back by its client.
  unsigned send_timeout_ms = 30'000;
  unsigned handler_timeout_ms = 30'000;
  // Connections per thread; beyond it new ones are accepted and closed at once, so existing ones keep their
  // descriptors and buffers.
  unsigned max_conns = 10'000;
  // TLS handshakes in progress per thread (each holds 50-60 KiB of OpenSSL state before the client has proven
  // anything); beyond it new TLS connections are closed at once and counted. 512: 30 MB a thread at most.
  unsigned max_tls_handshakes = 512;
  // stop(): how long requests in flight (including ones waiting on an upstream) may take to finish.
  unsigned drain_timeout_ms = 10'000;
  // Servers handlers may fetch from, by index (Request::fetch). Names are resolved in start() (one that does not
  // resolve fails it), and again in the background after a connect fails, at most every 5 s per loop.
  std::vector<UpstreamConfig> upstreams{};
  // HTTP/2 beside HTTP/1.1 on the same ports: by prior knowledge on plain HTTP (the client's preface), by ALPN
  // "h2" on TLS. A client may open at most http2_max_streams streams at once (SETTINGS_MAX_CONCURRENT_STREAMS).
  bool http2 = true;
  unsigned http2_max_streams = 128;
  // Plain HTTP on host:port. False: only the TLS listener (tls must be set).
  bool plain = true;
  // HTTPS as well (or instead): its own listener per thread, served by the same loops.
  std::optional<TlsConfig> tls{};
  // The port belongs to this server: start() fails (Errc::Io, EADDRINUSE) when any other socket listens on it.
  // True: join other SO_REUSEPORT listeners of the same user on the port instead, sharing its connections with
  // them (a rolling restart: start the new process, then stop the old one).
  bool reuse_port = false;
  // Listening sockets already open (socket activation: LISTEN_FDS). When given, nothing is bound; threads take
  // them in turn, sharing one when there are fewer sockets than threads.
  std::vector<int> listen_fds{};
  // Behind a load balancer (haproxy send-proxy / send-proxy-v2, nginx's stream proxy_protocol, a cloud's network
  // balancer): every connection of the plain listener(s), inherited ones included, starts with a PROXY protocol
  // header, v1 or v2, and Request::peer() and the access log say the client it names. A connection without a
  // valid one within header_timeout_ms (malformed, over 2 KiB, cut short) is closed unanswered and counted.
  // A LOCAL or UNKNOWN header (a balancer's health check) keeps the socket's own peer.
  bool proxy_protocol = false;
  // Who may connect to a PROXY listener (plain or TLS): CIDRs or bare addresses, IPv4 or IPv6 ("10.0.0.0/8",
  // "::1"); any other source is closed at accept and counted. Empty: any source, so a client that can reach the
  // port directly can claim to be anyone; start() fails on an entry that does not parse.
  std::vector<std::string> proxy_from{};
  CompressConfig compress{};
  // Access log: one line per request ("time peer method target protocol status bytes seconds"), appended to a
  // per-thread buffer and written to this descriptor on the loop's 100 ms tick (or at 64 KiB), never per
  // request. -1: off. The server does not close it.
  int access_log_fd = -1;
  // Where the server's few log lines go (the io_uring fallback): one line each, no newline. Default: stderr.
  std::function<void(std::string_view)> log{};
};

// Loads cfg's certificate and key as start() would: empty when they are usable, else one line saying which
// file and what is wrong with it (for a daemon to report before it starts).
std::string check_tls(const TlsConfig& cfg);
// "OpenSSL 3.0.x; kTLS not used": the TLS library and whether the kernel offloads records.
std::string describe_tls();

// What this machine's kernel offers libuserd: io_uring features and opcodes, or why io_uring is unavailable.
std::string describe_backends();

class Server {
 public:
  Server(ServerConfig config, Router router);
  ~Server();  // stops and joins
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every thread's listener and starts the loops. On failure nothing keeps running. With BackendKind::Auto
  // a refused io_uring is logged once and epoll serves; with IoUring it fails with Errc::Unsupported.
  Result<void> start();
  std::uint16_t port() const noexcept;
  std::uint16_t tls_port() const noexcept;  // 0 without ServerConfig::tls
  // Any thread, after start(): loads the TLS certificate and key again (SIGHUP). New handshakes use them; open
  // connections keep theirs. On failure the old ones stay and the error says why (Error::what is "tls").
  Result<void> reload_tls(std::string* why = nullptr);
  std::string_view backend() const noexcept;  // "io_uring" or "epoll", after start()
  unsigned threads() const noexcept;
  // Any thread, after start(): fn runs on loop thread `loop` (0 .. threads() - 1) at its next turn, where it may
  // use that loop's Responders and Streams as a handler would. False, and fn dropped, for no such loop, once
  // its loop has ended, or when 4,096 such calls already wait there.
  bool post(unsigned loop, std::function<void()> fn);
  // Prometheus text exposition (format 0.0.4) of every thread's counters, summed now. Any thread; it reads the
  // counters without locks, so the request path never waits for it.
  std::string metrics_text() const;
  // Any thread; returns at once. Graceful: the listeners close at once (new connections are refused), idle
  // connections close, requests in flight finish (answered with Connection: close, from any thread, streams
  // to their end) for up to drain_timeout_ms; each connection closes as soon as its last answer is out; then
  // the loops end. wait() joins them.
  void stop() noexcept;
  // Joins the loops. Responders and Streams still held elsewhere then answer false, until the Server is
  // destroyed: join the threads that hold them before that.
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace userd
