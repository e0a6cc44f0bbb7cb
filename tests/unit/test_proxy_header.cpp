// tests/unit/test_proxy_header.cpp: the PROXY protocol parsers and the source list, case by case from haproxy's
// proxy-protocol.txt: what a balancer sends is taken, a prefix of it waits, anything else is refused at once.
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <string>

#include "libuserd/server/proxy_header.hpp"

using namespace userd::server;
using Status = ProxyHeader::Status;

namespace {
ProxyHeader parse(const std::string& s) { return parse_proxy_header(s.data(), s.size()); }

std::string source_of(const ProxyHeader& h) {
  char host[INET6_ADDRSTRLEN] = "";
  unsigned port = 0;
  if (h.source.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(h.source);
    inet_ntop(AF_INET, &a.sin_addr, host, sizeof host);
    port = ntohs(a.sin_port);
  } else if (h.source.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(h.source);
    inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host);
    port = ntohs(a.sin6_port);
  }
  return std::string(host) + " " + std::to_string(port);
}

const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string v2(unsigned char ver_cmd, unsigned char family, const std::string& body) {
  std::string h = kSig;
  h += char(ver_cmd);
  h += char(family);
  h += char(body.size() >> 8);
  h += char(body.size() & 0xff);
  return h + body;
}

std::string v4_block(const char* src, const char* dst, unsigned sport, unsigned dport) {
  std::string b(12, '\0');
  inet_pton(AF_INET, src, &b[0]);
  inet_pton(AF_INET, dst, &b[4]);
  b[8] = char(sport >> 8), b[9] = char(sport & 0xff), b[10] = char(dport >> 8), b[11] = char(dport & 0xff);
  return b;
}

std::string tlv(unsigned char type, const std::string& value) {
  return std::string(1, char(type)) + char(value.size() >> 8) + char(value.size() & 0xff) + value;
}
}  // namespace

TEST_CASE("proxy v1: TCP4 and TCP6 name the source; what follows is not part of it") {
  const std::string head = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
  ProxyHeader h = parse(head + "GET / HTTP/1.1\r\n");
  REQUIRE(h.status == Status::Done);
  CHECK(h.size == head.size());
  CHECK(h.has_source);
  CHECK(source_of(h) == "192.0.2.1 56324");

  h = parse("PROXY TCP6 2001:db8::1 2001:db8::2 65535 80\r\n");
  REQUIRE(h.status == Status::Done);
  CHECK(source_of(h) == "2001:db8::1 65535");

  h = parse("PROXY UNKNOWN\r\n");
  CHECK(h.status == Status::Done);
  CHECK_FALSE(h.has_source);
  h = parse("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n");  // the spec's worst case, ignored
  CHECK(h.status == Status::Done);
  CHECK_FALSE(h.has_source);
}

TEST_CASE("proxy v1: every prefix waits; the 107-byte bound and malformed lines are refused") {
  const std::string head = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
  for (std::size_t n = 0; n < head.size(); ++n) CHECK(parse(head.substr(0, n)).status == Status::More);
  CHECK(parse("PROXY UNKNOWN " + std::string(120, 'x')).status == Status::Bad);  // no CRLF within 107 bytes
  CHECK(parse("PROXY UNKNOWN " + std::string(80, 'x')).status == Status::More);
  const char* bad[] = {
      "GET / HTTP/1.1\r\n",                                      // HTTP straight to the listener
      "proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n",               // case matters
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n",           // LF alone
      "PROXY TCP4 192.0.2.1  198.51.100.7 56324 443\r\n",        // two spaces
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n",             // a field missing
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 1\r\n",       // one too many
      "PROXY TCP4 2001:db8::1 198.51.100.7 56324 443\r\n",       // IPv6 in TCP4
      "PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",          // IPv4 in TCP6
      "PROXY TCP4 192.0.2.256 198.51.100.7 56324 443\r\n",       // not an address
      "PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",         // port out of range
      "PROXY TCP4 192.0.2.1 198.51.100.7 056324 443\r\n",        // a leading zero
      "PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",            // a sign
      "PROXY UDP4 192.0.2.1 198.51.100.7 56324 443\r\n",         // not a stream
      "PROXY \r\n",
  };
  for (const char* b : bad) {
    CAPTURE(b);
    CHECK(parse(b).status == Status::Bad);
  }
  CHECK(parse("X").status == Status::Bad);   // refused at the first byte, not after a deadline
  CHECK(parse("\r\n\r\nX").status == Status::Bad);
}

TEST_CASE("proxy v2: PROXY over TCP4 and TCP6, LOCAL, UNSPEC, with TLVs skipped") {
  const std::string block = v4_block("203.0.113.9", "10.0.0.1", 40000, 443);
  ProxyHeader h = parse(v2(0x21, 0x11, block) + "\x16\x03\x01");  // a ClientHello follows
  REQUIRE(h.status == Status::Done);
  CHECK(h.size == 28);
  CHECK(source_of(h) == "203.0.113.9 40000");

  const std::string tlvs = tlv(0x01, "h2") + tlv(0x05, std::string(128, 'u')) + tlv(0x20, std::string(5, '\0'));
  h = parse(v2(0x21, 0x11, block + tlvs));
  REQUIRE(h.status == Status::Done);
  CHECK(h.size == 16 + block.size() + tlvs.size());
  CHECK(source_of(h) == "203.0.113.9 40000");

  std::string b6(36, '\0');
  inet_pton(AF_INET6, "2001:db8::9", &b6[0]);
  b6[32] = char(0x12), b6[33] = char(0x34);
  h = parse(v2(0x21, 0x21, b6));
  REQUIRE(h.status == Status::Done);
  CHECK(source_of(h) == "2001:db8::9 4660");

  h = parse(v2(0x20, 0x11, block));  // LOCAL: a health check; its block is discarded
  CHECK(h.status == Status::Done);
  CHECK_FALSE(h.has_source);
  h = parse(v2(0x20, 0x00, ""));
  CHECK(h.status == Status::Done);
  CHECK_FALSE(h.has_source);
  h = parse(v2(0x21, 0x00, "junk"));  // AF_UNSPEC: nothing to use, the socket's peer stands
  CHECK(h.status == Status::Done);
  CHECK_FALSE(h.has_source);
  h = parse(v2(0x21, 0x31, std::string(216, '\0')));  // a UNIX stream socket
  CHECK(h.status == Status::Done);
  CHECK_FALSE(h.has_source);
}

