/* benchmarks/alloc_counter.c: LD_PRELOAD library counting heap allocations (malloc, calloc, realloc,
 * memalign family; operator new goes through malloc). On SIGUSR2 it writes the count so far to the file named
 * by ALLOC_COUNTER_FILE. Used by ./dev bench to prove userd's steady state allocates nothing per request. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

static atomic_ulong allocations;

void* malloc(size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_malloc(n); }
void* calloc(size_t k, size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_calloc(k, n); }
void* realloc(void* p, size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_realloc(p, n); }
void* memalign(size_t a, size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_memalign(a, n); }
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
  char buf[32];
  int i = sizeof buf;
  unsigned long v = atomic_load(&allocations);
  buf[--i] = '\n';
  do buf[--i] = (char)('0' + v % 10); while ((v /= 10) && i > 0);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, buf + i, sizeof buf - (size_t)i);
  (void)w;
  close(fd);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa = {0};
  sa.sa_handler = report;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR2, &sa, 0);
}
