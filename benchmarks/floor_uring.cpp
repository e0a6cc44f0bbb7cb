// benchmarks/floor_uring.cpp: the io_uring floor: one thread, multishot accept, multishot recv from a buffer
// ring, and for the requests seen in each receive (each "\r\n\r\n") the canned responses from memory in one
// send, as a server that batches pipelined answers does. No parsing, routing or Date: what a server on this
// kernel cannot go below. Not a server to use.
// usage: floor_uring PORT   (binds 127.0.0.1; prints "floor_uring: listening on 127.0.0.1:PORT")
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

extern "C" {
extern const char userd_embedded_dataset[];
extern const unsigned long userd_embedded_dataset_size;
}

namespace {
constexpr unsigned kBufs = 512, kBufSize = 4096, kBatch = 64;
enum : std::uint64_t { kAccept = 1ull << 62, kRecv = 2ull << 62, kSend = 3ull << 62 };

io_uring ring;
io_uring_sqe* sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring);
  while (!s) {
    io_uring_submit(&ring);
    s = io_uring_get_sqe(&ring);
  }
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  const std::string one = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(userd_embedded_dataset_size) + "\r\n\r\n" +
                          std::string(userd_embedded_dataset, userd_embedded_dataset_size);
  // Responses are identical, so n answers are the first n * one.size() bytes of this.
  std::string responses;
  for (unsigned i = 0; i < kBatch; ++i) responses += one;
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
  p.cq_entries = 8192;
  if (io_uring_queue_init_params(1024, &ring, &p) < 0) return 1;
  io_uring_register_ring_fd(&ring);
  auto* br = static_cast<io_uring_buf_ring*>(
      mmap(nullptr, kBufs * sizeof(io_uring_buf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  char* pool = static_cast<char*>(mmap(nullptr, kBufs * kBufSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  io_uring_buf_ring_init(br);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uint64_t>(br);
  reg.ring_entries = kBufs;
  if (io_uring_register_buf_ring(&ring, &reg, 0) < 0) return 1;
  for (unsigned i = 0; i < kBufs; ++i) io_uring_buf_ring_add(br, pool + i * kBufSize, kBufSize, i, kBufs - 1, i);
  io_uring_buf_ring_advance(br, kBufs);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
  std::fprintf(stderr, "floor_uring: listening on 127.0.0.1:%u\n", ntohs(a.sin_port));

  io_uring_prep_multishot_accept(sqe(), lfd, nullptr, nullptr, SOCK_CLOEXEC);
  for (;;) {
    unsigned recycled = 0;
    io_uring_cqe* cqe;
    io_uring_submit_and_wait(&ring, 1);
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++n;
      const std::uint64_t kind = cqe->user_data & (3ull << 62);
      const int fd = int(cqe->user_data & 0xffffffff);
      if (cqe->user_data == 0 || kind == kAccept) {  // the accept's tag is 0
        if (cqe->res >= 0) {
          io_uring_sqe* s = sqe();
          io_uring_prep_recv_multishot(s, cqe->res, nullptr, 0, 0);
          s->flags |= IOSQE_BUFFER_SELECT;
          s->buf_group = 0;
          io_uring_sqe_set_data64(s, kRecv | std::uint32_t(cqe->res));
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) io_uring_prep_multishot_accept(sqe(), lfd, nullptr, nullptr, SOCK_CLOEXEC);
      } else if (kind == kRecv) {
        if (cqe->flags & IORING_CQE_F_BUFFER) {
          const unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
          char* b = pool + bid * kBufSize;
          int requests = 0;
          for (std::string_view v(b, std::size_t(cqe->res > 0 ? cqe->res : 0)); ; ++requests) {
            std::size_t at = v.find("\r\n\r\n");
            if (at == std::string_view::npos) break;
            v.remove_prefix(at + 4);
          }
          for (int left = requests; left > 0;) {
            const int n = left < int(kBatch) ? left : int(kBatch);
            left -= n;
            io_uring_sqe* s = sqe();
            io_uring_prep_send(s, fd, responses.data(), std::size_t(n) * one.size(), MSG_NOSIGNAL | MSG_WAITALL);
            io_uring_sqe_set_data64(s, kSend | std::uint32_t(fd));
            if (left > 0) s->flags |= IOSQE_IO_LINK;  // keep batches in order
          }
          io_uring_buf_ring_add(br, b, kBufSize, bid, kBufs - 1, int(recycled++));
        }
        if (cqe->res <= 0) close(fd);
        else if (!(cqe->flags & IORING_CQE_F_MORE)) {
          io_uring_sqe* s = sqe();
          io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
          s->flags |= IOSQE_BUFFER_SELECT;
          s->buf_group = 0;
          io_uring_sqe_set_data64(s, kRecv | std::uint32_t(fd));
        }
      }
    }
    io_uring_cq_advance(&ring, n);
    if (recycled) io_uring_buf_ring_advance(br, int(recycled));
  }
}
