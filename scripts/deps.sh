#!/bin/sh
# Install the Debian packages nbx needs, only those that are missing.
# Usage: scripts/deps.sh build|test|fuzz|demo|bench
# Runs apt-get only when something is missing; refreshes the package lists
# once if the first attempt fails (a fresh machine may have none).
set -eu

build="gcc make cmake pkg-config libluajit-5.1-dev liblmdb-dev libmsgpack-dev \
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
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "nbx: missing Debian packages:$missing" >&2
    echo "nbx: run as root, or: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "nbx: installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! apt-get install -y --no-install-recommends $missing; then
    apt-get update
    apt-get install -y --no-install-recommends $missing
fi
