// userd/config.hpp: the daemon's command line and the seed's environment variables, turned into a Config.
// Flags win over the environment. Every mistake is reported as one line for stderr; main() exits 2 on it.
// Not here: loading the dataset (dataset.hpp), the server's own defaults (userd/server.hpp).
#pragma once

#include <functional>
#include <string>

#include "userd/server.hpp"

namespace userd::app {

struct Config {
  ServerConfig server;
  std::string data_file;             // empty: the embedded dataset
  std::string access_log;            // empty: off; "-": stdout
  std::string user_path = "/v1/user";
  // With an upstream, the user path proxies GET upstream_path there (the seed's microservice1).
  bool proxy = false;
  std::string upstream_path = "/v1/avatar";
  bool validate = true;  // check the upstream body is JSON before forwarding it
  bool compress = true;  // answers compressed for clients that ask (the dataset once, at start)
  bool compress_proxied = false;  // compress an upstream's identity body too (it costs CPU per request)
  bool help = false;
  bool version = false;
  unsigned extra_routes = 0;  // placeholder routes beside the real ones: to measure what routing costs
};

using Getenv = std::function<const char*(const char*)>;

// Empty on success, else the message (without the "userd: " prefix).
std::string parse_config(int argc, const char* const* argv, const Getenv& getenv, Config& out);
// Splits "HOST:PORT", ":PORT" or "[V6]:PORT". Empty on success, else the message.
std::string parse_listen(std::string_view s, std::string& host, std::uint16_t& port);
// Splits "http://HOST[:PORT][/PATH]" (port 80, path "/" by default), and with tls given "https://..." too (port
// 443; *tls says which). Empty on success, else the message.
std::string parse_url(std::string_view url, std::string& host, std::uint16_t& port, std::string& path,
                      bool* tls = nullptr);
std::string usage();

}  // namespace userd::app
