// http/compress.cpp: Accept-Encoding by one pass over its elements; encoders over zlib, zstd and brotli.
// Brotli has no reset: its state is made again for every body, from an arena that keeps its blocks, so that
// too allocates nothing once warm.
#include "libuserd/http/compress.hpp"

#include <brotli/encode.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <new>
#include <vector>

#include "libuserd/http/parser.hpp"

namespace userd::http {
namespace {

// RFC 9110 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in thousandths.
std::optional<int> parse_q(std::string_view v) noexcept {
  if (v.empty() || v.size() > 5 || (v[0] != '0' && v[0] != '1')) return std::nullopt;
  int q = (v[0] - '0') * 1000;
  if (v.size() == 1) return q;
  if (v[1] != '.') return std::nullopt;
  int scale = 100;
  for (std::size_t i = 2; i < v.size(); ++i, scale /= 10) {
    if (v[i] < '0' || v[i] > '9') return std::nullopt;
    q += (v[i] - '0') * scale;
  }
  return q > 1000 ? std::nullopt : std::optional<int>(q);
}

// Brotli's memory: blocks in power-of-two classes, each kept on its class's free list when brotli frees it and
// handed out again, so an encoder made again for every body (brotli has no reset), or one that frees and
// allocates at every flush of a stream, stops calling malloc once warm. Blocks go back to the heap with the
// encoder.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() {
    for (Free* f : free_)
      while (f) {
        Free* next = f->next;
        std::free(reinterpret_cast<char*>(f) - kHeader);
        f = next;
      }
  }
  void* alloc(std::size_t n) noexcept {
    std::size_t k = kMinClass;
    while ((std::size_t(1) << k) < n + kHeader) ++k;
    if (k >= free_.size()) return nullptr;
    if (Free* f = free_[k]) {
      free_[k] = f->next;
      return f;
    }
    if (bytes_ + (std::size_t(1) << k) > kMax) return nullptr;  // brotli reports it; the body goes out as it is
    char* p = static_cast<char*>(std::malloc(std::size_t(1) << k));
    if (!p) return nullptr;
    bytes_ += std::size_t(1) << k;
    *reinterpret_cast<std::size_t*>(p) = k;
    return p + kHeader;
  }
  void free(void* p) noexcept {
    if (!p) return;
    const std::size_t k = *reinterpret_cast<std::size_t*>(static_cast<char*>(p) - kHeader);
    Free* f = static_cast<Free*>(p);
    f->next = free_[k];
    free_[k] = f;
  }
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  static constexpr std::size_t kHeader = 16, kMinClass = 6, kMax = 64u << 20;
  struct Free {
    Free* next;
  };
  std::array<Free*, 40> free_{};
  std::size_t bytes_ = 0;  // taken from the heap, free or not
};

void* arena_alloc(void* opaque, std::size_t n) { return static_cast<Arena*>(opaque)->alloc(n); }
void arena_free(void* opaque, void* p) { static_cast<Arena*>(opaque)->free(p); }

constexpr std::size_t kOutStep = 16 * 1024;

}  // namespace

std::string_view coding_name(Coding c) noexcept {
  switch (c) {
    case Coding::Br: return "br";
    case Coding::Zstd: return "zstd";
    case Coding::Gzip: return "gzip";
    case Coding::Identity: break;
  }
  return "identity";
}

std::optional<Coding> parse_coding(std::string_view name) noexcept {
  if (iequals(name, "br")) return Coding::Br;
  if (iequals(name, "zstd")) return Coding::Zstd;
  if (iequals(name, "gzip")) return Coding::Gzip;
  return std::nullopt;
}