TEST_CASE("proxy v2: prefixes wait; versions, commands, families, lengths and TLVs that do not fit are refused") {
  const std::string whole = v2(0x21, 0x11, v4_block("203.0.113.9", "10.0.0.1", 40000, 443) + tlv(0x02, "example"));
  for (std::size_t n = 0; n < whole.size(); ++n) CHECK(parse(whole.substr(0, n)).status == Status::More);
  const std::string block = v4_block("203.0.113.9", "10.0.0.1", 40000, 443);
  CHECK(parse(v2(0x11, 0x11, block)).status == Status::Bad);  // version 1 in the binary form
  CHECK(parse(v2(0x31, 0x11, block)).status == Status::Bad);  // version 3
  CHECK(parse(v2(0x22, 0x11, block)).status == Status::Bad);  // command 2
  CHECK(parse(v2(0x21, 0x12, block)).status == Status::Bad);  // UDP over IPv4
  CHECK(parse(v2(0x21, 0x22, std::string(36, '\0'))).status == Status::Bad);
  CHECK(parse(v2(0x21, 0x41, block)).status == Status::Bad);  // no such family
  CHECK(parse(v2(0x21, 0x11, block.substr(0, 11))).status == Status::Bad);  // shorter than its addresses
  CHECK(parse(v2(0x21, 0x21, std::string(35, '\0'))).status == Status::Bad);
  CHECK(parse(v2(0x21, 0x11, block + std::string("\x01\x00", 2))).status == Status::Bad);          // a TLV cut in its header
  CHECK(parse(v2(0x21, 0x11, block + tlv(0x01, "h2").substr(0, 4))).status == Status::Bad);  // in its value
  std::string sig = kSig;
  sig[11] = 'X';
  CHECK(parse(sig + std::string("\x21\x11\x00\x0c", 4) + block).status == Status::Bad);  // a wrong signature
  // Oversized: a length past kMaxProxyHeader is refused as soon as the length is there, before its bytes.
  std::string big = kSig + "\x21\x11";
  big += char(0x08), big += char(0x00);  // 2048 + 16
  CHECK(parse(big).status == Status::Bad);
  std::string most = kSig + "\x21\x11";
  const std::size_t len = kMaxProxyHeader - 16;
  most += char(len >> 8), most += char(len & 0xff);
  CHECK(parse(most).status == Status::More);
  most += block + tlv(0x04, std::string(len - block.size() - 3, 'n'));
  CHECK(parse(most).status == Status::Done);
}

TEST_CASE("proxy sources: CIDRs and bare addresses, IPv4-mapped peers, no host bits") {
  Cidr c;
  CHECK(parse_cidr("10.0.0.0/8", c));
  CHECK(parse_cidr("127.0.0.1", c));
  CHECK(parse_cidr("::1", c));
  CHECK(parse_cidr("fd00::/8", c));
  CHECK(parse_cidr("0.0.0.0/0", c));
  CHECK_FALSE(parse_cidr("10.0.0.1/8", c));  // host bits set
  CHECK_FALSE(parse_cidr("10.0.0.0/33", c));
  CHECK_FALSE(parse_cidr("10.0.0.0/", c));
  CHECK_FALSE(parse_cidr("10.0.0.0/08", c));
  CHECK_FALSE(parse_cidr("host.example", c));
  CHECK_FALSE(parse_cidr("", c));

  std::vector<Cidr> list(2);
  REQUIRE(parse_cidr("10.1.0.0/16", list[0]));
  REQUIRE(parse_cidr("2001:db8::/32", list[1]));
  auto peer = [](const char* a) {
    sockaddr_storage ss{};
    if (inet_pton(AF_INET, a, &reinterpret_cast<sockaddr_in&>(ss).sin_addr) == 1) {
      ss.ss_family = AF_INET;
    } else {
      inet_pton(AF_INET6, a, &reinterpret_cast<sockaddr_in6&>(ss).sin6_addr);
      ss.ss_family = AF_INET6;
    }
    return ss;
  };
  CHECK(cidr_match(list, peer("10.1.255.3")));
  CHECK_FALSE(cidr_match(list, peer("10.2.0.1")));
  CHECK(cidr_match(list, peer("::ffff:10.1.0.9")));
  CHECK(cidr_match(list, peer("2001:db8:ffff::1")));
  CHECK_FALSE(cidr_match(list, peer("2001:db9::1")));
  REQUIRE(parse_cidr("10.1.2.128/25", list[0]));
  CHECK(cidr_match(list, peer("10.1.2.200")));
  CHECK_FALSE(cidr_match(list, peer("10.1.2.127")));
}
