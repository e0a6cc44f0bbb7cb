// server/request.cpp: Request's accessors over the parsed head, and Responder's calls into its worker.
#include "libuserd/http/parser.hpp"
#include "libuserd/server/reply_target.hpp"
#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd {

std::string_view Request::method() const noexcept { return head_->method; }
std::string_view Request::target() const noexcept { return head_->target; }
std::string_view Request::path() const noexcept { return head_->path; }
std::string_view Request::query() const noexcept { return head_->query; }
int Request::version_minor() const noexcept { return head_->minor; }
bool Request::keep_alive() const noexcept { return head_->keep_alive; }

std::span<const Header> Request::headers() const noexcept { return {head_->headers.data(), head_->header_count}; }

std::string_view Request::header(std::string_view name) const noexcept {
  for (const Header& h : headers())
    if (http::iequals(h.name, name)) return h.value;
  return {};
}

bool Request::fetch(std::size_t upstream, std::string_view path, Responder res, UpstreamDone done,
                    void* user) const noexcept {
  return loop_ && loop_->fetch(upstream, path, res, done, user);
}

std::string_view describe(UpstreamError e) noexcept {
  switch (e) {
    case UpstreamError::None: return "ok";
    case UpstreamError::Unreachable: return "upstream unreachable";
    case UpstreamError::Timeout: return "upstream timed out";
    case UpstreamError::Closed: return "upstream closed the connection early";
    case UpstreamError::BadResponse: return "malformed upstream response";
    case UpstreamError::TooLarge: return "upstream response too large";
    case UpstreamError::Overloaded: return "too many upstream requests queued";
  }
  return "upstream error";
}

bool Responder::send(const Response& r) const noexcept { return target_ && target_->reply(slot_, gen_, seq_, r); }
bool Responder::alive() const noexcept { return target_ && target_->awaiting(slot_, gen_, seq_); }

}  // namespace userd
