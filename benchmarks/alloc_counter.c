/* benchmarks/alloc_counter.c: LD_PRELOAD library counting heap allocations (malloc, calloc, realloc,
 * memalign family; operator new goes through malloc). On SIGUSR2 it writes "N M\n" to the file named by
 * ALLOC_COUNTER_FILE: N allocations so far, and apart from them M made by OpenSSL's own allocator (libcrypto
 * calling malloc: OpenSSL 3.0's record layer allocates and frees a small block per record, which no caller can
 * change). Used by ./dev bench and the TLS tests to prove userd's steady state allocates nothing per request. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <string.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

static atomic_ulong allocations, openssl_allocations;
static uintptr_t crypto_lo, crypto_hi; /* libcrypto's code, found at load time */

static void count(void* caller) {
  uintptr_t a = (uintptr_t)caller;
  atomic_fetch_add_explicit(a >= crypto_lo && a < crypto_hi ? &openssl_allocations : &allocations, 1,
                            memory_order_relaxed);
}

void* malloc(size_t n) { count(__builtin_return_address(0)); return __libc_malloc(n); }
void* calloc(size_t k, size_t n) { count(__builtin_return_address(0)); return __libc_calloc(k, n); }
void* realloc(void* p, size_t n) { count(__builtin_return_address(0)); return __libc_realloc(p, n); }
void* memalign(size_t a, size_t n) { count(__builtin_return_address(0)); return __libc_memalign(a, n); }
void* aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void** out, size_t a, size_t n) {
  void* p = memalign(a, n);
  if (!p) return 12; /* ENOMEM */
  *out = p;
  return 0;
}

/* Async-signal-safe: only open, write and close. */
static void report(int sig) {
  (void)sig;
  const char* path = getenv("ALLOC_COUNTER_FILE");
  if (!path) return;
  char buf[64];
  int i = sizeof buf;
  unsigned long v = atomic_load(&openssl_allocations);
  buf[--i] = '\n';
  do buf[--i] = (char)('0' + v % 10); while ((v /= 10) && i > 0);
  buf[--i] = ' ';
  v = atomic_load(&allocations);
  do buf[--i] = (char)('0' + v % 10); while ((v /= 10) && i > 0);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, buf + i, sizeof buf - (size_t)i);
  (void)w;
  close(fd);
}

static int find_crypto(struct dl_phdr_info* info, size_t size, void* data) {
  (void)size;
  (void)data;
  if (!info->dlpi_name || !strstr(info->dlpi_name, "libcrypto.so")) return 0;
  for (int k = 0; k < info->dlpi_phnum; ++k) {
    const ElfW(Phdr)* ph = &info->dlpi_phdr[k];
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
      crypto_lo = info->dlpi_addr + ph->p_vaddr;
      crypto_hi = crypto_lo + ph->p_memsz;
    }
  }
  return 1;
}

/* libuserd loads OpenSSL with dlopen on first use: look for libcrypto again once a library was loaded (here,
 * outside the loader's lock, which malloc must never take). */
void* dlopen(const char* file, int mode) {
  static void* (*real)(const char*, int);
  if (!real) real = (void* (*)(const char*, int))dlsym(RTLD_NEXT, "dlopen");
  void* h = real(file, mode);
  if (!crypto_hi) dl_iterate_phdr(find_crypto, 0);
  return h;
}

__attribute__((constructor)) static void install(void) {
  dl_iterate_phdr(find_crypto, 0);
  struct sigaction sa = {0};
  sa.sa_handler = report;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR2, &sa, 0);
}
