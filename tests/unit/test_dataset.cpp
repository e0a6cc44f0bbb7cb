// tests/unit/test_dataset.cpp: the embedded dataset and --data validation messages.
#include <doctest/doctest.h>
#include <simdjson.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "userd/dataset.hpp"

using namespace userd::app;

TEST_CASE("the embedded dataset is the seed's 20 users") {
  std::string_view d = embedded_dataset();
  CHECK(d.size() == 3696);
  CHECK(validate_dataset(d).empty());
  simdjson::dom::parser p;
  simdjson::dom::array users = p.parse(d.data(), d.size()).get_array();
  CHECK(users.size() == 20);
  for (auto u : users) CHECK(u["name"].is_string());
}

TEST_CASE("invalid JSON is reported with simdjson's error and the byte offset") {
  std::string why = validate_dataset(R"([{"a":1},{"b":tru}])");
  CHECK(why.find("invalid JSON") == 0);
  CHECK(why.find("letter 't' at byte 14") != std::string::npos);
  why = validate_dataset("[{\"a\":\"\xff\"}]");
  CHECK(why.find("UTF-8") != std::string::npos);
  CHECK(why.find("at byte 7") != std::string::npos);
  why = validate_dataset(R"([{"a":1})");
  CHECK(why.find("invalid JSON") == 0);
  CHECK(validate_dataset("").find("invalid JSON") == 0);
}

TEST_CASE("a dataset must be an array of objects") {
  CHECK(validate_dataset("  {\"a\":1}").find("expected a JSON array of objects, found another value at byte 2") == 0);
  std::string why = validate_dataset(R"([{"a":1}, 2])");
  CHECK(why.find("element 1 is not an object") != std::string::npos);
  CHECK(why.find("at byte 10") != std::string::npos);
  CHECK(validate_dataset("[]").empty());
}

TEST_CASE("load_dataset names the file in its one-line error") {
  std::string data, err;
  CHECK_FALSE(load_dataset("/nonexistent/users.json", data, err));
  CHECK(err == "/nonexistent/users.json: cannot read: No such file or directory");
  char path[] = "/tmp/userd-dataset-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << "[1]";
  CHECK_FALSE(load_dataset(path, data, err));
  CHECK(err.find(std::string(path) + ": expected a JSON array of objects") == 0);
  CHECK(err.find('\n') == std::string::npos);
  std::ofstream(path) << R"([{"id":"1"}])";
  CHECK(load_dataset(path, data, err));
  CHECK(data == R"([{"id":"1"}])");
  std::remove(path);
}
