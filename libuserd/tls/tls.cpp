// tls/tls.cpp: contexts (certificates, versions, ALPN, verification) and the per-connection memory-BIO session.
#include "libuserd/tls/tls.hpp"

#include <arpa/inet.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

namespace userd::tls {
namespace {

// OpenSSL's error queue is per thread: a failure read here is this thread's, and is cleared after.
std::string drain_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown error" : out;
}

// ALPN: h2 first when HTTP/2 is on (arg), then http/1.1; never h2c. A client offering neither gets no ALPN
// answer, which means HTTP/1.1 to it; refusing the handshake would help no one.
const unsigned char kH2First[] = "\x02h2\x08http/1.1";
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned inlen,
                void* arg) {
  static const unsigned char kH11[] = "\x08http/1.1";
  const unsigned char* ours = arg ? kH2First : kH11;
  const unsigned ours_len = arg ? sizeof kH2First - 1 : sizeof kH11 - 1;
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outlen, ours, ours_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

bool read_file(const std::string& path, std::string& out, std::string& why, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    why = std::string("cannot read the ") + what + " file " + path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream s;
  s << f.rdbuf();
  out = s.str();
  return true;
}

struct BioFree {
  void operator()(BIO* b) const noexcept { BIO_free(b); }
};

// What every context starts with: OpenSSL loaded, TLS 1.2 and 1.3 only, forward-secret AEAD suites for TLS 1.2
// (TLS 1.3's defaults are all of that kind already), no renegotiation, no compression. Empty, with why, on
// failure.
Context new_context(const SSL_METHOD* (*method)(), std::string& why) {
  if (!api().error.empty()) {
    why = api().error;
    return {};
  }
  ERR_clear_error();
  Context ctx(SSL_CTX_new(method()));
  if (!ctx) {
    why = "SSL_CTX_new: " + drain_errors();
    return {};
  }
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20");
  // Records are encrypted into and out of memory we keep: buffers stay between requests
  // (SSL_MODE_RELEASE_BUFFERS would allocate them again for every record).
  SSL_CTX_set_mode(c, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  return ctx;
}

}  // namespace

// Renegotiation (TLS 1.2 only; a TLS 1.3 KeyUpdate also starts a "handshake" here and is allowed).
void on_info(const SSL* ssl, int where, int) {
  if (!(where & SSL_CB_HANDSHAKE_START)) return;
  auto* s = static_cast<Session*>(SSL_get_app_data(ssl));
  if (s && s->established_ && SSL_version(ssl) < TLS1_3_VERSION) s->renegotiating_ = true;
}

Context server_context(const TlsConfig& cfg, std::string& why, bool http2) {
  std::string cert = cfg.cert_pem, key = cfg.key_pem;
  if (!cfg.cert_file.empty() && !read_file(cfg.cert_file, cert, why, "certificate")) return {};
  if (!cfg.key_file.empty() && !read_file(cfg.key_file, key, why, "key")) return {};
  const std::string cert_name = cfg.cert_file.empty() ? "certificate PEM" : "certificate file " + cfg.cert_file;
  const std::string key_name = cfg.key_file.empty() ? "key PEM" : "key file " + cfg.key_file;
  if (cert.empty() || key.empty()) {
    why = "TLS needs a certificate and a key";
    return {};
  }
  Context ctx = new_context(TLS_server_method, why);
  if (!ctx) return {};
  SSL_CTX* c = ctx.get();
  // The chain: the first certificate is the leaf, the rest go out as its chain.
  std::unique_ptr<BIO, BioFree> cb(BIO_new_mem_buf(cert.data(), int(cert.size())));
  X509* leaf = cb ? PEM_read_bio_X509_AUX(cb.get(), nullptr, nullptr, nullptr) : nullptr;
  if (!leaf || SSL_CTX_use_certificate(c, leaf) != 1) {
    if (leaf) X509_free(leaf);
    why = cert_name + " holds no usable PEM certificate: " + drain_errors();
    return {};
  }
  X509_free(leaf);
  SSL_CTX_clear_chain_certs(c);
  while (X509* more = PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr)) {
    if (SSL_CTX_add0_chain_cert(c, more) != 1) {
      X509_free(more);
      why = cert_name + ": " + drain_errors();
      return {};
    }
  }
  ERR_clear_error();  // the end of the chain reads as an error
  std::unique_ptr<BIO, BioFree> kb(BIO_new_mem_buf(key.data(), int(key.size())));
  EVP_PKEY* pkey = kb ? PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr) : nullptr;
  if (!pkey) {
    why = key_name + " holds no usable PEM private key: " + drain_errors();
    return {};
  }
  if (SSL_CTX_use_PrivateKey(c, pkey) != 1) {
    EVP_PKEY_free(pkey);
    why = key_name + " does not match the " + cert_name + ": " + drain_errors();
    return {};
  }
  EVP_PKEY_free(pkey);
  if (SSL_CTX_check_private_key(c) != 1) {
    why = key_name + " does not match the " + cert_name;
    ERR_clear_error();
    return {};
  }
  SSL_CTX_set_alpn_select_cb(c, select_alpn, http2 ? const_cast<unsigned char*>(kH2First) : nullptr);
  // Resumption through tickets only: the stateful cache would be shared (and locked) across loop threads.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  static const unsigned char kSid[] = "userd";
  SSL_CTX_set_session_id_context(c, kSid, sizeof kSid - 1);
  if (!cfg.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(c, cfg.client_ca_file.c_str(), nullptr) != 1) {
      why = "cannot load the client CA file " + cfg.client_ca_file + ": " + drain_errors();
      return {};
    }
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cfg.client_ca_file.c_str()))
      SSL_CTX_set_client_CA_list(c, names);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  SSL_CTX_set_info_callback(c, on_info);
  return ctx;
}

