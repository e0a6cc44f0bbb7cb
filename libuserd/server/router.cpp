// server/router.cpp: exact-match routes. A linear scan over a handful of paths beats hashing for the route
// counts servers like this have; lengths are compared first.
#include "userd/router.hpp"

namespace userd {

Router& Router::route(std::string_view method, std::string_view path, Handler h) {
  Path* p = nullptr;
  for (Path& existing : paths_)
    if (existing.path == path) p = &existing;
  if (!p) p = &paths_.emplace_back(Path{std::string(path), {}, {}});
  bool replaced = false;
  for (Method& m : p->methods) {
    if (m.name == method) {
      m.handler = std::move(h);
      replaced = true;
    }
  }
  if (!replaced) p->methods.push_back(Method{std::string(method), std::move(h)});
  p->allow.clear();
  bool has_head = false;
  for (const Method& m : p->methods) has_head |= m.name == "HEAD";
  for (const Method& m : p->methods) {
    if (!p->allow.empty()) p->allow += ", ";
    p->allow += m.name;
    if (m.name == "GET" && !has_head) p->allow += ", HEAD";
  }
  return *this;
}

Router::Match Router::find(std::string_view method, std::string_view path) const noexcept {
  for (std::size_t i = 0; i < paths_.size(); ++i) {
    const Path& p = paths_[i];
    if (p.path.size() != path.size() || p.path != path) continue;
    const Handler* get = nullptr;
    for (const Method& m : p.methods) {
      if (m.name == method) return {&m.handler, p.allow, i};
      if (m.name == "GET") get = &m.handler;
    }
    if (method == "HEAD" && get) return {get, p.allow, i};  // the connection drops the body
    return {nullptr, p.allow, i};
  }
  return {nullptr, {}, paths_.size()};
}

}  // namespace userd
