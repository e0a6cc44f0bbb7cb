// server/proxy_header.cpp: the PROXY protocol v1 and v2 parsers and the source list. Every length is checked
// against what has arrived before it is used; a v2 header's TLVs are walked (each must fit) and skipped.
#include "libuserd/server/proxy_header.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace userd::server {
namespace {
constexpr char kV1Prefix[] = "PROXY ";
constexpr unsigned char kV2Sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

ProxyHeader bad() noexcept {
  ProxyHeader h;
  h.status = ProxyHeader::Status::Bad;
  return h;
}

// Decimal digits only, no sign, no leading zero, at most max: the spec's ports (0-65535) and a prefix length, in
// the only form a balancer or an operator writes them.
bool parse_decimal(std::string_view s, unsigned max, unsigned& out) noexcept {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + unsigned(c - '0');
  }
  if (v > max) return false;
  out = v;
  return true;
}

// inet_pton needs a terminated string: the token is copied out (an address is at most 45 characters).
bool parse_address(std::string_view s, int family, void* out) noexcept {
  char buf[INET6_ADDRSTRLEN + 1];
  if (s.empty() || s.size() >= sizeof buf) return false;
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  return inet_pton(family, buf, out) == 1;
}

// "PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n", single spaces; "PROXY UNKNOWN ...\r\n" keeps the socket's peer.
ProxyHeader parse_v1(const char* p, std::size_t n) noexcept {
  const std::size_t prefix = std::min(n, sizeof kV1Prefix - 1);
  if (std::memcmp(p, kV1Prefix, prefix) != 0) return bad();
  const std::size_t scan = std::min(n, kMaxProxyV1);
  const char* nl = static_cast<const char*>(std::memchr(p, '\n', scan));
  if (!nl) return n >= kMaxProxyV1 ? bad() : ProxyHeader{};
  const std::size_t size = std::size_t(nl - p) + 1;
  if (size < 8 || nl[-1] != '\r') return bad();
  std::string_view line(p + 6, size - 8);
  ProxyHeader h;
  h.size = size;
  if (line == "UNKNOWN" || line.starts_with("UNKNOWN ")) {  // the rest is to be ignored (the spec): a health check
    h.status = ProxyHeader::Status::Done;
    return h;
  }
  std::string_view tok[6];
  std::size_t count = 0;
  while (count < 6) {
    const std::size_t sp = line.find(' ');
    tok[count++] = line.substr(0, sp);
    if (sp == std::string_view::npos) break;
    line.remove_prefix(sp + 1);
    if (count == 6) return bad();  // more fields than TCP4/TCP6 have
  }
  const bool v4 = tok[0] == "TCP4";
  if ((!v4 && tok[0] != "TCP6") || count != 5) return bad();
  unsigned sport = 0, dport = 0;
  if (!parse_decimal(tok[3], 65535, sport) || !parse_decimal(tok[4], 65535, dport)) return bad();
  if (v4) {
    sockaddr_in src{}, dst{};
    if (!parse_address(tok[1], AF_INET, &src.sin_addr) || !parse_address(tok[2], AF_INET, &dst.sin_addr)) return bad();
    src.sin_family = AF_INET;
    src.sin_port = htons(std::uint16_t(sport));
    std::memcpy(&h.source, &src, sizeof src);
  } else {
    sockaddr_in6 src{}, dst{};
    if (!parse_address(tok[1], AF_INET6, &src.sin6_addr) || !parse_address(tok[2], AF_INET6, &dst.sin6_addr))
      return bad();
    src.sin6_family = AF_INET6;
    src.sin6_port = htons(std::uint16_t(sport));
    std::memcpy(&h.source, &src, sizeof src);
  }
  h.has_source = true;
  h.status = ProxyHeader::Status::Done;
  return h;
}

