// tls/openssl.cpp: loads OpenSSL on first use (see openssl.hpp): dlopen once, never closed, since contexts and
// sessions may live until the process exits.
#define USERD_OPENSSL_NO_REDIRECT
#include "libuserd/tls/openssl.hpp"

#include <dlfcn.h>

namespace userd::tls {
namespace {

OpenSslApi load() noexcept {
  OpenSslApi a;
  // libssl.so.3 brings libcrypto.so.3 with it, and dlsym on its handle searches both.
  void* lib = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    a.error = std::string("cannot load OpenSSL 3 (libssl.so.3): ") + (e ? e : "unknown error");
    return a;
  }
#define USERD_OPENSSL_LOAD(f)                                      \
  a.f = reinterpret_cast<decltype(a.f)>(dlsym(lib, #f));            \
  if (!a.f && a.error.empty()) a.error = "libssl.so.3 has no " #f;
  USERD_OPENSSL_FUNCTIONS(USERD_OPENSSL_LOAD)
#undef USERD_OPENSSL_LOAD
  return a;
}

}  // namespace

const OpenSslApi& api() noexcept {
  static const OpenSslApi loaded = load();
  return loaded;
}

}  // namespace userd::tls