Coding negotiate(std::span<const Header> headers, std::span<const Coding> offered) noexcept {
  int q[kCodings] = {-1, -1, -1, -1};  // -1: not listed
  int star = -1;
  bool asked = false;
  for (const Header& h : headers) {
    if (!iequals(h.name, "accept-encoding")) continue;
    asked = true;
    for_each_token(h.value, [&](std::string_view element) {
      const std::size_t semi = element.find(';');
      const std::string_view name = trim_ows(element.substr(0, semi));
      int weight = 1000;
      for (std::string_view params = semi == std::string_view::npos ? std::string_view() : element.substr(semi + 1);
           !params.empty();) {  // only q is defined; any other parameter is skipped
        const std::size_t next = params.find(';');
        const std::string_view p = trim_ows(params.substr(0, next));
        params = next == std::string_view::npos ? std::string_view() : params.substr(next + 1);
        const std::size_t eq = p.find('=');
        if (eq == std::string_view::npos || !iequals(trim_ows(p.substr(0, eq)), "q")) continue;
        const std::optional<int> parsed = parse_q(trim_ows(p.substr(eq + 1)));
        if (!parsed) return;  // the element is ignored
        weight = *parsed;
      }
      int* slot = nullptr;
      if (name == "*") slot = &star;
      else if (iequals(name, "identity")) slot = &q[0];
      else if (iequals(name, "x-gzip")) slot = &q[std::size_t(Coding::Gzip)];
      else if (const std::optional<Coding> c = parse_coding(name)) slot = &q[std::size_t(*c)];
      if (slot) *slot = std::max(*slot, weight);
    });
  }
  if (!asked) return Coding::Identity;
  auto weight = [&](Coding c) { return q[std::size_t(c)] >= 0 ? q[std::size_t(c)] : star; };
  Coding best = Coding::Identity;
  int best_q = 0;
  for (Coding c : offered) {
    if (c == Coding::Identity) continue;
    if (weight(c) > best_q) {
      best = c;
      best_q = weight(c);
    }
  }
  if (best != Coding::Identity && weight(Coding::Identity) > best_q) return Coding::Identity;
  return best;
}

struct Encoder::Impl {
  z_stream z{};
  bool z_ready = false;
  ZSTD_CCtx* zstd = nullptr;
  BrotliEncoderState* br = nullptr;
  Arena arena;
  bool failed = false;

  ~Impl() {
    if (z_ready) deflateEnd(&z);
    if (zstd) ZSTD_freeCCtx(zstd);
    if (br) BrotliEncoderDestroyInstance(br);
  }
};

Encoder::Encoder(Coding c, Effort e) : coding_(c), effort_(e), impl_(std::make_unique<Impl>()) { reset(); }
Encoder::~Encoder() = default;

void Encoder::reset() {
  Impl& m = *impl_;
  m.failed = false;
  const bool best = effort_ == Effort::Best;
  switch (coding_) {
    case Coding::Gzip:
      if (m.z_ready) {
        if (deflateReset(&m.z) != Z_OK) m.failed = true;
        break;
      }
      // windowBits + 16: a gzip wrapper.
      if (deflateInit2(&m.z, best ? 9 : 6, Z_DEFLATED, 16 + window_bits(), mem_level(), Z_DEFAULT_STRATEGY) != Z_OK)
        throw std::bad_alloc();
      m.z_ready = true;
      break;
    case Coding::Zstd:
      if (!m.zstd) {
        m.zstd = ZSTD_createCCtx();
        if (!m.zstd) throw std::bad_alloc();
        ZSTD_CCtx_setParameter(m.zstd, ZSTD_c_compressionLevel, best ? 19 : 3);
        if (effort_ == Effort::Dynamic) ZSTD_CCtx_setParameter(m.zstd, ZSTD_c_windowLog, 18);
        if (effort_ == Effort::Stream) {
          ZSTD_CCtx_setParameter(m.zstd, ZSTD_c_windowLog, 16);
          ZSTD_CCtx_setParameter(m.zstd, ZSTD_c_hashLog, 15);
          ZSTD_CCtx_setParameter(m.zstd, ZSTD_c_chainLog, 15);
        }
      } else {
        ZSTD_CCtx_reset(m.zstd, ZSTD_reset_session_only);
      }
      break;
    case Coding::Br:
      if (m.br) BrotliEncoderDestroyInstance(m.br);
      m.br = nullptr;
      m.br = BrotliEncoderCreateInstance(arena_alloc, arena_free, &m.arena);
      if (!m.br) throw std::bad_alloc();
      BrotliEncoderSetParameter(m.br, BROTLI_PARAM_QUALITY, best ? 11 : effort_ == Effort::Dynamic ? 5 : 3);
      BrotliEncoderSetParameter(m.br, BROTLI_PARAM_LGWIN, best ? 22 : effort_ == Effort::Dynamic ? 18 : 16);
      break;
    case Coding::Identity: break;
  }
}

