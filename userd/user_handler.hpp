// userd/user_handler.hpp: the daemon's routes: /v1/avatar answers with the dataset; the user path answers with
// the dataset too, or, with an upstream, with what the upstream's GET returns (the seed's microservice1).
// Both carry the headers the seed's microservice1 sends (Content-Type, Engine, Location, Date, Content-Length).
// Not here: where the dataset comes from (dataset.hpp).
#pragma once

#include <string>
#include <string_view>

#include "userd/router.hpp"

namespace userd::app {

struct RouteOptions {
  std::string user_path = "/v1/user";
  bool proxy = false;                   // the user path fetches upstream 0
  std::string upstream_path = "/v1/avatar";
  bool validate = true;                 // the upstream body must be JSON
  // The proxied body: forwarded in the coding the upstream chose (the client's Accept-Encoding goes upstream
  // on the streamed path); an identity body is compressed for the client only when this is set.
  bool compress_proxied = false;
};

// The dataset must outlive the server: it is sent without being copied.
void add_user_routes(Router& router, std::string_view dataset, const RouteOptions& opts);

}  // namespace userd::app
