// userd/result.hpp: the error vocabulary of libuserd: Result<T> with a typed Error, no exceptions.
// libstdc++ 12 has no std::expected, so this carries the subset we use; later it can become an alias.
// Not here: HTTP status mapping (http/parser.hpp), messages for people (the daemon formats those).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace userd {

enum class Errc : std::uint8_t { Io, NoMemory, Unsupported, BadInput };  // only the kinds someone handles

// `what` names the step that failed ("bind", "io_uring_queue_init"): a static string, never owned.
struct Error {
  Errc code = Errc::Io;
  int sys = 0;  // errno when code == Errc::Io or Unsupported
  const char* what = "";
  const char* detail = nullptr;  // the cause when errno has no word for it (a resolver's message): static too
  // One line for a person: "bind: Address already in use", or `what` alone when there is no cause to give.
  std::string message() const {
    std::string m = what;
    const char* cause = detail ? detail : sys != 0 ? std::strerror(sys) : nullptr;
    if (cause) {
      if (!m.empty()) m += ": ";
      m += cause;
    }
    return m.empty() ? std::string("error") : m;
  }
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
  // The value, or fallback when there is none.
  T value_or(T fallback) const& { return v_.index() == 0 ? *std::get_if<0>(&v_) : std::move(fallback); }
  // The error; on a success, a default E (never a read through a null pointer).
  const E& error() const noexcept {
    static const E none{};
    const E* e = std::get_if<1>(&v_);
    return e ? *e : none;
  }
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
