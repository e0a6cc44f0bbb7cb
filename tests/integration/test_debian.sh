#!/usr/bin/env bash
# tests/integration/test_debian.sh SRC: the Debian packages as an operator gets them.
# 1. dpkg-buildpackage -b -us -uc on a copy of the tree: libuserd0, libuserd-dev and userd; lintian has no error.
# 2. Unpacked into a throw-away root: userd --version runs on the packaged library, and the packaged socket unit's
#    listener hands its socket to the packaged daemon (systemd-socket-activate, as systemd would), which answers.
# 3. Installed on this machine, then purged: the system user, /etc/default/userd and the enabled units come and go.
set -euo pipefail
src=$(realpath "$1")
work=$(mktemp -d)
installed=0
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  if [ "$installed" = 1 ]; then dpkg --purge userd libuserd-dev libuserd0 >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
passed=0
for tool in dpkg-buildpackage lintian systemd-socket-activate systemd-analyze; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (./dev installs it)"; exit 1; }
done

# The tracked files only: a build tree beside them is not part of the source.
mkdir "$work/userd"
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$work/userd")
else
  (cd "$src" && tar --exclude='./build*' -cf - .) | tar -C "$work/userd" -xf -
fi
(cd "$work/userd" && dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) \
  || { tail -40 "$work/build.log"; echo "dpkg-buildpackage failed"; exit 1; }
version=$(dpkg-parsechangelog -l "$work/userd/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)
for p in libuserd0 libuserd-dev userd; do
  test -f "$work/${p}_${version}_${arch}.deb" || { echo "no ${p} package"; ls "$work"; exit 1; }
done
lintian --fail-on error --tag-display-limit 0 "$work/userd_${version}_${arch}.changes" >"$work/lintian.log" 2>&1 \
  || { cat "$work/lintian.log"; echo "lintian reports errors"; exit 1; }
# What each package holds, where Debian puts it.
for p in libuserd0 libuserd-dev userd; do dpkg -c "$work/${p}_${version}_${arch}.deb" > "$work/$p.list"; done
grep -q 'usr/lib/.*/libuserd.so.0' "$work/libuserd0.list" || { echo "libuserd0 has no .so.0"; exit 1; }
for f in usr/include/userd/server.hpp 'libuserd.a' 'pkgconfig/libuserd.pc' 'cmake/userd/userdConfig.cmake'; do
  grep -q "$f" "$work/libuserd-dev.list" || { echo "libuserd-dev has no $f"; exit 1; }
done
for f in usr/bin/userd lib/systemd/system/userd.service lib/systemd/system/userd.socket etc/default/userd; do
  grep -q "\./$f\$" "$work/userd.list" || { echo "userd has no $f"; cat "$work/userd.list"; exit 1; }
done
passed=$((passed + 1))
echo "debian: packages build, lintian clean of errors"

root="$work/root"
for p in libuserd0 libuserd-dev userd; do dpkg -x "$work/${p}_${version}_${arch}.deb" "$root"; done
libdir=$(dirname "$(find "$root" -name 'libuserd.so.0')")
out=$("$root/usr/bin/userd" --version)
echo "$out" | grep -q "^userd $version" || { echo "userd --version: $out"; exit 1; }
# The daemon carries libuserd statically; what it does link the system has (its Depends, from shlibs).
deps=$(ldd "$root/usr/bin/userd")
if grep -q 'not found' <<<"$deps"; then echo "the packaged userd misses a library: $deps"; exit 1; fi
deps=$(ldd "$libdir/libuserd.so.0")
if grep -q 'not found' <<<"$deps"; then echo "libuserd.so.0 misses a library: $deps"; exit 1; fi
# The socket unit's listener, on a free port of loopback instead of :8080, handed over as systemd would.
listen=$(sed -n 's/^ListenStream=//p' "$root/lib/systemd/system/userd.socket")
[ "$listen" = 8080 ] || { echo "userd.socket listens on '$listen'"; exit 1; }
exec_start=$(sed -n 's/^ExecStart=//p' "$root/lib/systemd/system/userd.service")
[ "$exec_start" = '/usr/bin/userd $USERD_FLAGS' ] || { echo "ExecStart=$exec_start"; exit 1; }
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
timeout 30 systemd-socket-activate -l "127.0.0.1:$port" "$root/usr/bin/userd" \
  2>"$work/activated.err" &
for _ in $(seq 100); do
  grep -q 'listening' "$work/activated.err" 2>/dev/null && break
  sleep 0.05
done
got=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/healthz") || { cat "$work/activated.err"; exit 1; }
[ "$got" = '{"status":"ok"}' ] || { echo "healthz: $got"; exit 1; }
grep -q 'inherited\|LISTEN_FDS\|socket activation' "$work/activated.err" \
  || { echo "userd did not say it took the inherited socket: $(cat "$work/activated.err")"; exit 1; }
kill %1 2>/dev/null || true
wait 2>/dev/null || true
sed "s|ExecStart=/usr/bin/userd|ExecStart=$root/usr/bin/userd|" "$root/lib/systemd/system/userd.service" > "$work/userd.service"
cp "$root/lib/systemd/system/userd.socket" "$work/userd.socket"
v=$(systemd-analyze verify "$work/userd.service" "$work/userd.socket" 2>&1 || true)
[ -z "$v" ] || { echo "systemd-analyze: $v"; exit 1; }
passed=$((passed + 1))
echo "debian: the unpacked daemon runs, socket-activated from the packaged unit"

# On this machine, then purged (skipped where userd is installed already: not ours to remove).
if dpkg -s userd >/dev/null 2>&1; then
  echo "debian: userd is installed here already: the install and purge check is skipped"
else
  installed=1
  dpkg -i "$work/libuserd0_${version}_${arch}.deb" "$work/libuserd-dev_${version}_${arch}.deb" \
    "$work/userd_${version}_${arch}.deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; exit 1; }
  getent passwd userd >/dev/null || { echo "no userd system user"; exit 1; }
  test -f /etc/default/userd
  /usr/bin/userd --version | grep -q "^userd $version"
  test -L /etc/systemd/system/sockets.target.wants/userd.socket || { echo "userd.socket is not enabled"; exit 1; }
  dpkg --purge userd libuserd-dev libuserd0 >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; exit 1; }
  installed=0
  if getent passwd userd >/dev/null; then echo "the userd user outlived the purge"; exit 1; fi
  test ! -e /etc/default/userd
  test ! -e /etc/systemd/system/sockets.target.wants/userd.socket
  passed=$((passed + 1))
  echo "debian: installed and purged on this machine"
fi
echo "debian: $passed passed, 0 failed"
