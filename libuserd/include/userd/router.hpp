// userd/router.hpp: (method, path) -> handler, and middleware run before every routed handler. Filled before
// Server::start(), then read-only and shared by every loop thread. Paths match exactly; HEAD falls back to GET
// and sends no body.
// Not here: calling the handler or writing 404/405 (the connection does that from find()'s answer).
#pragma once

#include <functional>
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
using Middleware = std::function<bool(const Request&, Responder&)>;

class Router {
 public:
  Router& route(std::string_view method, std::string_view path, Handler h);
  Router& get(std::string_view path, Handler h) { return route("GET", path, std::move(h)); }
  Router& use(Middleware m) {
    middleware_.push_back(std::move(m));
    return *this;
  }
  const std::vector<Middleware>& middleware() const noexcept { return middleware_; }

  struct Match {
    const Handler* handler;  // null: no route for this method
    std::string_view allow;  // empty with a null handler: no such path (404); else the Allow value (405)
    std::size_t route;       // index of the path (metrics label); route_count() when there is none
  };
  Match find(std::string_view method, std::string_view path) const noexcept;
  std::size_t route_count() const noexcept { return paths_.size(); }
  std::string_view route_path(std::size_t i) const noexcept { return paths_[i].path; }

 private:
  struct Method {
    std::string name;
    Handler handler;
  };
  struct Path {
    std::string path;
    std::vector<Method> methods;
    std::string allow;  // "GET, HEAD", computed when a route is added
  };
  std::vector<Path> paths_;
  std::vector<Middleware> middleware_;
};

}  // namespace userd
