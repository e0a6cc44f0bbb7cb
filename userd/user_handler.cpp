// userd/user_handler.cpp: the dataset routes. Headers are built once; a request only picks the set for the
// backend that served it.
#include "userd/user_handler.hpp"

#include <array>
#include <memory>

namespace userd::app {
namespace {
struct UserReply {
  std::string location;
  std::array<Header, 2> uring;
  std::array<Header, 2> epoll;
  std::string_view body;
};
}  // namespace

void add_user_routes(Router& router, std::string_view dataset, const std::string& user_path) {
  auto reply = std::make_shared<UserReply>();
  reply->location = user_path;
  reply->uring = {Header{"Engine", "userd/io_uring"}, Header{"Location", reply->location}};
  reply->epoll = {Header{"Engine", "userd/epoll"}, Header{"Location", reply->location}};
  reply->body = dataset;
  Handler h = [reply](const Request& req, Responder res) {
    Response r;
    r.body = reply->body;
    r.body_is_static = true;
    r.headers = req.backend() == "epoll" ? reply->epoll : reply->uring;
    res.send(r);
  };
  router.get(user_path, h);
  router.get("/v1/avatar", h);
}

}  // namespace userd::app