bool Encoder::write(std::string_view in, bool finish, core::ByteBuffer& out) {
  Impl& m = *impl_;
  if (m.failed) return false;
  bool ok = true;
  switch (coding_) {
    case Coding::Gzip: {
      // zlib counts in uInt: a body over 4 GiB goes in slices, the last one flushed or finished.
      constexpr std::size_t kSlice = std::size_t(1) << 30;
      do {
        const std::size_t n = std::min(in.size(), kSlice);
        const bool last = n == in.size();
        m.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        m.z.avail_in = uInt(n);
        in.remove_prefix(n);
        const int flush = !last ? Z_NO_FLUSH : finish ? Z_FINISH : Z_SYNC_FLUSH;
        for (;;) {
          char* p = out.prepare(kOutStep);
          m.z.next_out = reinterpret_cast<Bytef*>(p);
          m.z.avail_out = uInt(kOutStep);
          const int rc = deflate(&m.z, flush);
          out.commit(kOutStep - m.z.avail_out);
          if (rc == Z_STREAM_END) break;
          if (rc != Z_OK && rc != Z_BUF_ERROR) {
            ok = false;
            break;
          }
          if (flush != Z_FINISH && m.z.avail_out != 0) break;  // all in, flushed as asked: deflate had room left
        }
      } while (ok && !in.empty());
      break;
    }
    case Coding::Zstd: {
      ZSTD_inBuffer ib{in.data(), in.size(), 0};
      for (;;) {
        char* p = out.prepare(kOutStep);
        ZSTD_outBuffer ob{p, kOutStep, 0};
        const std::size_t left = ZSTD_compressStream2(m.zstd, &ob, &ib, finish ? ZSTD_e_end : ZSTD_e_flush);
        out.commit(ob.pos);
        if (ZSTD_isError(left)) {
          ok = false;
          break;
        }
        if (left == 0 && ib.pos == ib.size) break;
      }
      break;
    }
    case Coding::Br: {
      std::size_t avail_in = in.size();
      const auto* next_in = reinterpret_cast<const std::uint8_t*>(in.data());
      for (;;) {
        std::size_t avail_out = kOutStep;
        auto* next_out = reinterpret_cast<std::uint8_t*>(out.prepare(kOutStep));
        if (!BrotliEncoderCompressStream(m.br, finish ? BROTLI_OPERATION_FINISH : BROTLI_OPERATION_FLUSH,
                                         &avail_in, &next_in, &avail_out, &next_out, nullptr)) {
          ok = false;
          break;
        }
        out.commit(kOutStep - avail_out);
        if (avail_in == 0 && !BrotliEncoderHasMoreOutput(m.br) && (!finish || BrotliEncoderIsFinished(m.br))) break;
      }
      break;
    }
    case Coding::Identity: out.append(in); break;
  }
  if (!ok) m.failed = true;
  return ok;
}

std::size_t Encoder::state_bytes() const noexcept {
  switch (coding_) {
    case Coding::Gzip: return (std::size_t(1) << (window_bits() + 2)) + (std::size_t(1) << (mem_level() + 9));  // zlib.h
    case Coding::Zstd: return impl_->zstd ? ZSTD_sizeof_CCtx(impl_->zstd) : 0;
    case Coding::Br: return impl_->arena.bytes();
    case Coding::Identity: break;
  }
  return 0;
}

bool compress_whole(Coding c, Effort e, std::string_view in, core::ByteBuffer& out) {
  out.clear();
  if (c == Coding::Br) {  // one-shot brotli sizes its window to the input
    std::size_t n = BrotliEncoderMaxCompressedSize(in.size());
    if (n == 0) return false;
    const int quality = e == Effort::Best ? 11 : 5;
    if (!BrotliEncoderCompress(quality, e == Effort::Best ? 22 : 18, BROTLI_MODE_GENERIC, in.size(),
                               reinterpret_cast<const std::uint8_t*>(in.data()), &n,
                               reinterpret_cast<std::uint8_t*>(out.prepare(n))))
      return false;
    out.commit(n);
    return true;
  }
  Encoder enc(c, e);
  return enc.write(in, true, out);
}

bool compressible_type(std::string_view t) noexcept {
  if (t == "application/json") return true;  // most answers: no parse
  t = trim_ows(t.substr(0, t.find(';')));
  if (t.size() >= 5 && iequals(t.substr(0, 5), "text/")) return true;
  const std::size_t slash = t.find('/');
  if (slash == std::string_view::npos) return false;
  const std::string_view type = t.substr(0, slash), sub = t.substr(slash + 1);
  auto ends = [&](std::string_view suffix) {
    return sub.size() > suffix.size() && iequals(sub.substr(sub.size() - suffix.size()), suffix);
  };
  if (ends("+json") || ends("+xml")) return true;
  if (iequals(type, "application")) {
    static constexpr std::string_view kApp[] = {"json", "javascript", "xml", "x-ndjson", "ndjson", "wasm",
                                                "x-javascript", "ecmascript", "manifest+json", "graphql"};
    for (std::string_view a : kApp)
      if (iequals(sub, a)) return true;
  }
  if (iequals(type, "image")) return iequals(sub, "svg+xml") || iequals(sub, "x-icon") || iequals(sub, "bmp");
  if (iequals(type, "font")) return iequals(sub, "ttf") || iequals(sub, "otf");
  return false;
}

}  // namespace userd::http
