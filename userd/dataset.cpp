// userd/dataset.cpp: dataset validation. The DOM parser gives the verdict (it validates everything); simdjson's
// DOM has no offsets, so on failure an On-Demand walk finds where it went wrong.
#include "userd/dataset.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

extern "C" {
extern const char userd_embedded_dataset[];
extern const unsigned long userd_embedded_dataset_size;
}

namespace userd::app {
namespace ondemand = simdjson::ondemand;

std::string_view embedded_dataset() noexcept { return {userd_embedded_dataset, userd_embedded_dataset_size}; }

namespace {

// Walks every value so that On-Demand meets the same error the DOM parser reported.
simdjson::error_code walk(ondemand::value v) noexcept {
  ondemand::json_type t;
  if (auto e = v.type().get(t)) return e;
  switch (t) {
    case ondemand::json_type::array: {
      ondemand::array a;
      if (auto e = v.get_array().get(a)) return e;
      for (auto child : a) {
        ondemand::value cv;
        if (auto e = child.get(cv)) return e;
        if (auto e = walk(cv)) return e;
      }
      return simdjson::SUCCESS;
    }
    case ondemand::json_type::object: {
      ondemand::object o;
      if (auto e = v.get_object().get(o)) return e;
      for (auto field : o) {
        ondemand::value fv;
        if (auto e = field.value().get(fv)) return e;
        if (auto e = walk(fv)) return e;
      }
      return simdjson::SUCCESS;
    }
    case ondemand::json_type::string: return v.get_string().error();
    case ondemand::json_type::number: return v.get_number().error();
    case ondemand::json_type::boolean: return v.get_bool().error();
    case ondemand::json_type::null: return v.is_null() ? simdjson::SUCCESS : simdjson::INCORRECT_TYPE;
  }
  return simdjson::SUCCESS;
}

// Where in `json` the first error is: On-Demand's position when it failed, else the first invalid UTF-8 byte
// (found by bisection), else the end of the input (an unclosed string or structure).
std::size_t locate_error(const simdjson::padded_string& json) noexcept {
  ondemand::parser parser;
  ondemand::document doc;
  if (!parser.iterate(json).get(doc)) {
    ondemand::value root;
    simdjson::error_code e = doc.get_value().get(root);
    if (!e) e = walk(root);
    const char* at = nullptr;
    if (e && !doc.current_location().get(at) && at) return std::size_t(at - json.data());
  }
  if (!simdjson::validate_utf8(json.data(), json.size())) {
    std::size_t lo = 0, hi = json.size();  // invariant: prefix lo is valid, prefix hi is not
    while (hi - lo > 1) {
      std::size_t mid = lo + (hi - lo) / 2;
      (simdjson::validate_utf8(json.data(), mid) ? lo : hi) = mid;
    }
    return lo;
  }
  return json.size();
}

std::size_t first_non_space(std::string_view s) noexcept {
  std::size_t i = s.find_first_not_of(" \t\r\n");
  return i == std::string_view::npos ? 0 : i;
}

}  // namespace

std::string validate_dataset(std::string_view bytes) {
  simdjson::padded_string json(bytes);
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto e = parser.parse(json).get(root))
    return fmt::format("invalid JSON: {} at byte {}", simdjson::error_message(e), locate_error(json));
  simdjson::dom::array users;
  if (root.get_array().get(users))
    return fmt::format("expected a JSON array of objects, found another value at byte {}", first_non_space(bytes));
  // Each element's offset comes from an On-Demand pass, which knows positions.
  ondemand::parser od;
  ondemand::document doc;
  std::size_t index = 0;
  if (od.iterate(json).get(doc)) return {};
  ondemand::array arr;
  if (doc.get_array().get(arr)) return {};
  for (auto item : arr) {
    ondemand::value v;
    ondemand::json_type t;
    if (item.get(v) || v.type().get(t)) break;
    if (t != ondemand::json_type::object) {
      const char* at = nullptr;
      std::size_t off = doc.current_location().get(at) || !at ? 0 : std::size_t(at - json.data());
      return fmt::format("expected a JSON array of objects, element {} is not an object at byte {}", index, off);
    }
    ++index;
  }
  return {};
}

bool load_dataset(const std::string& path, std::string& out, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = fmt::format("{}: cannot read: {}", path, std::strerror(errno));
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  out = std::move(ss).str();
  if (std::string why = validate_dataset(out); !why.empty()) {
    error = fmt::format("{}: {}", path, why);
    return false;
  }
  return true;
}

}  // namespace userd::app
