#!/bin/sh
# Run the test suite while a busy loop runs on every core, as on a slower,
# busy CI machine: the tests must assert what the product promises (a
# fallback, a refusal, a bound with margin), never which limit trips first
# or how fast this machine is.
#
# Usage: scripts/stress.sh BUILD_DIR [CTEST_ARGS...]   (make test-stress)
#
# One hog per CPU (nproc), at the tests' own priority. The hogs stop when
# this script ends, however it ends: on exit and on INT, TERM and HUP they
# are killed, and each also checks every few milliseconds that this script
# is still alive, so a kill -9 of the script does not leave them running.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [CTEST_ARGS...]" >&2; exit 2; }
build=$1
shift

hogs=""
stop_hogs() {
    for pid in $hogs; do
        kill "$pid" 2>/dev/null || true
    done
    hogs=""
}
trap stop_hogs EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

parent=$$
cpus=$(nproc 2>/dev/null || echo 2)
i=0
while [ "$i" -lt "$cpus" ]; do
    # shellcheck disable=SC2016
    nice -n 0 sh -c '
        while kill -0 "$1" 2>/dev/null; do
            n=0
            while [ "$n" -lt 20000 ]; do n=$((n + 1)); done
        done' hog "$parent" &
    hogs="$hogs $!"
    i=$((i + 1))
done
echo "nbx: $cpus CPU hogs running (pids$hogs)" >&2

rc=0
ctest --test-dir "$build" --output-on-failure "$@" || rc=$?
stop_hogs
exit "$rc"
