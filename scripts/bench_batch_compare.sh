#!/bin/sh
# `nbx batch --all` of two builds (say, the commit before a change and
# after it), alternating, on warm stores: what docs/performance.md's batch
# before/after rows quote.
#
# Usage: scripts/bench_batch_compare.sh BEFORE_BUILD BEFORE_DATA AFTER_BUILD AFTER_DATA [ROUNDS]
#
# *_DATA is a `make bench` data directory ($NBX_BENCH_DATA) whose batch/
# stores that build reads (a store of another format is refused). Each
# round runs both, in turns (the first one alternates), and prints user and
# system CPU seconds, elapsed seconds and customers/s; then the median
# rate of each and their ratio. Environment: N (profiles: 100000 or
# 1000000, default 1000000), THREADS (default 2).
set -eu

[ $# -ge 4 ] || {
    echo "usage: $0 BEFORE_BUILD BEFORE_DATA AFTER_BUILD AFTER_DATA [ROUNDS]" >&2
    exit 2
}
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/bench_lib.sh"
rounds=${5:-3}
n=${N:-1000000}
threads=${THREADS:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

one() { # label build data
    store=$3/batch/store-$n
    [ -e "$store/data.mdb" ] || { echo "bench_batch_compare: $store is missing" >&2; exit 1; }
    cat "$store/data.mdb" >/dev/null # warm: the host drops the page cache
    /usr/bin/time -f "%U %S %e" -o "$tmp/time" "$2/nbx" batch --store "$store" \
        --catalog "$3/batch/catalog.json" --policy "$root/policies/margin_per_session.lua" \
        --all --threads "$threads" --as-of 2026-03-01T12:00:00Z --out "$tmp/out" \
        --summary "$tmp/summary" 2>/dev/null
    rate=$(sed 's/.*"rate":\([0-9.]*\).*/\1/' "$tmp/summary")
    echo "$1 $rate" >>"$tmp/rates"
    echo "$1 user/sys/elapsed s $(cat "$tmp/time")  $rate customers/s"
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; $n profiles, $threads threads"
i=0
while [ "$i" -lt "$rounds" ]; do
    if [ $((i % 2)) -eq 0 ]; then
        one before "$1" "$2"
        one after "$3" "$4"
    else
        one after "$3" "$4"
        one before "$1" "$2"
    fi
    i=$((i + 1))
done
b=$(awk '$1 == "before" {print $2}' "$tmp/rates" | median)
a=$(awk '$1 == "after" {print $2}' "$tmp/rates" | median)
awk -v a="$a" -v b="$b" 'BEGIN {printf "median customers/s: before %.0f, after %.0f, after/before %.3f\n", b, a, a / b}'
