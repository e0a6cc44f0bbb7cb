// userd/dataset.hpp: the JSON served at /v1/user and /v1/avatar: the copy embedded at build time, or a file
// given with --data. Either is validated with simdjson before the server starts: a JSON array of objects.
// Not here: serving it (user_handler.hpp).
#pragma once

#include <string>
#include <string_view>

namespace userd::app {

std::string_view embedded_dataset() noexcept;

// Empty when the bytes are a JSON array of objects; else one line: the simdjson error and the byte offset.
std::string validate_dataset(std::string_view json);

// Reads and validates a file. On failure returns false and sets error to one line naming the file.
bool load_dataset(const std::string& path, std::string& out, std::string& error);

}  // namespace userd::app
