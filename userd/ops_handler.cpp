// userd/ops_handler.cpp: /healthz and /metrics. A scrape formats a few KiB; it is not the request path.
#include "userd/ops_handler.hpp"

namespace userd::app {

void add_ops_routes(Router& router, std::function<std::string()> metrics_text) {
  router.get("/healthz", [](const Request&, Responder res) {
    Response r;
    r.body = R"({"status":"ok"})";
    r.body_is_static = true;
    res.send(r);
  });
  router.get("/metrics", [metrics_text = std::move(metrics_text)](const Request&, Responder res) {
    const std::string text = metrics_text();
    Response r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = text;  // copied into the connection's output
    res.send(r);
  });
}

}  // namespace userd::app
