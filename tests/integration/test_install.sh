#!/usr/bin/env bash
# tests/integration/test_install.sh SRC: libuserd as users get it.
# 1. `meson install` into a scratch prefix, then build examples/hello.cpp out of tree with nothing but
#    `pkg-config --cflags --libs libuserd`, run it and ask it over HTTP.
# 2. A scratch project with this tree as a meson subproject, `dependency('libuserd', fallback : ...)`.
set -euo pipefail
src=$(realpath "$1")
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
passed=0

start_example() {  # $1: program, run on an ephemeral port (further arguments follow); sets example_pid, example_port
  "$1" 127.0.0.1:0 "${@:2}" 2>"$work/err-example" &  # no LD_LIBRARY_PATH: the rpath from pkg-config finds it
  example_pid=$! example_port=""
  for _ in $(seq 100); do
    example_port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$work/err-example" | grep -o '[0-9]*$' || true)
    [ -n "$example_port" ] && break
    sleep 0.05
  done
  [ -n "$example_port" ] || { echo "$1: no listening line: $(cat "$work/err-example")"; exit 1; }
}
stop_example() {
  kill -TERM "$example_pid"
  wait "$example_pid"
}

serve_and_ask() {  # $1: program; asks /hello?name=embedder
  start_example "$1"
  local got
  got=$(curl -fsS "http://127.0.0.1:$example_port/hello?name=embedder")
  stop_example
  [ "$got" = "hello, embedder" ] || { echo "unexpected answer: $got"; return 1; }
}

# The default libdir, as a user gets it: multiarch on Debian (lib/x86_64-linux-gnu), outside the loader's path.
meson setup "$work/build" "$src" --prefix "$work/prefix" --buildtype=release -Dtests=false >/dev/null
meson install -C "$work/build" >/dev/null
libdir=$(dirname "$(find "$work/prefix" -name libuserd.a)")
test -f "$work/prefix/include/userd/server.hpp"
test -f "$libdir/libuserd.so"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror "$src/examples/hello.cpp" -o "$work/hello" $(pkg-config --cflags --libs libuserd)
serve_and_ask "$work/hello"
# Statically, as the docs say: libuserd-static.pc names the archive, so the .so beside it is not picked.
# shellcheck disable=SC2046
g++ -std=c++20 "$src/examples/hello.cpp" -o "$work/hello-static" $(pkg-config --cflags --libs libuserd-static)
if ldd "$work/hello-static" | grep -q libuserd; then echo "hello-static links libuserd.so"; exit 1; fi
serve_and_ask "$work/hello-static"
# Route parameters, a query value, the peer, and answers from a thread pool, through the installed headers only.
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror "$src/examples/offload.cpp" -o "$work/offload" $(pkg-config --cflags --libs libuserd)
start_example "$work/offload"
got=$(curl -fsS "http://127.0.0.1:$example_port/fib/10")
stop_example
[ "$got" = '{"n":10,"fib":55}' ] || { echo "offload: unexpected answer: $got"; exit 1; }
test -f "$work/prefix/include/userd/version.hpp"
# Middleware, parameters, query values and a JSON body (rest); a stream with backpressure and one written from
# another thread (stream); an upstream fetch (gateway, compiled): the rest of the API, installed.
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror "$src/examples/rest.cpp" -o "$work/rest" \
  $(pkg-config --cflags --libs libuserd simdjson fmt)
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror "$src/examples/stream.cpp" -o "$work/stream" $(pkg-config --cflags --libs libuserd)
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror "$src/examples/gateway.cpp" -o "$work/gateway" $(pkg-config --cflags --libs libuserd)
start_example "$work/rest"
got=$(curl -fsS -H 'X-Api-Key: secret' -d '{"name":"Ada","email":"a@b"}' "http://127.0.0.1:$example_port/v1/users")
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$example_port/v1/users/1")
stop_example
[ "$got" = '{"id":1,"name":"Ada","email":"a@b"}' ] && [ "$code" = 401 ] || { echo "rest: $got $code"; exit 1; }
start_example "$work/stream"
got=$(curl -fsS "http://127.0.0.1:$example_port/numbers?count=3")
ticks=$(curl -fsS "http://127.0.0.1:$example_port/ticks?count=3")
stop_example
[ "$got" = $'{"n":0}\n{"n":1}\n{"n":2}' ] && [ "$ticks" = $'{"tick":0}\n{"tick":1}\n{"tick":2}' ] \
  || { echo "stream: $got / $ticks"; exit 1; }
