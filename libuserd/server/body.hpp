// server/body.hpp: a streamed request body (RouteOptions::stream_body) as a session keeps it: the consumer a
// handler set through its BodyReader, whether it wants bytes now, and the end or failure it is told of (the
// route's limit is the framing's to enforce: the chunked decoder, Content-Length, an HTTP/2 stream's count). The
// same for HTTP/1.1 and HTTP/2; each session decides where the bytes
// come from and what not wanting them stops (the socket's receive, the stream's window).
// Not here: the handle (userd/request.hpp), routing the handle's calls to a session (worker.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

#include "userd/request.hpp"

namespace userd::server {

// A BodyReader's call, routed by the request it names to the session that reads that body.
struct BodyCall {
  enum class Op : std::uint8_t { OnData, OnError, Pause, Resume, Alive };
  Op op;
  std::function<void(std::string_view, bool)>* data = nullptr;  // OnData
  std::function<void(BodyError)>* error = nullptr;             // OnError
};

class BodyConsumer {
 public:
  void start() noexcept {
    active_ = true;
    asked_ = paused_ = false;
  }
  bool active() const noexcept { return active_; }
  bool asked() const noexcept { return asked_; }
  bool paused() const noexcept { return paused_; }
  // Bytes can go to the consumer now.
  bool wants() const noexcept { return active_ && asked_ && !paused_; }

  // A BodyReader call: its answer (on_data: whether there is a body to read; alive: whether it still arrives).
  bool apply(BodyCall& c) {
    if (!active_) return false;
    switch (c.op) {
      case BodyCall::Op::OnData:
        data_ = std::move(*c.data);
        asked_ = bool(data_);
        return asked_;
      case BodyCall::Op::OnError: error_ = std::move(*c.error); return true;
      case BodyCall::Op::Pause: paused_ = true; return true;
      case BodyCall::Op::Resume: paused_ = false; return true;
      case BodyCall::Op::Alive: return true;
    }
    return false;
  }

  // Hands chunk to the consumer; after last, both callbacks are let go. False when the consumer threw.
  bool deliver(std::string_view chunk, bool last) noexcept {
    if (last) active_ = false;
    std::function<void(std::string_view, bool)> fn = std::move(data_);  // it may set another while it runs
    bool ok = true;
    try {
      if (fn) fn(chunk, last);
    } catch (...) {
      ok = false;
    }
    if (last || !ok) {
      data_ = nullptr;
      error_ = nullptr;
      active_ = false;
    } else if (!data_ && active_) {  // not if it answered (or failed) meanwhile: then the body is nobody's
      data_ = std::move(fn);
    }
    return ok;
  }

  // The body will not complete: the consumer's on_error runs later in the loop's turn (later), never inside the
  // session call that found out, which may be deep in a parser or in nghttp2.
  void fail(std::vector<std::function<void()>>& later, BodyError e) noexcept {
    if (!active_) return;
    active_ = false;
    data_ = nullptr;
    if (!error_) return;
    try {
      later.push_back([fn = std::move(error_), e] { fn(e); });
    } catch (...) {  // out of memory: the consumer is not told, but nothing of it is kept either
    }
    error_ = nullptr;
  }

  // The request is gone without a word to the consumer (its handler answered, so the rest is discarded).
  void drop() noexcept {
    if (!active_) return;  // an ended or failed body let go of its callbacks then: nothing to do per answer
    active_ = false;
    data_ = nullptr;
    error_ = nullptr;
  }

 private:
  std::function<void(std::string_view, bool)> data_;
  std::function<void(BodyError)> error_;
  bool active_ = false, asked_ = false, paused_ = false;
};

}  // namespace userd::server
