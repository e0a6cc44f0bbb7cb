// userd/router.hpp: (method, path pattern) -> handler, and middleware run before every routed handler. Filled
// before Server::start(), then read-only and shared by every loop thread.
// Patterns: static segments, "{name}" (one non-empty segment), "{*name}" (the rest of the path, possibly empty;
// last only). A static segment beats a parameter, a parameter beats a catch-all. HEAD falls back to GET.
// Not here: calling the handler or writing 404/405 (the connection does that from find()'s answer), decoding
// parameter values (the connection does it, and answers 400 for a malformed escape).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "userd/request.hpp"
#include "userd/responder.hpp"

namespace userd {

// Runs on the loop thread that read the request; it must not block. It answers through the Responder, now or
// after other I/O on that thread completes.
using Handler = std::function<void(const Request&, Responder)>;
// Runs, in the order added, for every request routing found a handler for, before that handler. True: go on.
// False: the middleware has answered through the Responder (or will, like a handler that answers later), and
// neither later middleware nor the handler runs. Same thread rules as a handler.
// Middleware runs once the request's head has arrived, before a byte of its body is read (a body it refuses
// is never asked for: no 100 Continue, no HTTP/2 window): Request::body() is empty there.
using Middleware = std::function<bool(const Request&, Responder&)>;

// How a route takes its request's body.
struct RouteOptions {
  // False: the handler runs once the whole body is in, and reads it as Request::body(). True: it runs as soon
  // as the head (and middleware) passed, and takes the body through Request::body_reader(), chunk by chunk.
  bool stream_body = false;
  // This route's body limit (413 beyond, and on a streamed body the consumer's on_error); 0:
  // ServerConfig::max_body. A buffered body is held whole in memory, a streamed one only as the consumer holds
  // it.
  std::uint64_t max_body = 0;
};

class Router {
 public:
  Router();
  ~Router();
  Router(Router&&) noexcept;
  Router& operator=(Router&&) noexcept;

  // Throws std::invalid_argument for a malformed pattern ("{}", "{*a}" not last, a name used twice, more than
  // kMaxRouteParams parameters, not starting with '/') or one that conflicts with a route already added: the
  // same method and the same shape (parameter names aside).
  Router& route(std::string_view method, std::string_view pattern, Handler h, RouteOptions options = {});
  Router& get(std::string_view pattern, Handler h, RouteOptions o = {}) {
    return route("GET", pattern, std::move(h), o);
  }
  Router& post(std::string_view pattern, Handler h, RouteOptions o = {}) {
    return route("POST", pattern, std::move(h), o);
  }
  Router& put(std::string_view pattern, Handler h, RouteOptions o = {}) {
    return route("PUT", pattern, std::move(h), o);
  }
  Router& patch(std::string_view pattern, Handler h, RouteOptions o = {}) {
    return route("PATCH", pattern, std::move(h), o);
  }
  Router& del(std::string_view pattern, Handler h, RouteOptions o = {}) {
    return route("DELETE", pattern, std::move(h), o);
  }
  Router& use(Middleware m) {
    middleware_.push_back(std::move(m));
    return *this;
  }
  const std::vector<Middleware>& middleware() const noexcept { return middleware_; }

  struct Match {
    const Handler* handler;  // null: no route for this method
    // Empty with a null handler: no such path (404). Else the Allow value (405): every method that any route
    // matching the path serves, valid until the next find() on this thread.
    std::string_view allow;
    std::size_t route;       // index of the pattern (metrics label); route_count() when there is none
    const RouteOptions* options = nullptr;  // with a handler: its route's
  };
  // A walk down the pattern tree, one segment at a time; nothing is allocated. params gets the captures of the
  // route found (for a 405, of the route whose Allow is given).
  Match find(std::string_view method, std::string_view path, RouteParams& params) const noexcept;
  Match find(std::string_view method, std::string_view path) const noexcept;
  std::size_t route_count() const noexcept { return routes_.size(); }
  std::string_view route_path(std::size_t i) const noexcept { return routes_[i].pattern; }

 private:
  struct Method {
    std::string name;
    Handler handler;
    std::vector<std::string> params;  // names, in the order their segments appear
    RouteOptions options;
  };
  struct Route {
    std::string pattern;  // as first added: the metrics label
    std::vector<Method> methods;
    std::string allow;    // "GET, HEAD", computed when a method is added
  };
  struct Node;
  static constexpr std::size_t kMaxAllowRoutes = 32;  // routes a 405's Allow is gathered from: far past any API
  void collect(const Node& n, std::string_view path, std::size_t pos, bool more, int* out,
               std::size_t& count) const noexcept;
  std::string_view allow_for(std::string_view path) const noexcept;
  const Route* walk(const Node& n, std::string_view path, std::size_t pos, bool more, std::string_view method,
                    RouteParams& p, const Method** found) const noexcept;

  std::unique_ptr<Node> root_;
  std::vector<Route> routes_;
  std::vector<Middleware> middleware_;
};

}  // namespace userd
