#!/bin/sh
# Before/after on the decision path: two builds (say, the commit before a
# change and after it) measured in the same run, interleaved, so that the
# load other tenants put on a shared machine falls on both alike.
#
# Usage: scripts/bench_compare.sh BEFORE_BUILD AFTER_BUILD [ROUNDS]
#
# Each round runs bench_decide (1 thread) with the default policy, the same
# formula as a Lua score and policies/retention.lua, at 100 offers, first
# with BEFORE then with AFTER, alternating which goes first each round.
# It prints every run's line, then per policy the median p50 of each build
# over the rounds and their ratio (AFTER / BEFORE: below 1 is faster).
# Data comes from `make bench` ($NBX_BENCH_DATA, default /tmp/nbx-bench-data):
# run that once first. Both builds must read that store's format.
set -eu

[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BUILD AFTER_BUILD [ROUNDS]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
before=$(cd "$1" && pwd)
after=$(cd "$2" && pwd)
rounds=${3:-5}
. "$root/scripts/bench_lib.sh"
decision_data
for f in "$store/data.mdb" "$catalog" "$data/margin_lua.lua"; do
    [ -e "$f" ] || { echo "bench_compare: $f is missing: run make bench once" >&2; exit 1; }
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT

one() { # build label policy-label policy
    line=$("$1/bench/bench_decide" --store "$store" --catalog "$catalog" --policy "$4" \
        --decisions "$decisions" --threads 1 | grep '^1 thread')
    p50=$(printf '%s\n' "$line" | sed -n 's/.* p50 \([0-9.]*\) us.*/\1/p')
    printf '%s %s %s\n' "$3" "$2" "$p50" >>"$out"
    printf '%-10s %-6s %s\n' "$3" "$2" "$line"
}

echo "before: $before ($(git -C "$before/.." rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "after:  $after ($(git -C "$after/.." rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
i=0
while [ "$i" -lt "$rounds" ]; do
    for p in "default:$root/policies/margin_per_session.lua" "lua:$data/margin_lua.lua" \
        "retention:$root/policies/retention.lua"; do
        name=${p%%:*}
        file=${p#*:}
        if [ $((i % 2)) -eq 0 ]; then
            one "$before" before "$name" "$file"
            one "$after" after "$name" "$file"
        else
            one "$after" after "$name" "$file"
            one "$before" before "$name" "$file"
        fi
    done
    i=$((i + 1))
done

echo
echo "median p50 over $rounds rounds (us): policy before after after/before"
for name in default lua retention; do
    b=$(awk -v n="$name" '$1 == n && $2 == "before" {print $3}' "$out" | median)
    a=$(awk -v n="$name" '$1 == n && $2 == "after" {print $3}' "$out" | median)
    awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN {printf "%-10s %8.2f %8.2f %6.3f\n", n, b, a, a / b}'
done
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg)"
