// server/timers.hpp: the connection deadlines of one loop thread: one FIFO list per kind of timeout. Every entry
// of a list has the same duration, so appending keeps each list sorted by deadline, and expiry only looks at the
// fronts. Moving a connection between lists is O(1); nothing here makes a system call or allocates.
// A node may sit on several TimerLists at once, one per Link member: a connection waits for its socket (idle,
// header, body, send, linger) and, independently, for its handler.
// Not here: what an expired connection does (connection.cpp), when the lists are checked (worker.cpp tick).
#pragma once

#include <array>
#include <cstdint>

namespace userd::server {

// SendCheck: the send deadline passed with a send still in flight; a short wait tells whether the socket itself
// drained meanwhile (a slow reader) or not (a client that stopped).
enum class Timer : std::uint8_t { None, Idle, Header, Body, Linger, Send, SendCheck, Handler, kCount };

struct TimerLink {
  void* prev = nullptr;
  void* next = nullptr;
  Timer which = Timer::None;
  std::uint64_t deadline = 0;
};

template <class Node, TimerLink Node::*L>
class TimerLists {
 public:
  using Link = TimerLink;

  void set_duration(Timer t, std::uint64_t ms) noexcept { duration_[std::size_t(t)] = ms; }
  std::uint64_t duration(Timer t) const noexcept { return duration_[std::size_t(t)]; }

  // Puts n on t's list with a deadline of now + t's duration (None: on no list).
  void set(Node& n, Timer t, std::uint64_t now) noexcept {
    clear(n);
    if (t == Timer::None) return;
    Link& l = n.*L;
    List& list = lists_[std::size_t(t)];
    l.which = t;
    l.deadline = now + duration_[std::size_t(t)];
    l.prev = list.tail;
    l.next = nullptr;
    (list.tail ? link(list.tail).next : list.head) = &n;
    list.tail = &n;
  }

  void clear(Node& n) noexcept {
    Link& l = n.*L;
    if (l.which == Timer::None) return;
    List& list = lists_[std::size_t(l.which)];
    Node* prev = static_cast<Node*>(l.prev);
    Node* next = static_cast<Node*>(l.next);
    (prev ? link(prev).next : list.head) = next;
    (next ? link(next).prev : list.tail) = prev;
    l = Link{};
  }

  // Takes every node whose deadline has passed off its list and calls expired(node, timer).
  template <class F>
  void expire(std::uint64_t now, F&& expired) {
    for (std::size_t t = 1; t < lists_.size(); ++t) {
      while (Node* n = static_cast<Node*>(lists_[t].head)) {
        if (link(n).deadline > now) break;
        clear(*n);
        expired(*n, Timer(t));
      }
    }
  }

 private:
  static Link& link(void* n) noexcept { return static_cast<Node*>(n)->*L; }
  struct List {
    void* head = nullptr;
    void* tail = nullptr;
  };
  std::array<List, std::size_t(Timer::kCount)> lists_{};
  std::array<std::uint64_t, std::size_t(Timer::kCount)> duration_{};
};

}  // namespace userd::server
