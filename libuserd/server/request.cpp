// server/request.cpp: Request's accessors over the parsed head, and Responder's calls into its worker.
#include "libuserd/http/parser.hpp"
#include "libuserd/http/percent.hpp"
#include "libuserd/http/response_writer.hpp"
#include "libuserd/server/connection.hpp"
#include "libuserd/server/reply_target.hpp"
#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd {

std::string_view Request::method() const noexcept { return head_->method; }
std::string_view Request::target() const noexcept { return head_->target; }
std::string_view Request::path() const noexcept { return head_->path; }
std::string_view Request::query() const noexcept { return head_->query; }
int Request::version_minor() const noexcept { return head_->minor; }
std::string_view Request::protocol() const noexcept {
  if (head_->major == 2) return "HTTP/2";
  return head_->minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
}
bool Request::keep_alive() const noexcept { return head_->keep_alive; }

std::span<const Header> Request::headers() const noexcept { return {head_->headers.data(), head_->header_count}; }

namespace {
std::string_view find_header(std::span<const Header> headers, std::string_view name) noexcept {
  for (const Header& h : headers)
    if (http::iequals(h.name, name)) return h.value;
  return {};
}
}  // namespace

std::string_view Request::header(std::string_view name) const noexcept { return find_header(headers(), name); }
std::string_view UpstreamReply::header(std::string_view name) const noexcept { return find_header(headers, name); }

TlsInfo Request::tls() const noexcept { return conn_ ? conn_->tls_info() : TlsInfo{}; }
unsigned Request::loop_index() const noexcept { return conn_ ? conn_->loop_index() : 0; }
bool Request::after(std::uint64_t ms, std::function<void()> fn) const {
  return loop_ && loop_->run_after(ms, std::move(fn));
}
bool Responder::after(std::uint64_t ms, std::function<void()> fn) const {
  return target_ && target_->run_after(ms, std::move(fn));
}
bool Stream::after(std::uint64_t ms, std::function<void()> fn) const {
  return target_ && target_->run_after(ms, std::move(fn));
}

std::string_view Request::param(std::string_view name) const noexcept {
  if (!params_) return {};
  for (std::size_t i = 0; i < params_->count; ++i)
    if (params_->names[i] == name) return params_->values[i];
  return {};
}

namespace {
// Whether the query component raw decodes to name, without writing anything.
bool decodes_to(std::string_view raw, std::string_view name) noexcept {
  std::size_t k = 0;
  for (std::size_t i = 0; i < raw.size(); ++i, ++k) {
    char c = raw[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%' && i + 2 < raw.size()) {
      c = char(http::hex_digit(raw[i + 1]) << 4 | http::hex_digit(raw[i + 2]));
      i += 2;
    }
    if (k >= name.size() || name[k] != c) return false;
  }
  return k == name.size();
}
}  // namespace

std::string_view Request::query_param(std::string_view name) const noexcept {
  const std::string_view q = head_->query;
  std::size_t pos = 0;
  while (pos <= q.size()) {
    std::size_t amp = q.find('&', pos);
    if (amp == std::string_view::npos) amp = q.size();
    const std::string_view pair = q.substr(pos, amp - pos);
    const std::size_t eq = pair.find('=');
    const std::string_view key = pair.substr(0, eq);
    if (!key.empty() && decodes_to(key, name)) {
      const std::string_view raw = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
      if (raw.find_first_of("%+") == std::string_view::npos || !query_space_) return raw;
      // Decoded where it sits, in a copy as long as the query: repeated calls rewrite the same bytes, so views
      // handed out before stay valid.
      char* out = query_space_ + (raw.data() - q.data());
      const long n = http::percent_decode(raw, out, true);
      return n < 0 ? std::string_view() : std::string_view(out, std::size_t(n));
    }
    pos = amp + 1;
  }
  return {};
}

std::string_view Request::peer() const noexcept { return conn_ ? conn_->peer() : std::string_view(); }

