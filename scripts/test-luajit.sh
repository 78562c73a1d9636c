#!/bin/sh
# Build nbx against one of Debian's two LuaJIT packages and run the whole
# test suite with it, without installing or removing anything: the .debs are
# downloaded (apt-get download) and extracted (dpkg -x) into a local root,
# and pkg-config, the build and the loader are pointed at it.
#
# Usage: scripts/test-luajit.sh libluajit2-5.1-dev|libluajit-5.1-dev [DIR] [-- CTEST_ARGS]
#   DIR (default build/luajit2 or build/luajit-upstream) receives debs/, root/ and
#   build/. `make test-luajit2` runs it for OpenResty's package, `make
#   test-luajit-upstream` for the other.
#
# The two packages conflict (docs/dependencies.md), so a machine can have
# only one installed; this is how the suite runs against the other.
set -eu
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 libluajit2-5.1-dev|libluajit-5.1-dev [DIR] [-- CTEST_ARGS]" >&2
    exit 2
}

case "${1:-}" in
libluajit2-5.1-dev) flavour=luajit2; libpkg=libluajit2-5.1-2; common=libluajit2-5.1-common ;;
libluajit-5.1-dev) flavour=luajit-upstream; libpkg=libluajit-5.1-2; common=libluajit-5.1-common ;;
*) usage ;;
esac
devpkg=$1
shift
dir=build/$flavour
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    dir=$1
    shift
fi
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || usage
    shift
fi

mkdir -p "$dir/debs"
dir=$(cd "$dir" && pwd)
root=$dir/root

# Download once; a later run works offline.
if ! ls "$dir/debs/${devpkg}_"*.deb >/dev/null 2>&1; then
    echo "nbx: downloading $devpkg $libpkg $common into $dir/debs" >&2
    (cd "$dir/debs" && apt-get download "$devpkg" "$libpkg" "$common")
fi

rm -rf "$root"
for deb in "$dir/debs/${devpkg}_"*.deb "$dir/debs/${libpkg}_"*.deb \
    "$dir/debs/${common}_"*.deb; do
    dpkg -x "$deb" "$root"
done

# luajit.pc names prefix=/usr: point it at the root. Both packages put it
# in the multiarch pkgconfig directory, next to the library.
pc=$(find "$root" -name luajit.pc | head -n 1)
[ -n "$pc" ] || { echo "nbx: no luajit.pc in $devpkg" >&2; exit 1; }
sed -i "s|^prefix=.*|prefix=$root/usr|" "$pc"
pcdir=$(dirname "$pc")
libdir=$(dirname "$pcdir")

PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# the nginx module has no run path of its own; nginx, the Python binding
# and the C suites find the extracted library first through this
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH LD_LIBRARY_PATH

# CMAKE_ARGS: several arguments, as the Makefile passes them
# shellcheck disable=SC2086
cmake -S . -B "$dir/build" ${CMAKE_ARGS:-} >"$dir/cmake.log" || {
    cat "$dir/cmake.log" >&2
    exit 1
}
# The build must take the extracted LuaJIT, and every program the tests run
# must load it, not the one installed on the machine.
if ! grep "nbx: LuaJIT .*$devpkg) in $root/" "$dir/cmake.log" >&2; then
    echo "nbx: CMake did not take $devpkg from $root (see $dir/cmake.log)" >&2
    exit 1
fi
cmake --build "$dir/build" -j "${JOBS:-$(nproc 2>/dev/null || echo 2)}"
for bin in "$dir/build/libnbx.so" "$dir/build/nbx" "$dir/build/tests/test_sandbox" \
    "$dir/build/bindings/nginx/ngx_http_nbx_module.so"; do
    [ -e "$bin" ] || continue
    loaded=$(ldd "$bin" | sed -n 's/.*libluajit-5\.1\.so\.2 => \([^ ]*\).*/\1/p')
    case "$loaded" in
    "$root"/*) echo "nbx: $bin loads $loaded" >&2 ;;
    *)
        echo "nbx: $bin loads LuaJIT from '$loaded', not from $root" >&2
        exit 1
        ;;
    esac
done

ctest --test-dir "$dir/build" --output-on-failure "$@"
