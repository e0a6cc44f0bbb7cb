// userd/ops_handler.hpp: the operations routes: GET /healthz ({"status":"ok"} while the loops run) and
// GET /metrics (Prometheus text exposition, format 0.0.4).
// Not here: what the metrics count (libuserd/metrics), how they are summed (Server::metrics_text).
#pragma once

#include <functional>
#include <string>

#include "userd/router.hpp"

namespace userd::app {

// metrics_text is called on the loop thread that serves the scrape.
void add_ops_routes(Router& router, std::function<std::string()> metrics_text);

}  // namespace userd::app