Context client_context(const std::string& ca_file, bool insecure, std::string& why) {
  Context ctx = new_context(TLS_client_method, why);
  if (!ctx) return {};
  SSL_CTX* c = ctx.get();
  static const unsigned char kH11[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(c, kH11, sizeof kH11 - 1);
  if (!insecure) {
    const int ok = ca_file.empty() ? SSL_CTX_set_default_verify_paths(c)
                                   : SSL_CTX_load_verify_locations(c, ca_file.c_str(), nullptr);
    if (ok != 1) {
      why = "cannot load the upstream CA " + (ca_file.empty() ? std::string("store") : "file " + ca_file) + ": " +
            drain_errors();
      return {};
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  }
  // Sessions are kept by the pool (session_for_reuse), not in OpenSSL's client cache.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_info_callback(c, on_info);
  return ctx;
}

bool Session::start(SSL_CTX* ctx, const char* sni, SSL_SESSION* resume) noexcept {
  reset();
  ssl_ = SSL_new(ctx);
  if (!ssl_) return false;
  in_ = BIO_new(BIO_s_mem());
  out_ = BIO_new(BIO_s_mem());
  if (!in_ || !out_) {
    if (in_) BIO_free(in_);
    if (out_) BIO_free(out_);
    in_ = out_ = nullptr;
    reset();
    return false;
  }
  // An empty memory BIO answers "retry" rather than EOF: the handshake waits for the next receive.
  BIO_set_mem_eof_return(in_, -1);
  BIO_set_mem_eof_return(out_, -1);
  SSL_set_bio(ssl_, in_, out_);
  SSL_set_app_data(ssl_, this);
  if (sni) {
    SSL_set_connect_state(ssl_);
    // The certificate must name the upstream (when verification is on): its DNS name, sent as SNI too, or its
    // address (RFC 6066 sends no SNI for an address).
    unsigned char addr[16];
    if (inet_pton(AF_INET, sni, addr) == 1 || inet_pton(AF_INET6, sni, addr) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), sni);
    } else {
      SSL_set_tlsext_host_name(ssl_, sni);
      SSL_set1_host(ssl_, sni);
    }
    if (resume) SSL_set_session(ssl_, resume);
  } else {
    SSL_set_accept_state(ssl_);
  }
  return true;
}