# HTTPS through ServerConfig::tls, with a certificate made here.
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Werror "$src/examples/tls.cpp" -o "$work/tls" $(pkg-config --cflags --libs libuserd) -pthread
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/key.pem" \
  -out "$work/cert.pem" -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
start_example "$work/tls" epoll "$work/cert.pem" "$work/key.pem"
got=$(curl -fsS --cacert "$work/cert.pem" "https://localhost:$example_port/whoami")
stop_example
[ "$got" = "TLSv1.3 anonymous" ] || { echo "tls: $got"; exit 1; }
passed=$((passed + 1))
echo "install: out-of-tree build with pkg-config answers"

# CMake, as most embedders build: find_package(userd) from the same prefix, shared and then static (./dev installs cmake).
test -f "$libdir/cmake/userd/userdConfig.cmake"
test -f "$libdir/cmake/userd/userdConfigVersion.cmake"
mkdir -p "$work/cmake-app"
version=$(grep -m1 -o "version : '[0-9.]*'" "$src/meson.build" | grep -o '[0-9][0-9.]*')
IFS=. read -r major minor _ <<<"$version"
cp "$src/examples/hello.cpp" "$work/cmake-app/app.cpp"
# The README's own snippet, after the two lines every CMakeLists.txt starts with.
printf 'cmake_minimum_required(VERSION 3.16)\nproject(app CXX)\n' > "$work/cmake-app/CMakeLists.txt"
awk '/^```cmake$/ { on = 1; next } /^```$/ { on = 0 } on' "$src/README.md" >> "$work/cmake-app/CMakeLists.txt"
grep -q "find_package(userd $major.$minor REQUIRED)" "$work/cmake-app/CMakeLists.txt" \
  || { echo "README's CMake snippet does not ask for userd $major.$minor: $(cat "$work/cmake-app/CMakeLists.txt")"; exit 1; }
for kind in shared static; do
  flag=OFF
  [ "$kind" = static ] && flag=ON
  cmake -S "$work/cmake-app" -B "$work/cmake-$kind" -DCMAKE_PREFIX_PATH="$work/prefix" \
    -Duserd_USE_STATIC_LIBS=$flag -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$work/cmake-$kind" >/dev/null
  if [ "$kind" = static ] && ldd "$work/cmake-$kind/app" | grep -q libuserd; then
    echo "cmake static app links libuserd.so"; exit 1
  fi
  if [ "$kind" = shared ] && ! ldd "$work/cmake-$kind/app" | grep -q "libuserd.so.0 => $libdir"; then
    echo "cmake shared app does not find libuserd.so.0 in $libdir: $(ldd "$work/cmake-$kind/app")"; exit 1
  fi
  serve_and_ask "$work/cmake-$kind/app"
done
# A version this one does not promise to be compatible with is refused, not silently taken.
sed -i "s/$major.$minor REQUIRED/$major.$((minor + 1)) REQUIRED/" "$work/cmake-app/CMakeLists.txt"
if cmake -S "$work/cmake-app" -B "$work/cmake-v2" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null 2>&1; then
  echo "find_package(userd $major.$((minor + 1))) accepted $version"; exit 1
fi
passed=$((passed + 1))
echo "install: CMake find_package builds and runs, shared and static"

mkdir -p "$work/app/subprojects"
ln -s "$src" "$work/app/subprojects/userd"
cp "$src/examples/hello.cpp" "$work/app/app.cpp"
cat > "$work/app/meson.build" <<'MESON'
project('app', 'cpp', default_options : ['cpp_std=c++20'])
userd = dependency('libuserd', fallback : ['userd', 'libuserd_dep'], default_options : ['tests=false'])
executable('app', 'app.cpp', dependencies : userd)
MESON
meson setup "$work/app/build" "$work/app" --buildtype=release >/dev/null
meson compile -C "$work/app/build" app >/dev/null
serve_and_ask "$work/app/build/app"
passed=$((passed + 1))
echo "install: meson subproject answers"
# The systemd units parse and name no unknown setting (where systemd-analyze exists).
if command -v systemd-analyze >/dev/null; then
  sed "s|ExecStart=/usr/local/bin/userd|ExecStart=$work/build/userd/userd|" "$src/packaging/userd.service" > "$work/userd.service"
  cp "$src/packaging/userd.socket" "$work/userd.socket"
  out=$(systemd-analyze verify "$work/userd.service" "$work/userd.socket" 2>&1)
  [ -z "$out" ] || { echo "systemd-analyze: $out"; exit 1; }
  passed=$((passed + 1))
  echo "install: systemd units verify"
fi
echo "install: $passed passed, 0 failed"
