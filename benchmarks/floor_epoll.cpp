// benchmarks/floor_epoll.cpp: the epoll floor: one thread, edge-triggered, and for every request seen (each
// "\r\n\r\n") the canned response from memory, all the answers to one read in one send. No parsing, routing or
// Date: what an epoll server on this kernel cannot go below. Not a server to use.
// usage: floor_epoll PORT   (binds 127.0.0.1; prints "floor_epoll: listening on 127.0.0.1:PORT")
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

extern "C" {
extern const char userd_embedded_dataset[];
extern const unsigned long userd_embedded_dataset_size;
}

namespace {
// A full socket buffer (deep pipelining) waits for room rather than dropping the rest of the answers.
void send_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= std::size_t(w);
    } else if (w < 0 && errno == EAGAIN) {
      pollfd pfd{fd, POLLOUT, 0};
      poll(&pfd, 1, 1000);
    } else if (w < 0 && errno != EINTR) {
      return;
    }
  }
}
}  // namespace

int main(int argc, char** argv) {
  const std::string one = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(userd_embedded_dataset_size) + "\r\n\r\n" +
                          std::string(userd_embedded_dataset, userd_embedded_dataset_size);
  // Responses are identical, so n answers are the first n * one.size() bytes of this.
  constexpr int kBatch = 64;
  std::string responses;
  for (int i = 0; i < kBatch; ++i) responses += one;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int on = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(std::uint16_t(argc > 1 ? std::atoi(argv[1]) : 0));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || listen(lfd, SOMAXCONN) < 0) return 1;
  socklen_t len = sizeof a;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  std::fprintf(stderr, "floor_epoll: listening on 127.0.0.1:%u\n", ntohs(a.sin_port));
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = lfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  epoll_event events[256];
  static char buf[16384];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == lfd) {
        for (int c; (c = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
          epoll_event cev{};
          cev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
          cev.data.fd = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0) {
          if (r == 0 || (errno != EAGAIN && errno != EINTR)) close(fd);
          break;
        }
        int requests = 0;
        for (std::string_view v(buf, std::size_t(r));; ++requests) {
          std::size_t at = v.find("\r\n\r\n");
          if (at == std::string_view::npos) break;
          v.remove_prefix(at + 4);
        }
        for (int left = requests; left > 0;) {
          const int k = left < kBatch ? left : kBatch;
          left -= k;
          send_all(fd, responses.data(), std::size_t(k) * one.size());
        }
        if (std::size_t(r) < sizeof buf) break;  // drained
      }
    }
  }
}
