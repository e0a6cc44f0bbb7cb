// userd/user_handler.cpp: the dataset and proxy routes. Headers are built once per backend; a request only
// picks the set for the backend that served it. Upstream failures become 502/504 with a JSON body, are counted
// per thread, and logged at most once a second per cause. A body that is validated (simdjson needs all of it)
// is buffered; one that is not streams from the upstream to the client as it arrives.
#include "userd/user_handler.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <array>
#include <ctime>
#include <memory>

#include "userd/upstream.hpp"

namespace userd::app {
namespace {

struct RouteHeaders {
  std::string location;
  std::array<Header, 2> uring;
  std::array<Header, 2> epoll;
  const std::array<Header, 2>& for_backend(std::string_view b) const { return b == "epoll" ? epoll : uring; }
};

// What a proxied request needs when its upstream answer arrives: one per backend, so the callback knows the
// Engine header without another lookup.
struct ProxyRoute {
  const std::array<Header, 2>* headers;
  bool validate;
  bool compress;  // an identity body from the upstream may be compressed for the client
};

enum class Cause : std::uint8_t { Unreachable, Timeout, Closed, BadResponse, TooLarge, Overloaded, Status, InvalidJson, kCount };

// Per thread: failures since the last log line of that cause, and when that line was written.
struct FailureLog {
  std::array<std::uint64_t, std::size_t(Cause::kCount)> count{};
  std::array<std::uint64_t, std::size_t(Cause::kCount)> unlogged{};
  std::array<std::time_t, std::size_t(Cause::kCount)> last{};
};
thread_local FailureLog failures;

std::string_view cause_text(Cause c) {
  switch (c) {
    case Cause::Unreachable: return "upstream unreachable";
    case Cause::Timeout: return "upstream timed out";
    case Cause::Closed: return "upstream closed the connection early";
    case Cause::BadResponse: return "malformed upstream response";
    case Cause::TooLarge: return "upstream response too large";
    case Cause::Overloaded: return "too many upstream requests queued";
    case Cause::Status: return "upstream answered with an error status";
    case Cause::InvalidJson: return "upstream sent invalid JSON";
    case Cause::kCount: break;
  }
  return "upstream error";
}

void note_failure(Cause c, int detail) {
  const std::size_t k = std::size_t(c);
  ++failures.count[k];
  ++failures.unlogged[k];
  const std::time_t now = std::time(nullptr);
  if (now == failures.last[k]) return;
  failures.last[k] = now;
  if (detail) fmt::print(stderr, "userd: {} ({}; {} since the last report)\n", cause_text(c), detail, failures.unlogged[k]);
  else fmt::print(stderr, "userd: {} ({} since the last report)\n", cause_text(c), failures.unlogged[k]);
  failures.unlogged[k] = 0;
}

void answer_error(Responder res, const ProxyRoute& route, int status, Cause cause, int detail = 0) {
  note_failure(cause, detail);
  // Bodies are built once per cause: nothing to format per request.
  static const auto bodies = [] {
    std::array<std::string, std::size_t(Cause::kCount)> b;
    for (std::size_t k = 0; k < b.size(); ++k) b[k] = fmt::format(R"({{"error":"{}"}})", cause_text(Cause(k)));
    return b;
  }();
  Response r;
  r.status = status;
  r.body = bodies[std::size_t(cause)];
  r.body_is_static = true;
  r.headers = *route.headers;
  res.send(r);
}

bool is_json(std::string_view body) {
  thread_local simdjson::dom::parser parser;  // keeps its buffers: no allocation once warm
  simdjson::dom::element doc;
  // The pool guarantees kUpstreamBodyPadding readable bytes after the body, simdjson's SIMDJSON_PADDING.
  static_assert(kUpstreamBodyPadding >= simdjson::SIMDJSON_PADDING);
  return !parser.parse(body.data(), body.size(), false).get(doc);
}

// An upstream failure before anything was sent: true when it answered the client.
bool answered_error(Responder res, const ProxyRoute& route, const UpstreamReply& u) {
  switch (u.error) {
    case UpstreamError::None: break;
    case UpstreamError::Timeout: return answer_error(res, route, 504, Cause::Timeout), true;
    case UpstreamError::Unreachable: return answer_error(res, route, 502, Cause::Unreachable), true;
    case UpstreamError::Closed: return answer_error(res, route, 502, Cause::Closed), true;
    case UpstreamError::BadResponse: return answer_error(res, route, 502, Cause::BadResponse), true;
    case UpstreamError::TooLarge: return answer_error(res, route, 502, Cause::TooLarge), true;
    case UpstreamError::Overloaded: return answer_error(res, route, 503, Cause::Overloaded), true;
    case UpstreamError::BodyFailed: return answer_error(res, route, 502, Cause::Closed), true;
  }
  if (u.status != 200) return answer_error(res, route, 502, Cause::Status, u.status), true;
  return false;
}

void on_upstream(void* user, Responder res, const UpstreamReply& u) {
  const ProxyRoute& route = *static_cast<const ProxyRoute*>(user);
  if (answered_error(res, route, u)) return;
  if (route.validate && !is_json(u.body)) return answer_error(res, route, 502, Cause::InvalidJson);
  Response r;
  r.body = u.body;  // copied: it lives only as long as this callback
  r.headers = *route.headers;
  r.compressible = route.compress;
  res.send(r);
}

// The streamed form: the head has come; its body goes to the client as it arrives (a body not taken here, for
// a client that left or asked HEAD, is abandoned when this returns).
void on_upstream_head(void* user, Responder res, const UpstreamReply& u) {
  const ProxyRoute& route = *static_cast<const ProxyRoute*>(user);
  if (answered_error(res, route, u)) return;
  // The upstream's coding goes through as it came (the client's Accept-Encoding went to it), with its Vary.
  std::array<Header, 4> headers{(*route.headers)[0], (*route.headers)[1]};
  std::size_t n = 2;
  if (const std::string_view coding = u.header("content-encoding"); !coding.empty())
    headers[n++] = {"Content-Encoding", coding};
  if (const std::string_view vary = u.header("vary"); !vary.empty()) headers[n++] = {"Vary", vary};
  Response head;
  head.headers = {headers.data(), n};
  head.compressible = route.compress;
  if (const std::string_view type = u.header("content-type"); !type.empty()) head.content_type = type;
  u.stream.pipe(res.stream(head));
}

}  // namespace

void add_user_routes(Router& router, std::string_view dataset, const RouteOptions& opts) {
  auto h = std::make_shared<RouteHeaders>();
  h->location = opts.user_path;
  h->uring = {Header{"Engine", "userd/io_uring"}, Header{"Location", h->location}};
  h->epoll = {Header{"Engine", "userd/epoll"}, Header{"Location", h->location}};

  Handler serve_dataset = [h, dataset](const Request& req, Responder res) {
    Response r;
    r.body = dataset;
    r.body_is_static = true;
    r.headers = h->for_backend(req.backend());
    res.send(r);
  };
  router.get("/v1/avatar", serve_dataset);
  if (!opts.proxy) {
    router.get(opts.user_path, serve_dataset);
    return;
  }
  struct Proxy {
    std::shared_ptr<RouteHeaders> headers;
    ProxyRoute uring, epoll;
    std::string path;
  };
  auto p = std::make_shared<Proxy>();
  p->headers = h;
  p->uring = {&h->uring, opts.validate, opts.compress_proxied};
  p->epoll = {&h->epoll, opts.validate, opts.compress_proxied};
  p->path = opts.upstream_path;
  router.get(opts.user_path, [p](const Request& req, Responder res) {
    ProxyRoute* route = req.backend() == "epoll" ? &p->epoll : &p->uring;
    UpstreamRequest up;
    up.target = p->path;  // GET, no headers of ours but the client's Accept-Encoding: the seed's microservice1
    up.stream_response = !route->validate;
    // Streamed, the body goes through untouched, so the client may as well get the upstream's compression;
    // validated, simdjson needs it plain.
    const Header accept{"Accept-Encoding", req.header("accept-encoding")};
    if (!route->validate && !accept.value.empty()) up.headers = {&accept, 1};
    if (!req.fetch(0, up, res, route->validate ? &on_upstream : &on_upstream_head, route))
      answer_error(res, *route, 503, Cause::Overloaded);
  });
}

}  // namespace userd::app
