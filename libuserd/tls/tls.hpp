// tls/tls.hpp: TLS on the loop threads, with OpenSSL 3 driven through memory BIOs. Ciphertext the backend
// received goes in; plaintext comes out to the same HTTP code a plain connection uses; plaintext responses go in
// and records come out, sent by the owner's one send in flight. OpenSSL never sees a socket and never blocks.
// Not here: when to read or send (server/connection.cpp, upstream/pool.cpp), flags (userd/config.cpp).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/tls/openssl.hpp"
#include "userd/server.hpp"

namespace userd::tls {

// An owning SSL_CTX reference (OpenSSL counts them: each SSL holds its own, so a context replaced by a reload
// lives on for the connections made with it).
class Context {
 public:
  Context() = default;
  explicit Context(SSL_CTX* adopt) noexcept : ctx_(adopt) {}
  Context(const Context& o) noexcept : ctx_(o.ctx_) {
    if (ctx_) SSL_CTX_up_ref(ctx_);
  }
  Context(Context&& o) noexcept : ctx_(o.ctx_) { o.ctx_ = nullptr; }
  Context& operator=(Context o) noexcept {
    std::swap(ctx_, o.ctx_);
    return *this;
  }
  ~Context() {
    if (ctx_) SSL_CTX_free(ctx_);
  }
  SSL_CTX* get() const noexcept { return ctx_; }
  explicit operator bool() const noexcept { return ctx_ != nullptr; }
  // Gives up ownership (for an atomic hand-over between threads).
  SSL_CTX* release() noexcept {
    SSL_CTX* c = ctx_;
    ctx_ = nullptr;
    return c;
  }

 private:
  SSL_CTX* ctx_ = nullptr;
};

// A server context: the certificate chain and key (files or PEM strings), TLS 1.2 and 1.3 only, ALPN http/1.1,
// session tickets for resumption, no renegotiation, and client verification when client_ca_file is set. On
// failure the context is empty and why says which input and what OpenSSL found wrong, in one line.
Context server_context(const TlsConfig& cfg, std::string& why, bool http2 = false);
// A client context for upstreams: verification against ca_file (or the system store when empty), unless
// insecure; TLS 1.2 and 1.3; a session cache so pooled connections resume.
Context client_context(const std::string& ca_file, bool insecure, std::string& why);

// One connection's TLS state. Made at accept (or connect) and freed at close; once the handshake is done,
// reading and writing records allocate nothing (OpenSSL's buffers and the BIOs' are kept).
class Session {
 public:
  enum class Status { Ok, WantMore, Closed, Failed };

  Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  Session(Session&& o) noexcept { *this = std::move(o); }
  Session& operator=(Session&& o) noexcept;  // (for containers: the pool's connections live in a vector)
  ~Session() { reset(); }

  // Server side when sni is null; client side (SNI and host name verification for sni) otherwise. False:
  // out of memory.
  bool start(SSL_CTX* ctx, const char* sni = nullptr, SSL_SESSION* resume = nullptr) noexcept;
  void reset() noexcept;
  bool active() const noexcept { return ssl_ != nullptr; }
  bool established() const noexcept { return established_; }
  bool closing() const noexcept { return shutdown_sent_; }  // close_notify was queued

  // Ciphertext received. False: out of memory.
  bool feed(const char* data, std::size_t n) noexcept;
  // Advances the handshake: Ok once it is done, WantMore until then, Failed on a bad peer.
  Status handshake() noexcept;
  // Plaintext decrypted from what was fed, into out: bytes (> 0); 0 when more ciphertext is needed; -1 after the
  // peer's close_notify; -2 on a failure (a bad record, a renegotiation attempt).
  long read(char* out, std::size_t cap) noexcept;
  // Encrypts plaintext into records waiting to be sent. False on failure.
  bool write(const char* p, std::size_t n) noexcept;
  // Ciphertext fed and not yet made into plaintext: part of a record (the peer stopped inside one).
  bool partial_record() const noexcept;
  // Queues a close_notify alert, once.
  void close_notify() noexcept;
  // Ciphertext waiting to be sent, and moving it to out (appended).
  std::size_t pending() const noexcept;
  void take(core::ByteBuffer& out);

  std::string_view version() const noexcept;  // "TLSv1.3"
  bool alpn_h2() const noexcept;  // the handshake chose HTTP/2
  bool resumed() const noexcept { return ssl_ && SSL_session_reused(ssl_) == 1; }
  // The verified client certificate's subject (RFC 2253), empty when none was asked for or sent.
  std::string_view peer_subject() const noexcept { return subject_; }
  // For a client: the session to offer next time (owned by the caller: SSL_SESSION_free), or null.
  SSL_SESSION* session_for_reuse() const noexcept;

 private:
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;   // ciphertext in (owned by ssl_)
  BIO* out_ = nullptr;  // ciphertext out (owned by ssl_)
  bool established_ = false;
  bool shutdown_sent_ = false;
  bool renegotiating_ = false;  // a TLS 1.2 peer asked for a new handshake: refused with a close
  friend void on_info(const SSL* ssl, int where, int ret);
  std::string subject_;
};

// "OpenSSL 3.0.x, kTLS off": what `userd --version` prints.
std::string describe();

}  // namespace userd::tls
