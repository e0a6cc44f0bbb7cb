#!/usr/bin/env python3
"""Compiles every ```cpp block of the given Markdown files, so that what README and docs show an embedder is
code that builds against the public headers as they are. A block with `int main` is a whole program; any
other is the body of a function that has what the docs' fragments refer to in scope (a server, a router, a
request and its Responder, a handler h, a thread pool, a callback for fetch). Prints one line per block and
"snippets: N passed, N failed"."""
import argparse
import os
import re
import subprocess
import sys
import tempfile

FRAGMENT = """#include <signal.h>
#include <functional>
#include <string>
#include <string_view>
#include <vector>
#include "userd/server.hpp"
namespace {{
struct Pool {{ void submit(std::function<void()>) {{}} }};
struct Route {{ int n = 0; }};
[[maybe_unused]] Route routes[4];
[[maybe_unused]] std::string compute(const std::string& s) {{ return s; }}
[[maybe_unused]] void on_created(void*, userd::Responder, const userd::UpstreamReply&) {{}}
[[maybe_unused]] void fragment({params}) {{
{body}
}}
}}  // namespace
"""


def blocks(path):
    text = open(path).read()
    for m in re.finditer(r"^```cpp\n(.*?)^```", text, re.S | re.M):
        yield text.count("\n", 0, m.start()) + 1, m.group(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cxx", default="c++")
    ap.add_argument("--include", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.files:
            for line, code in blocks(path):
                # A fragment elides what is not its point ("// ..."), so what it declares may go unused there.
                quiet = []
                if "int main" in code:
                    source = code
                else:
                    quiet = ["-Wno-unused-variable", "-Wno-unused-but-set-variable", "-Wno-unused-parameter"]
                    params = ["[[maybe_unused]] Pool& pool", "[[maybe_unused]] const userd::Request& req",
                              "[[maybe_unused]] userd::Responder res", "[[maybe_unused]] userd::Handler h"]
                    if not re.search(r"userd::Router router\b", code):
                        params.insert(0, "[[maybe_unused]] userd::Router& router")
                    if not re.search(r"userd::Server server\b", code):
                        params.insert(0, "[[maybe_unused]] userd::Server& server")
                    source = FRAGMENT.format(params=", ".join(params), body=code)
                src = os.path.join(tmp, "snippet.cpp")
                with open(src, "w") as f:
                    f.write(source)
                p = subprocess.run([args.cxx, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-I", args.include,
                                    *quiet, src], capture_output=True, text=True)
                where = f"{os.path.relpath(path)}:{line}"
                if p.returncode == 0 and not p.stderr.strip():
                    passed += 1
                    print(f"ok   {where}")
                else:
                    failed += 1
                    print(f"FAIL {where}\n{p.stderr}")
    print(f"snippets: {passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
