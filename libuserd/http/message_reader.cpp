// http/message_reader.cpp: the head, then the body by its framing (RFC 9112 6.3); the only differences between
// the two sides are which parser reads the head, 1xx responses, and bodies that end with the connection.
#include "libuserd/http/message_reader.hpp"

namespace userd::http {
namespace {

struct Framing {
  bool chunked;
  bool until_close;
  std::uint64_t length;
};

ParseResult parse_head(std::span<const char> buf, std::size_t prev, RequestHead& h, const Limits& l) noexcept {
  return parse_request(buf, prev, h, l);
}
ParseResult parse_head(std::span<const char> buf, std::size_t prev, ParsedResponse& h, const Limits& l) noexcept {
  return parse_response(buf, prev, h, l);
}
Framing framing(const RequestHead& h) noexcept { return {h.chunked, false, h.content_length}; }
Framing framing(const ParsedResponse& h) noexcept { return {h.chunked, h.until_close, h.content_length}; }
bool interim(const RequestHead&) noexcept { return false; }
bool interim(const ParsedResponse& h) noexcept { return h.status < 200; }

}  // namespace

template <class Head>
ReadStep MessageReader<Head>::read(char* msg, std::size_t avail, const Limits& limits) noexcept {
  if (head_done_ && base_ != msg) {  // the same bytes, parsed before, now elsewhere: cannot fail
    (void)parse_head({msg, head_len_}, 0, head_, limits);
    base_ = msg;
  }
  if (!head_done_) {
    const ParseResult r = parse_head({msg, avail}, prev_len_, head_, limits);
    if (r.status == ParseStatus::NeedMore) {
      prev_len_ = avail;
      return {ReadStatus::NeedMore};
    }
    prev_len_ = 0;
    if (r.status == ParseStatus::Bad) return {ReadStatus::Bad, r.error};
    base_ = msg;
    head_len_ = r.consumed;
    if (interim(head_)) return {ReadStatus::Interim, HttpError::None, head_len_};
    body_have_ = 0;
    if (no_body_) return {ReadStatus::Done, HttpError::None, head_len_};
    head_done_ = true;
    raw_off_ = head_len_;
    const Framing f = framing(head_);
    if (stop_at_head_ && (f.chunked || f.length > 0 || f.until_close)) return {ReadStatus::Head, HttpError::None, head_len_};
  }
  const Framing f = framing(head_);
  if (!checked_) {
    checked_ = true;
    if (f.chunked) chunked_.reset(max_body_);
    else if (!f.until_close && f.length > max_body_) return {ReadStatus::Bad, HttpError::BodyTooLarge};
  }
  std::size_t total;
  if (f.chunked) {
    const ChunkStep s = chunked_.decode(msg + raw_off_, avail - raw_off_, msg + head_len_ + body_have_);
    body_have_ += s.produced;
    raw_off_ += s.consumed;
    if (s.status == ChunkStatus::Bad) return {ReadStatus::Bad, HttpError::BadChunk};
    if (s.status == ChunkStatus::TooLarge) return {ReadStatus::Bad, HttpError::BodyTooLarge};
    if (s.status == ChunkStatus::NeedMore) return {ReadStatus::NeedMore};
    total = raw_off_;
  } else if (f.until_close) {
    if (avail - head_len_ > max_body_) return {ReadStatus::Bad, HttpError::BodyTooLarge};
    return {ReadStatus::NeedMore};
  } else {
    total = head_len_ + std::size_t(f.length);
    if (avail < total) return {ReadStatus::NeedMore};
    body_have_ = std::size_t(f.length);
  }
  head_done_ = checked_ = false;  // head() and body() stay readable until the next read
  return {ReadStatus::Done, HttpError::None, total};
}

template <class Head>
ReadStep MessageReader<Head>::finish_at_close(char* msg, std::size_t avail) noexcept {
  if (!head_done_ || !framing(head_).until_close) return {ReadStatus::NeedMore};
  if (base_ != msg) {
    (void)parse_head({msg, head_len_}, 0, head_, Limits{});
    base_ = msg;
  }
  body_have_ = avail - head_len_;
  head_done_ = checked_ = false;
  return {ReadStatus::Done, HttpError::None, avail};
}

template class MessageReader<RequestHead>;
template class MessageReader<ParsedResponse>;

}  // namespace userd::http
