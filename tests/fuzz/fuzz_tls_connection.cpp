// tests/fuzz/fuzz_tls_connection.cpp: the TLS-to-HTTP boundary. An in-process client (a tls::Session on memory
// BIOs) encrypts the input as HTTP requests, in records of sizes the input chooses; the server's Connection
// receives the records in arbitrary splits, now and then with a bit flipped, and what it sends goes back to the
// client. The sanitizers catch any memory error; the connection must end released.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "libuserd/server/connection.hpp"
#include "libuserd/tls/tls.hpp"
#include "tests/support/fuzz_rig.hpp"

using namespace userd;
using namespace userd::server;

namespace {

std::string pem(BIO* b) {
  char* p = nullptr;
  const long n = BIO_get_mem_data(b, &p);
  std::string s(p, std::size_t(n));
  BIO_free(b);
  return s;
}

// A self-signed P-256 certificate made once per process: nothing on disk.
TlsConfig self_signed() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_sign(x, key, EVP_sha256());
  TlsConfig cfg;
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  cfg.cert_pem = pem(b);
  b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
  cfg.key_pem = pem(b);
  X509_free(x);
  EVP_PKEY_free(key);
  return cfg;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  std::string why;
  static const tls::Context server_ctx = tls::server_context(self_signed(), why);
  static const tls::Context client_ctx = tls::client_context("", true, why);
  if (!server_ctx || !client_ctx) std::abort();

  testing::FuzzRig rig;
  testing::FakeBackend& kernel = rig.kernel;
  LoopContext& ctx = rig.ctx;
  ctx.tls_plain.reset(new char[LoopContext::kTlsScratch]);
  ctx.tls_seal.reset(new char[LoopContext::kTlsScratch]);
  Connection conn(ctx);
  rig.target.conn = &conn;
  if (!conn.open(3, 0, server_ctx.get())) return 0;
  tls::Session client;
  if (!client.start(client_ctx.get(), "localhost")) return 0;

  std::uint32_t rng = data[0] * 2654435761u + 1;
  auto next = [&rng] { return rng = rng * 1103515245u + 12345u, rng >> 16; };
  std::string to_server;
  std::size_t wire_seen = 0;
  core::ByteBuffer records;
  char sink[16384];
  // Client records to the server in pieces; every send the server makes completes, and its bytes reach the
  // client, which reads (and drops) the responses.
  auto exchange = [&] {
    records.clear();
    client.take(records);
    to_server.append(records.data(), records.size());
    while (!to_server.empty() && !conn.released()) {
      std::size_t n = std::min<std::size_t>(1 + next() % 700, to_server.size());
      std::string chunk = to_server.substr(0, n);  // writable, like a receive buffer
      to_server.erase(0, n);
      if (next() % 256 == 0) chunk[next() % chunk.size()] ^= char(1 << (next() % 8));  // a damaged record
      conn.on_recv(chunk.data(), chunk.size());
      for (int i = 0; i < 64 && kernel.pending_send >= 0; ++i) {
        const int sent = kernel.pending_send;
        kernel.pending_send = -1;
        conn.on_send(next() % 8 == 0 && sent > 1 ? sent / 2 : sent);  // now and then a short send
      }
    }
    if (kernel.wire.size() > wire_seen) {
      client.feed(kernel.wire.data() + wire_seen, kernel.wire.size() - wire_seen);
      wire_seen = kernel.wire.size();
    }
    client.handshake();
    while (client.established() && client.read(sink, sizeof sink) > 0) {
    }
  };

  client.handshake();  // the ClientHello
  for (int i = 0; i < 6 && !client.established() && !conn.released(); ++i) exchange();
  const std::string_view plain(reinterpret_cast<const char*>(data) + 1, size - 1);
  for (std::size_t pos = 0; pos < plain.size() && client.established() && !conn.released();) {
    const std::size_t n = std::min<std::size_t>(1 + next() % 300, plain.size() - pos);
    client.write(plain.data() + pos, n);  // one record
    pos += n;
    if (next() % 3 == 0) exchange();
    if (next() % 64 == 0) conn.on_timeout(Timer(1 + next() % 6));  // idle, header, body, linger, send, handler
  }
  exchange();

  // The end: the client leaves; every operation completes; the slot must come free.
  testing::FuzzRig::finish(conn, kernel);
  return 0;
}