FetchResult Request::fetch(std::size_t upstream, std::string_view path, Responder res,
                           const UpstreamCallback& done) const noexcept {
  UpstreamRequest r;
  r.target = path;
  return fetch(upstream, r, res, done);
}

FetchResult Request::fetch(std::size_t upstream, std::string_view path, Responder res, UpstreamDone done,
                           void* user) const noexcept {
  return fetch(upstream, path, res, UpstreamCallback(done, user));
}

FetchResult Request::fetch(std::size_t upstream, const UpstreamRequest& request, Responder res, UpstreamDone done,
                           void* user) const noexcept {
  return fetch(upstream, request, res, UpstreamCallback(done, user));
}

FetchResult Request::fetch(std::size_t upstream, const UpstreamRequest& request, Responder res,
                           const UpstreamCallback& done) const noexcept {
  if (!loop_) return {FetchRefused::NotOnLoop};
  return {loop_->fetch(upstream, request, res, done)};
}

std::string_view describe(FetchRefused r) noexcept {
  switch (r) {
    case FetchRefused::None: return "ok";
    case FetchRefused::NoUpstream: return "no such upstream";
    case FetchRefused::BadRequest: return "a header, method or target the upstream request cannot carry";
    case FetchRefused::QueueFull: return "too many upstream requests queued";
    case FetchRefused::NoMemory: return "out of memory";
    case FetchRefused::NotOnLoop: return "not on the handler's loop thread";
  }
  return "refused";
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
    case UpstreamError::BodyFailed: return "the request body from the client failed";
  }
  return "upstream error";
}

Stream Responder::stream(const Response& head) const noexcept {
  if (!target_ || !target_->stream_begin(slot_, gen_, seq_, head)) return Stream();
  return Stream(target_, slot_, gen_, seq_);
}
bool Stream::write(std::string_view data) const noexcept {
  return target_ && target_->stream_write(slot_, gen_, seq_, data, false, {});
}
bool Stream::end() const noexcept { return target_ && target_->stream_write(slot_, gen_, seq_, {}, true, {}); }
bool Stream::end(std::span<const Header> trailers) const noexcept {
  return target_ && http::trailers_ok(trailers) && target_->stream_write(slot_, gen_, seq_, {}, true, trailers);
}
bool Stream::alive() const noexcept { return target_ && target_->awaiting(slot_, gen_, seq_); }
bool Stream::abort() const noexcept { return target_ && target_->stream_abort(slot_, gen_, seq_); }
void Stream::on_writable(std::function<void()> fn) const {
  if (target_) target_->stream_on_writable(slot_, gen_, seq_, std::move(fn));
}

namespace {
bool body_call(server::ReplyTarget* t, std::uint32_t slot, std::uint16_t gen, std::uint32_t seq,
               server::BodyCall c) {
  return t && t->body(slot, gen, seq, c);
}
}  // namespace

bool BodyReader::on_data(std::function<void(std::string_view, bool)> fn) const {
  return body_call(target_, slot_, gen_, seq_, {server::BodyCall::Op::OnData, &fn});
}
void BodyReader::on_error(std::function<void(BodyError)> fn) const {
  body_call(target_, slot_, gen_, seq_, {server::BodyCall::Op::OnError, nullptr, &fn});
}
void BodyReader::pause() const noexcept {
  try {
    body_call(target_, slot_, gen_, seq_, {server::BodyCall::Op::Pause});
  } catch (...) {
  }
}
void BodyReader::resume() const noexcept {
  try {
    body_call(target_, slot_, gen_, seq_, {server::BodyCall::Op::Resume});
  } catch (...) {
  }
}
bool BodyReader::alive() const noexcept {
  try {
    return body_call(target_, slot_, gen_, seq_, {server::BodyCall::Op::Alive});
  } catch (...) {
    return false;
  }
}

bool Responder::send(const Response& r) const noexcept { return target_ && target_->reply(slot_, gen_, seq_, r); }
bool Responder::alive() const noexcept { return target_ && target_->awaiting(slot_, gen_, seq_); }

}  // namespace userd
