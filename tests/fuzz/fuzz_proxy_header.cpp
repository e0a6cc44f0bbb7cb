// tests/fuzz/fuzz_proxy_header.cpp: the PROXY header parser on arbitrary bytes. Its verdict on the whole input must
// follow from its verdicts on the prefixes (a transport feeds it one receive at a time): a prefix that is Bad
// stays Bad, a Done header is Done with the same size once all its bytes are there, and More never outlives
// kMaxProxyHeader bytes.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "libuserd/server/proxy_header.hpp"

using namespace userd::server;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::vector<char> in(data, data + size);  // exact size: an over-read is caught
  const ProxyHeader whole = parse_proxy_header(in.data(), in.size());
  if (whole.status == ProxyHeader::Status::Done && (whole.size == 0 || whole.size > size || whole.size > kMaxProxyHeader))
    std::abort();
  if (whole.status == ProxyHeader::Status::More && size >= kMaxProxyHeader) std::abort();
  for (std::size_t n = 0; n < size && n <= kMaxProxyHeader; ++n) {
    const std::vector<char> prefix(data, data + n);
    const ProxyHeader p = parse_proxy_header(prefix.data(), n);
    if (p.status == ProxyHeader::Status::Bad && whole.status != ProxyHeader::Status::Bad) std::abort();
    if (p.status == ProxyHeader::Status::Done) {
      if (whole.status != ProxyHeader::Status::Done || whole.size != p.size) std::abort();
      break;
    }
  }
  return 0;
}
