// server/proxy_header.hpp: the PROXY protocol header (haproxy's proxy-protocol.txt, v1 text and v2 binary) that
// a load balancer puts before a connection's first byte to say whose connection it relays, and the source list
// (--proxy-from) of who may send one. Strict and bounded; it knows nothing of sockets or HTTP.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace userd::server {

// v1 is 107 bytes at most; v2 is 16 plus its length, which a balancer fills with addresses (36 bytes for IPv6)
// and TLVs (a unique id, TLS details, a cloud's endpoint id): a few hundred bytes. A header past this is refused.
constexpr std::size_t kMaxProxyHeader = 2048;
constexpr std::size_t kMaxProxyV1 = 107;

struct ProxyHeader {
  enum class Status : std::uint8_t { More, Done, Bad };
  Status status = Status::More;
  std::size_t size = 0;     // Done: the header's length; what follows it is the connection's own first byte
  bool has_source = false;  // Done without it: LOCAL, UNKNOWN or AF_UNSPEC (a balancer's own health check)
  sockaddr_storage source{};
};

// Looks at the first n bytes of a connection. More: a valid header so far, not complete yet (it completes within
// kMaxProxyHeader bytes, or is Bad before). Bad as soon as the bytes cannot begin one: a client that speaks
// HTTP straight to the listener is refused at its first byte, not after a deadline.
ProxyHeader parse_proxy_header(const char* p, std::size_t n) noexcept;

struct Cidr {
  sa_family_t family = AF_INET;
  std::uint8_t addr[16] = {};
  unsigned bits = 0;
};
// "10.0.0.0/8", "fd00::/8", or a bare address (all its bits); false on anything else (host bits set included,
// which is a typo more often than an intent).
bool parse_cidr(std::string_view s, Cidr& out) noexcept;
// An IPv4-mapped IPv6 peer (a dual-stack listener) matches the IPv4 entries.
bool cidr_match(const std::vector<Cidr>& list, const sockaddr_storage& a) noexcept;

}  // namespace userd::server
