// userd/user_handler.hpp: the daemon's routes: the user path and /v1/avatar answer with the dataset and the
// headers the seed's microservice1 sends (Content-Type, Engine, Location, Date, Content-Length).
// Not here: where the dataset comes from (dataset.hpp).
#pragma once

#include <string>
#include <string_view>

#include "userd/router.hpp"

namespace userd::app {

// The dataset must outlive the server: it is sent without being copied.
void add_user_routes(Router& router, std::string_view dataset, const std::string& user_path);

}  // namespace userd::app
