// server/router.cpp: a tree of path segments. Each node has its static children (sorted, found by binary
// search), at most one parameter child and at most one catch-all; a lookup walks the path once, trying static,
// then parameter, then catch-all at each segment, backing up only when a branch ends without a route.
#include "userd/router.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>
#include <utility>

namespace userd {

struct Router::Node {
  std::vector<std::pair<std::string, std::unique_ptr<Node>>> statics;  // sorted by segment
  std::unique_ptr<Node> param;
  int route = -1;      // a route whose pattern ends at this node
  int catch_all = -1;  // a route whose pattern ends with {*name} below this node

  Node* static_child(std::string_view seg) const noexcept {
    auto it = std::lower_bound(statics.begin(), statics.end(), seg,
                               [](const auto& e, std::string_view s) { return std::string_view(e.first) < s; });
    return it != statics.end() && it->first == seg ? it->second.get() : nullptr;
  }
};

Router::Router() : root_(std::make_unique<Node>()) {}
Router::~Router() = default;
Router::Router(Router&&) noexcept = default;
Router& Router::operator=(Router&&) noexcept = default;

namespace {

[[noreturn]] void refuse(std::string_view why, std::string_view method, std::string_view pattern) {
  throw std::invalid_argument(std::string(why) + ": " + std::string(method) + " " + std::string(pattern));
}

}  // namespace

Router& Router::route(std::string_view method, std::string_view pattern, Handler h, RouteOptions options) {
  if (pattern.empty() || pattern.front() != '/') refuse("a route pattern starts with '/'", method, pattern);
  if (method.empty()) refuse("a route needs a method", method, pattern);
  std::vector<std::string> names;
  Node* n = root_.get();
  bool catch_all = false;
  std::string_view rest = pattern.substr(1);
  bool more = pattern.size() > 1;
  while (more) {
    const std::size_t slash = rest.find('/');
    const std::string_view seg = rest.substr(0, slash);
    more = slash != std::string_view::npos;
    rest = more ? rest.substr(slash + 1) : std::string_view();
    if (catch_all) refuse("{*name} must be the last segment", method, pattern);
    if (!seg.empty() && seg.front() == '{') {
      if (seg.size() < 3 || seg.back() != '}') refuse("a parameter is {name} or {*name}", method, pattern);
      std::string_view name = seg.substr(1, seg.size() - 2);
      catch_all = name.front() == '*';
      if (catch_all) name.remove_prefix(1);
      if (name.empty() || name.find_first_of("{}/*") != std::string_view::npos)
        refuse("a parameter needs a name", method, pattern);
      if (std::find(names.begin(), names.end(), name) != names.end()) refuse("a parameter name is used twice", method, pattern);
      if (names.size() == kMaxRouteParams) refuse("too many parameters", method, pattern);
      names.emplace_back(name);
      if (catch_all) continue;
      if (!n->param) n->param = std::make_unique<Node>();
      n = n->param.get();
      continue;
    }
    if (seg.find_first_of("{}") != std::string_view::npos) refuse("braces belong to whole segments", method, pattern);
    Node* child = n->static_child(seg);
    if (!child) {
      auto it = std::lower_bound(n->statics.begin(), n->statics.end(), seg,
                                 [](const auto& e, std::string_view s) { return std::string_view(e.first) < s; });
      child = n->statics.emplace(it, std::string(seg), std::make_unique<Node>())->second.get();
    }
    n = child;
  }
  int& slot = catch_all ? n->catch_all : n->route;
  if (slot < 0) {
    slot = int(routes_.size());
    routes_.push_back(Route{std::string(pattern), {}, {}});
  }
  Route& r = routes_[std::size_t(slot)];
  for (const Method& m : r.methods)
    if (m.name == method) refuse("a route with this method and shape exists already (" + r.pattern + ")", method, pattern);
  r.methods.push_back(Method{std::string(method), std::move(h), std::move(names), options});
  r.allow.clear();
  bool has_head = false;
  for (const Method& m : r.methods) has_head |= m.name == "HEAD";
  for (const Method& m : r.methods) {
    if (!r.allow.empty()) r.allow += ", ";
    r.allow += m.name;
    if (m.name == "GET" && !has_head) r.allow += ", HEAD";
  }
  return *this;
}

namespace {

// The route's entry for method (HEAD falls back to GET); any method when method is empty.
template <class Route, class Method>
bool accepts(const Route& r, std::string_view method, const Method** found) noexcept {
  if (method.empty()) return true;
  const Method* get = nullptr;
  for (const Method& m : r.methods) {
    if (m.name == method) {
      *found = &m;
      return true;
    }
    if (m.name == "GET") get = &m;
  }
  if (method == "HEAD" && get) {
    *found = get;
    return true;
  }
  return false;
}

}  // namespace

// pos: where the current segment starts in path; more: whether there is one (a path ending in '/' has a last,
// empty segment; "/" has none).
const Router::Route* Router::walk(const Node& n, std::string_view path, std::size_t pos, bool more,
                                  std::string_view method, RouteParams& p, const Method** found) const noexcept {
  if (!more) {
    if (n.route >= 0 && accepts(routes_[std::size_t(n.route)], method, found)) return &routes_[std::size_t(n.route)];
    if (n.catch_all >= 0 && p.count < kMaxRouteParams && accepts(routes_[std::size_t(n.catch_all)], method, found)) {
      p.values[p.count++] = path.substr(path.size());
      return &routes_[std::size_t(n.catch_all)];
    }
    return nullptr;
  }
  const std::size_t slash = path.find('/', pos);
  const std::size_t end = slash == std::string_view::npos ? path.size() : slash;
  const std::string_view seg = path.substr(pos, end - pos);
  const bool next_more = slash != std::string_view::npos;
  if (const Node* child = n.static_child(seg))
    if (const Route* r = walk(*child, path, end + 1, next_more, method, p, found)) return r;
  if (n.param && !seg.empty() && p.count < kMaxRouteParams) {
    p.values[p.count++] = seg;
    if (const Route* r = walk(*n.param, path, end + 1, next_more, method, p, found)) return r;
    --p.count;
  }
  if (n.catch_all >= 0 && p.count < kMaxRouteParams && accepts(routes_[std::size_t(n.catch_all)], method, found)) {
    p.values[p.count++] = path.substr(pos);
    return &routes_[std::size_t(n.catch_all)];
  }
  return nullptr;
}

// Every route whose pattern matches path, whatever its methods: the 405's Allow lists what all of them serve.
void Router::collect(const Node& n, std::string_view path, std::size_t pos, bool more, int* out,
                     std::size_t& count) const noexcept {
  auto add = [&](int r) {
    if (r >= 0 && count < kMaxAllowRoutes && std::find(out, out + count, r) == out + count) out[count++] = r;
  };
  add(n.catch_all);
  if (!more) {
    add(n.route);
    return;
  }
  const std::size_t slash = path.find('/', pos);
  const std::size_t end = slash == std::string_view::npos ? path.size() : slash;
  const std::string_view seg = path.substr(pos, end - pos);
  const bool next_more = slash != std::string_view::npos;
  if (const Node* child = n.static_child(seg)) collect(*child, path, end + 1, next_more, out, count);
  if (n.param && !seg.empty()) collect(*n.param, path, end + 1, next_more, out, count);
}

// The union of the methods of every route matching the path, in the order the routes were added, each once
// (HEAD after GET: HEAD falls back to GET). Written into a per-thread buffer: find() allocates nothing, and the
// caller copies the value into its answer before it routes again.
std::string_view Router::allow_for(std::string_view path) const noexcept {
  thread_local char buf[512];
  int routes[kMaxAllowRoutes];
  std::size_t count = 0;
  collect(*root_, path, 1, path.size() > 1, routes, count);
  std::sort(routes, routes + count);
  std::array<std::string_view, 32> names;
  std::size_t k = 0;
  auto add = [&](std::string_view m) {
    if (k < names.size() && std::find(names.begin(), names.begin() + k, m) == names.begin() + k) names[k++] = m;
  };
  for (std::size_t i = 0; i < count; ++i)
    for (const Method& m : routes_[std::size_t(routes[i])].methods) {
      add(m.name);
      if (m.name == "GET") add("HEAD");
    }
  std::size_t len = 0;
  for (std::size_t i = 0; i < k && len + names[i].size() + 2 <= sizeof buf; ++i) {
    if (len) {
      buf[len++] = ',';
      buf[len++] = ' ';
    }
    std::copy(names[i].begin(), names[i].end(), buf + len);
    len += names[i].size();
  }
  return {buf, len};
}

Router::Match Router::find(std::string_view method, std::string_view path, RouteParams& params) const noexcept {
  params.count = 0;
  if (path.empty() || path.front() != '/') return {nullptr, {}, routes_.size()};
  const bool more = path.size() > 1;
  const Method* m = nullptr;
  if (const Route* r = walk(*root_, path, 1, more, method, params, &m)) {
    for (std::size_t i = 0; i < params.count; ++i) params.names[i] = m->params[i];
    return {&m->handler, r->allow, std::size_t(r - routes_.data()), &m->options};
  }
  params.count = 0;
  if (const Route* r = walk(*root_, path, 1, more, {}, params, &m)) {  // the path is there, the method is not
    for (std::size_t i = 0; i < params.count; ++i) params.names[i] = r->methods.front().params[i];
    return {nullptr, allow_for(path), std::size_t(r - routes_.data())};
  }
  params.count = 0;
  return {nullptr, {}, routes_.size()};
}

Router::Match Router::find(std::string_view method, std::string_view path) const noexcept {
  RouteParams ignored;
  return find(method, path, ignored);
}

}  // namespace userd