Session& Session::operator=(Session&& o) noexcept {
  if (this == &o) return *this;
  reset();
  std::swap(ssl_, o.ssl_);
  std::swap(in_, o.in_);
  std::swap(out_, o.out_);
  established_ = o.established_;
  shutdown_sent_ = o.shutdown_sent_;
  renegotiating_ = o.renegotiating_;
  subject_ = std::move(o.subject_);
  if (ssl_) SSL_set_app_data(ssl_, this);  // the info callback finds the session here
  o.reset();
  return *this;
}

void Session::reset() noexcept {
  if (ssl_) SSL_free(ssl_);  // frees both BIOs
  ssl_ = nullptr;
  in_ = out_ = nullptr;
  established_ = shutdown_sent_ = renegotiating_ = false;
  subject_.clear();
}

bool Session::feed(const char* data, std::size_t n) noexcept {
  return BIO_write(in_, data, int(n)) == int(n);
}

bool Session::partial_record() const noexcept {
  return ssl_ && (BIO_ctrl_pending(in_) > 0 || SSL_has_pending(ssl_) == 1);
}

Session::Status Session::handshake() noexcept {
  if (established_) return Status::Ok;
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    established_ = true;
    if (X509* peer = SSL_get0_peer_certificate(ssl_)) {
      if (BIO* b = BIO_new(BIO_s_mem())) {
        X509_NAME_print_ex(b, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
        char* p = nullptr;
        const long len = BIO_get_mem_data(b, &p);
        try {
          subject_.assign(p, std::size_t(len));
        } catch (...) {
        }
        BIO_free(b);
      }
    }
    return Status::Ok;
  }
  const int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Status::WantMore;
  return Status::Failed;
}

long Session::read(char* out, std::size_t cap) noexcept {
  if (renegotiating_) return -2;
  ERR_clear_error();
  const int r = SSL_read(ssl_, out, int(cap));
  if (renegotiating_) return -2;
  if (r > 0) return r;
  const int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  if (e == SSL_ERROR_ZERO_RETURN) return -1;
  return -2;
}

bool Session::write(const char* p, std::size_t n) noexcept {
  while (n > 0) {
    ERR_clear_error();
    const int chunk = int(n < (1u << 30) ? n : (1u << 30));
    const int w = SSL_write(ssl_, p, chunk);
    if (w <= 0) return false;
    p += w;
    n -= std::size_t(w);
  }
  return true;
}

void Session::close_notify() noexcept {
  if (shutdown_sent_ || !ssl_) return;
  shutdown_sent_ = true;
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

std::size_t Session::pending() const noexcept { return out_ ? BIO_ctrl_pending(out_) : 0; }

void Session::take(core::ByteBuffer& out) {
  const std::size_t n = pending();
  if (n == 0) return;
  char* p = out.prepare(n);
  const int got = BIO_read(out_, p, int(n));
  if (got > 0) out.commit(std::size_t(got));
}

std::string_view Session::version() const noexcept { return ssl_ ? SSL_get_version(ssl_) : ""; }

bool Session::alpn_h2() const noexcept {
  if (!ssl_) return false;
  const unsigned char* p = nullptr;
  unsigned n = 0;
  SSL_get0_alpn_selected(ssl_, &p, &n);
  return n == 2 && p[0] == 'h' && p[1] == '2';
}

SSL_SESSION* Session::session_for_reuse() const noexcept {
  if (!ssl_ || !established_) return nullptr;
  SSL_SESSION* s = SSL_get1_session(ssl_);
  if (s && !SSL_SESSION_is_resumable(s)) {
    SSL_SESSION_free(s);
    return nullptr;
  }
  return s;
}

std::string describe() {
  if (!api().error.empty()) return api().error;
  return std::string(OpenSSL_version(OPENSSL_VERSION)) + " (loaded when TLS is first used); kTLS not used "
         "(records are encrypted in memory)";
}

}  // namespace userd::tls
