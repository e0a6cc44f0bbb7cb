// server/compression.cpp: the rules of ServerConfig::compress, and the caches and encoders behind them.
#include "libuserd/server/compression.hpp"

#include <algorithm>

namespace userd::server {
namespace {

const CompressedBody* find_body(const std::vector<CompressedBody>& v, std::string_view body) noexcept {
  auto it = std::lower_bound(v.begin(), v.end(), body.data(),
                             [](const CompressedBody& b, const char* p) { return std::less<const char*>()(b.data, p); });
  for (; it != v.end() && it->data == body.data(); ++it)
    if (it->size == body.size()) return &*it;
  return nullptr;
}

// The coded form kept only when it saves something.
void code_into(CompressedBody& b, http::Coding c, http::Effort e) {
  core::ByteBuffer out;
  const std::string_view in(b.data, b.size);
  std::string& form = b.coded[std::size_t(c)];
  form.clear();
  if (http::compress_whole(c, e, in, out) && out.size() < in.size()) form.assign(out.data(), out.size());
  b.done[std::size_t(c)] = true;
}

}  // namespace

std::unique_ptr<CompressShared> make_compress_shared(const CompressConfig& cfg, std::string& why) {
  auto s = std::make_unique<CompressShared>();
  for (const std::string& name : cfg.codings) {
    const std::optional<http::Coding> c = http::parse_coding(name);
    if (!c) {
      why = "compress codings: unknown coding \"" + name + "\" (br, zstd, gzip)";
      return nullptr;
    }
    if (std::find(s->order.begin(), s->order.end(), *c) != s->order.end()) {
      why = "compress codings: \"" + name + "\" given twice";
      return nullptr;
    }
    s->order.push_back(*c);
  }
  s->min_size = cfg.min_size;
  for (std::string_view body : cfg.static_bodies) {
    if (find_body(s->statics, body)) continue;
    CompressedBody b;
    b.data = body.data();
    b.size = body.size();
    // Best effort is slow on large bodies (brotli 11 takes about a second per MiB): beyond 4 MiB, dynamic levels.
    const http::Effort e = body.size() <= (4u << 20) ? http::Effort::Best : http::Effort::Dynamic;
    if (body.size() >= s->min_size)
      for (http::Coding c : s->order) code_into(b, c, e);
    s->statics.insert(std::upper_bound(s->statics.begin(), s->statics.end(), b.data,
                                       [](const char* p, const CompressedBody& x) { return std::less<const char*>()(p, x.data); }),
                      std::move(b));
  }
  return s;
}

void StreamEncoder::release() noexcept {
  if (enc_ && owner_) owner_->give_back(std::move(enc_));
  enc_.reset();
}

bool LoopCompression::eligible(const Response& r, const http::HeaderCheck& check) const noexcept {
  if (!r.compressible || check.has_content_encoding || check.no_transform || !http::status_has_body(r.status))
    return false;
  return http::compressible_type(check.has_content_type ? check.content_type : r.content_type);
}

// A static body's coded form: from start()'s table, else from this loop's cache (coded now if there is room and
// it is small enough to code on the loop). Null: neither.
const std::string* LoopCompression::static_form(std::string_view body, http::Coding c) {
  const std::size_t k = std::size_t(c);
  if (const CompressedBody* b = find_body(shared_->statics, body); b && b->done[k]) return &b->coded[k];
  if (body.size() > kMaxOnLoop) return nullptr;
  auto at = std::lower_bound(lazy_.begin(), lazy_.end(), body, [](const std::unique_ptr<CompressedBody>& b, std::string_view x) {
    return std::less<const char*>()(b->data, x.data()) || (b->data == x.data() && b->size < x.size());
  });
  CompressedBody* mine = at != lazy_.end() && (*at)->data == body.data() && (*at)->size == body.size() ? at->get() : nullptr;
  if (!mine) {
    if (lazy_.size() >= kLazyEntries || lazy_bytes_ + body.size() / 2 > kLazyBytes) return nullptr;
    auto b = std::make_unique<CompressedBody>();
    b->data = body.data();
    b->size = body.size();
    mine = lazy_.insert(at, std::move(b))->get();
  }
  if (!mine->done[k]) {
    if (lazy_bytes_ + body.size() / 2 > kLazyBytes) return nullptr;
    code_into(*mine, c, http::Effort::Dynamic);
    lazy_bytes_ += mine->coded[k].size();
  }
  return &mine->coded[k];
}

Coded LoopCompression::plan(const Response& r, const http::HeaderCheck& check, http::Coding accepted,
                            bool head_only) {
  Coded out{http::Coding::Identity, false, r.body, r.body_is_static};
  if (r.body.size() < shared_->min_size || !eligible(r, check)) return out;
  out.vary = true;
  if (head_only || accepted == http::Coding::Identity) return out;
  if (r.body_is_static) {
    if (const std::string* form = static_form(r.body, accepted)) {
      if (!form->empty()) {
        out.coding = accepted;
        out.body = *form;
      }
      return out;
    }
  }
  if (r.body.size() > kMaxOnLoop) return out;
  std::unique_ptr<http::Encoder>& enc = once_[std::size_t(accepted)];
  try {
    if (!enc) enc = std::make_unique<http::Encoder>(accepted, http::Effort::Dynamic);
    scratch_.clear();
    const bool ok = enc->write(r.body, true, scratch_);
    enc->reset();
    if (!ok || scratch_.size() >= r.body.size()) return out;
  } catch (const std::bad_alloc&) {
    return out;  // uncompressed rather than not at all
  }
  out.coding = accepted;
  out.body = {scratch_.data(), scratch_.size()};
  out.body_static = false;
  return out;
}

StreamEncoder LoopCompression::stream(const Response& head, const http::HeaderCheck& check, http::Coding accepted,
                                      bool head_only, bool& vary) {
  vary = eligible(head, check);
  if (!vary || head_only || accepted == http::Coding::Identity || streams_ >= kMaxStreams) return {};
  std::vector<std::unique_ptr<http::Encoder>>& spare = spare_[std::size_t(accepted)];
  std::unique_ptr<http::Encoder> e;
  try {
    if (!spare.empty()) {
      e = std::move(spare.back());
      spare.pop_back();
      e->reset();
    } else {
      e = std::make_unique<http::Encoder>(accepted, http::Effort::Stream);
    }
  } catch (const std::bad_alloc&) {
    return {};
  }
  ++streams_;
  return StreamEncoder(this, std::move(e));
}

// A few encoders per coding stay for the next streams; the rest go (each holds its window and tables).
void LoopCompression::give_back(std::unique_ptr<http::Encoder> e) noexcept {
  --streams_;
  std::vector<std::unique_ptr<http::Encoder>>& spare = spare_[std::size_t(e->coding())];
  if (spare.size() >= 4) return;
  try {
    spare.push_back(std::move(e));
  } catch (const std::bad_alloc&) {
  }
}

}  // namespace userd::server
