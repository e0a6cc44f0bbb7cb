// tests/unit/test_exchanges.cpp: the loop's table of HTTP/2 exchanges: tokens per request, reuse of freed
// entries, growth in chunks that never move, and slots that name no exchange.
#include <doctest/doctest.h>

#include <set>
#include <vector>

#include "libuserd/server/exchanges.hpp"

using namespace userd::server;

TEST_CASE("exchanges: each request has its own token, gone at unpublish, and a reused entry's token differs") {
  ExchangeTable t(1024);
  const ExchangeTable::Opened a = t.open(3, 7);
  const ExchangeTable::Opened b = t.open(3, 7);
  REQUIRE((a.slot & kExchangeSlot) != 0);
  CHECK(a.slot != b.slot);
  CHECK(a.seq != b.seq);
  CHECK(t.get(a.slot)->token.load() == awaited_token(7, a.seq));
  std::uint32_t slot = 0;
  std::uint16_t gen = 0;
  REQUIRE(t.owner(b.slot, slot, gen));
  CHECK((slot == 3 && gen == 7));
  t.unpublish(a.slot);
  CHECK(t.get(a.slot)->token.load() == 0);
  CHECK(t.owner(a.slot, slot, gen));  // still open: its stream has not closed
  t.close(a.slot);
  t.close(a.slot);  // twice: once only (the free list stays whole)
  CHECK_FALSE(t.owner(a.slot, slot, gen));
  CHECK(t.open_count() == 1);
  const ExchangeTable::Opened c = t.open(4, 1);
  CHECK(c.slot == a.slot);  // the freed entry, reused...
  CHECK(t.get(c.slot)->token.load() == awaited_token(1, c.seq));
  CHECK(awaited_token(1, c.seq) != awaited_token(7, a.seq));  // ...with a token a stale Responder cannot match
  t.close(b.slot);
  t.close(c.slot);
  CHECK(t.open_count() == 0);
}

TEST_CASE("exchanges: the table grows in chunks that stay put, up to its capacity; other slots name nothing") {
  ExchangeTable t(1000);
  std::vector<ExchangeTable::Opened> open;
  std::vector<ExchangeTable::Entry*> where;
  for (int i = 0; i < 1000; ++i) {
    open.push_back(t.open(0, 0));
    REQUIRE(open.back().slot);
    where.push_back(t.get(open.back().slot));
  }
  std::set<std::uint32_t> distinct;
  for (std::size_t i = 0; i < open.size(); ++i) {
    distinct.insert(open[i].slot);
    CHECK(t.get(open[i].slot) == where[i]);  // entries made early are where they were
  }
  CHECK(distinct.size() == 1000);
  CHECK(t.get(5) == nullptr);                          // a connection's slot, not an exchange
  CHECK(t.get(std::uint32_t(kExchangeSlot | 0x7fffffffu)) == nullptr);  // past the table
  // Full at its capacity rounded up to whole chunks (1024): then open says so instead of growing.
  int more = 0;
  while (t.open(0, 0).slot) ++more;
  CHECK(more == 24);
  for (const auto& o : open) t.close(o.slot);
  CHECK(t.open_count() == 24);
}
