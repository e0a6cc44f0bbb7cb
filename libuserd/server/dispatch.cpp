// server/dispatch.cpp: routing, decoding, the handler call and the record of its answer, for every session.
#include "libuserd/server/dispatch.hpp"

#include <cstdio>
#include <ctime>

#include "libuserd/http/percent.hpp"
#include "libuserd/server/connection.hpp"

namespace userd::server {
namespace {
std::uint64_t monotonic_us() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::uint64_t(ts.tv_sec) * 1'000'000 + std::uint64_t(ts.tv_nsec) / 1000;
}
}  // namespace

Router::Match Dispatch::route(LoopContext& ctx, Exchange& ex, const http::RequestHead& head, RouteParams& params) {
  Router::Match m = ctx.router->find(head.method, head.path, params);
  ex.route = m.route;
  ex.protocol = head.major == 2 ? 2 : head.minor == 0 ? 0 : 1;
  if (ctx.metrics || ctx.access_log) ex.started_us = monotonic_us();
  if (ctx.access_log) {
    ex.log_request.clear();
    ex.log_request.append(head.method);
    ex.log_request.append(" ", 1);
    ex.log_request.append(head.target);
  }
  return m;
}

Request Dispatch::request(const LoopContext& ctx, const http::RequestHead& head, std::string_view body) noexcept {
  return Request(head, body, ctx.backend_name, ctx.replies);
}

Responder Dispatch::responder(const LoopContext& ctx, std::uint32_t slot, std::uint16_t gen, std::uint32_t id) noexcept {
  return Responder(ctx.replies, slot, gen, id);
}

// Nothing moves while the handler holds views: each decoded value is written where its escaped form sits in a
// buffer as long as the target.
bool Dispatch::prepare(Request& request, const Connection& conn, const http::RequestHead& head, RouteParams& params,
                       core::ByteBuffer& decode) {
  request.conn_ = &conn;
  request.params_ = &params;
  const bool escaped = head.target.find_first_of("%+") != std::string_view::npos;
  if (!escaped) return true;  // nothing to decode: the views into the request are the values
  if (!http::valid_escapes(head.query)) return false;
  char* space = decode.prepare(head.path.size() + head.query.size() + 1);  // capacity is kept: no allocation
  for (std::size_t i = 0; i < params.count; ++i) {
    const std::string_view raw = params.values[i];
    if (raw.find('%') == std::string_view::npos) continue;
    char* out = space + (raw.data() - head.path.data());
    const long n = http::percent_decode(raw, out, false);
    if (n < 0) return false;
    params.values[i] = {out, std::size_t(n)};
  }
  request.query_space_ = space + head.path.size();
  return true;
}

bool Dispatch::run(const LoopContext& ctx, const Handler& handler, const Request& request, Responder res) noexcept {
  try {
    bool go_on = true;
    for (const Middleware& mw : ctx.router->middleware())
      if (!(go_on = mw(request, res))) break;
    if (go_on) handler(request, res);
    return true;
  } catch (...) {
    return false;
  }
}

bool Dispatch::admit(const LoopContext& ctx, const Request& request, Responder& res, bool& go_on) noexcept {
  go_on = true;
  try {
    for (const Middleware& mw : ctx.router->middleware())
      if (!(go_on = mw(request, res))) break;
    return true;
  } catch (...) {
    go_on = false;
    return false;
  }
}

bool Dispatch::handle(const Handler& handler, const Request& request, Responder res) noexcept {
  try {
    handler(request, res);
    return true;
  } catch (...) {
    return false;
  }
}

std::uint64_t Dispatch::body_limit(const LoopContext& ctx, const RouteOptions& options) noexcept {
  return options.max_body ? options.max_body : ctx.max_body;
}

void Dispatch::stream_body(Request& request, const LoopContext& ctx, std::uint32_t slot, std::uint16_t gen,
                           std::uint32_t id) noexcept {
  request.reader_ = BodyReader(ctx.replies, slot, gen, id);
}

void Dispatch::record(LoopContext& ctx, Exchange& ex, const Connection& conn, int status, std::size_t body_bytes) {
  const std::uint64_t took = ex.started_us ? monotonic_us() - ex.started_us : 0;
  if (ctx.metrics) ctx.metrics->record(ex.route, status, took, ex.protocol);
  if (core::ByteBuffer* log = ctx.access_log) {
    char tail[80];
    const int n = std::snprintf(tail, sizeof tail, " %d %zu %.6f\n", status, body_bytes, double(took) / 1e6);
    log->append(ctx.log_time);
    log->append(" ", 1);
    log->append(conn.peer());
    log->append(" ", 1);
    if (ex.log_request.empty()) log->append("- -");  // refused before it was a request (400, 408, 431...)
    else log->append(ex.log_request.data(), ex.log_request.size());
    log->append(" ", 1);
    log->append(metrics::kProtocols[ex.protocol]);
    log->append(tail, std::size_t(n));
    ex.log_request.clear();
  }
  ex.started_us = 0;
}

void Dispatch::refused(LoopContext& ctx, std::string_view why) noexcept {
  if (ctx.metrics) ctx.metrics->bad_responses.add();
  const std::uint64_t second = ctx.now_ms / 1000;
  if (second == ctx.last_bad_response_log_s) return;
  ctx.last_bad_response_log_s = second;
  char line[160];
  std::snprintf(line, sizeof line, "handler response refused with 500: %.*s", int(why.size()), why.data());
  try {
    if (ctx.log) (*ctx.log)(line);
    else std::fprintf(stderr, "userd: %s\n", line);
  } catch (...) {  // an embedder's log that throws loses the line, not the connection
  }
}

}  // namespace userd::server
