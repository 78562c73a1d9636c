#!/bin/sh
# Install the Debian packages nbx needs, only those that are missing, and
# never remove a package.
# Usage: scripts/deps.sh build|test|fuzz|demo|bench
#
# apt-get install -y removes whatever conflicts with what it installs,
# without asking: asking for libluajit-5.1-dev on a machine with OpenResty's
# LuaJIT removed libnginx-mod-http-lua and lua-resty-core. So the plan is
# simulated first (apt-get -s); if it would remove anything, nothing is
# installed and the packages and the reason are named. The install itself
# runs with --no-remove as well, in case the package lists changed between.
# The package lists are refreshed once if the packages are unknown (a fresh
# machine may have none).
set -eu

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# LuaJIT comes as two Debian packages that conflict with each other:
# libluajit-5.1-dev (LuaJIT's own) and libluajit2-5.1-dev (OpenResty's
# branch, which libnginx-mod-http-lua and lua-resty-core need). Both install
# luajit.pc and /usr/include/luajit-2.1, and nbx builds with either: take the
# one whose library (or common files) is installed, the upstream one on a
# machine with neither.
luajit_dev() {
    for p in libluajit2-5.1-dev libluajit2-5.1-2 libluajit2-5.1-common; do
        if installed "$p"; then
            echo libluajit2-5.1-dev
            return
        fi
    done
    echo libluajit-5.1-dev
}

build="gcc make cmake pkg-config $(luajit_dev) liblmdb-dev libmsgpack-dev \
libxxhash-dev libjansson-dev libcriterion-dev"
# nginx-dev carries the nginx source tree the dynamic module builds against.
nginx="nginx nginx-dev"
python="python3 python3-pytest"
test_tools="curl lmdb-utils python3-distributed"
bench_tools="wrk"
# libFuzzer harnesses (make fuzz, make test): clang and its runtimes.
fuzz_tools="clang libclang-rt-dev"

case "${1:-build}" in
build) want="$build" ;;
test) want="$build $nginx $python $test_tools $fuzz_tools" ;;
fuzz) want="$build $fuzz_tools" ;;
demo) want="$build $nginx $python curl" ;;
bench) want="$build $nginx $python curl $bench_tools" ;;
*) echo "usage: $0 build|test|fuzz|demo|bench" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    installed "$p" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

# The package names of the simulation's lines "Remv NAME [VERSION]" or
# "Inst NAME [...] (...)", on one line.
plan_of() {
    printf '%s\n' "$2" | sed -n "s/^$1 \([^ ]*\).*/\1/p" | tr '\n' ' '
}

# Simulate as any user; refresh the lists (root only) if apt-get does not
# know the packages yet.
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! plan=$(apt-get -s install --no-install-recommends $missing 2>&1); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update >&2
        # shellcheck disable=SC2086
        plan=$(apt-get -s install --no-install-recommends $missing 2>&1) || {
            printf '%s\n' "$plan" >&2
            echo "nbx: apt-get cannot install the missing packages:$missing" >&2
            exit 1
        }
    else
        plan=""
    fi
fi

removed=$(plan_of Remv "$plan")
if [ -n "$removed" ]; then
    echo "nbx: refusing to install the missing Debian packages:$missing" >&2
    echo "nbx: apt-get would remove packages this machine has: $removed" >&2
    echo "nbx: because they conflict with what it would install (or need what it" \
        "would remove): $(plan_of Inst "$plan")" >&2
    echo "nbx: nothing was installed or removed. Decide which packages this" \
        "machine keeps, install the rest yourself, and run make again" \
        "(docs/dependencies.md)." >&2
    exit 1
fi

if [ "$(id -u)" != 0 ]; then
    echo "nbx: missing Debian packages:$missing" >&2
    echo "nbx: run as root, or: sudo apt-get install -y --no-remove" \
        "--no-install-recommends$missing" >&2
    exit 1
fi
echo "nbx: installing Debian packages:$missing" >&2
# shellcheck disable=SC2086
apt-get install -y --no-remove --no-install-recommends $missing
