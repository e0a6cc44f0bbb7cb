// userd/result.hpp: the error vocabulary of libuserd: Result<T> with a typed Error, no exceptions.
// libstdc++ 12 has no std::expected, so this carries the subset we use; later it can become an alias.
// Not here: HTTP status mapping (http/parser.hpp), messages for people (the daemon formats those).
#pragma once

#include <cstdint>
#include <utility>
#include <variant>

namespace userd {

enum class Errc : std::uint8_t { Io, NoMemory, Unsupported, BadInput };  // only the kinds someone handles

// `what` names the step that failed ("bind", "io_uring_queue_init"): a static string, never owned.
struct Error {
  Errc code;
  int sys = 0;  // errno when code == Errc::Io or Unsupported
  const char* what = "";
};

template <class E>
struct Unexpected {
  E error;
};

inline Unexpected<Error> fail(Errc c, int sys = 0, const char* what = "") { return {Error{c, sys, what}}; }

template <class T, class E = Error>
class [[nodiscard]] Result {
  std::variant<T, E> v_;

 public:
  Result(T v) : v_(std::in_place_index<0>, std::move(v)) {}
  Result(Unexpected<E> e) : v_(std::in_place_index<1>, std::move(e.error)) {}
  explicit operator bool() const noexcept { return v_.index() == 0; }
  T& operator*() noexcept { return *std::get_if<0>(&v_); }
  T* operator->() noexcept { return std::get_if<0>(&v_); }
  const E& error() const noexcept { return *std::get_if<1>(&v_); }
};

template <class E>
class [[nodiscard]] Result<void, E> {
  bool ok_ = true;
  E e_{};

 public:
  Result() = default;
  Result(Unexpected<E> e) : ok_(false), e_(std::move(e.error)) {}
  explicit operator bool() const noexcept { return ok_; }
  const E& error() const noexcept { return e_; }
};

}  // namespace userd