// The signature, version 2, LOCAL or PROXY, the family and protocol, a big-endian length, then the addresses and
// TLVs (type, 16-bit length, value) to the end.
ProxyHeader parse_v2(const unsigned char* p, std::size_t n) noexcept {
  if (std::memcmp(p, kV2Sig, std::min(n, sizeof kV2Sig)) != 0) return bad();
  if (n < 16) return {};
  const unsigned version = p[12] >> 4, command = p[12] & 0x0f;
  if (version != 2 || command > 1) return bad();
  const std::size_t len = (std::size_t(p[14]) << 8) | p[15];
  if (16 + len > kMaxProxyHeader) return bad();
  if (n < 16 + len) return {};
  ProxyHeader h;
  h.size = 16 + len;
  h.status = ProxyHeader::Status::Done;
  if (command == 0) return h;  // LOCAL: the balancer's own connection; its block is discarded (the spec)
  const unsigned char family = p[13];
  std::size_t addr_len = 0;
  switch (family) {
    case 0x00: return h;  // AF_UNSPEC: no address to use, the socket's stands
    case 0x11: addr_len = 12; break;   // TCP over IPv4
    case 0x21: addr_len = 36; break;   // TCP over IPv6
    case 0x31: addr_len = 216; break;  // a UNIX stream socket: no address of the kind a peer() says
    default: return bad();             // datagrams and unknown families do not carry a TCP connection
  }
  if (len < addr_len) return bad();
  for (std::size_t at = 16 + addr_len; at < h.size;) {  // TLVs: each must fit in what is left
    if (h.size - at < 3) return bad();
    const std::size_t tlv = (std::size_t(p[at + 1]) << 8) | p[at + 2];
    if (h.size - at - 3 < tlv) return bad();
    at += 3 + tlv;
  }
  const unsigned char* a = p + 16;
  if (family == 0x11) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    std::memcpy(&src.sin_addr, a, 4);
    std::memcpy(&src.sin_port, a + 8, 2);  // network order already
    std::memcpy(&h.source, &src, sizeof src);
    h.has_source = true;
  } else if (family == 0x21) {
    sockaddr_in6 src{};
    src.sin6_family = AF_INET6;
    std::memcpy(&src.sin6_addr, a, 16);
    std::memcpy(&src.sin6_port, a + 32, 2);
    std::memcpy(&h.source, &src, sizeof src);
    h.has_source = true;
  }
  return h;
}
}  // namespace

ProxyHeader parse_proxy_header(const char* p, std::size_t n) noexcept {
  if (n == 0) return {};
  if (p[0] == 'P') return parse_v1(p, n);
  if (p[0] == '\r') return parse_v2(reinterpret_cast<const unsigned char*>(p), n);
  return bad();
}

bool parse_cidr(std::string_view s, Cidr& out) noexcept {
  const std::size_t slash = s.find('/');
  const std::string_view addr = s.substr(0, slash);
  Cidr c;
  if (parse_address(addr, AF_INET, c.addr)) {
    c.family = AF_INET;
    c.bits = 32;
  } else if (parse_address(addr, AF_INET6, c.addr)) {
    c.family = AF_INET6;
    c.bits = 128;
  } else {
    return false;
  }
  if (slash != std::string_view::npos && !parse_decimal(s.substr(slash + 1), c.bits, c.bits)) return false;
  const unsigned all = c.family == AF_INET ? 32 : 128;
  for (unsigned bit = c.bits; bit < all; ++bit)  // no host bits past the prefix
    if (c.addr[bit / 8] & (0x80u >> (bit % 8))) return false;
  out = c;
  return true;
}

bool cidr_match(const std::vector<Cidr>& list, const sockaddr_storage& a) noexcept {
  std::uint8_t v4[4], v6[16];
  bool has4 = false, has6 = false;
  if (a.ss_family == AF_INET) {
    std::memcpy(v4, &reinterpret_cast<const sockaddr_in&>(a).sin_addr, 4);
    has4 = true;
  } else if (a.ss_family == AF_INET6) {
    const in6_addr& x = reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
    std::memcpy(v6, &x, 16);
    has6 = true;
    if (IN6_IS_ADDR_V4MAPPED(&x)) {
      std::memcpy(v4, v6 + 12, 4);
      has4 = true;
    }
  }
  for (const Cidr& c : list) {
    const std::uint8_t* have = c.family == AF_INET ? (has4 ? v4 : nullptr) : (has6 ? v6 : nullptr);
    if (!have) continue;
    const unsigned full = c.bits / 8, rest = c.bits % 8;
    if (std::memcmp(have, c.addr, full) != 0) continue;
    if (rest && ((have[full] ^ c.addr[full]) & std::uint8_t(0xff00u >> rest))) continue;
    return true;
  }
  return false;
}

}  // namespace userd::server
