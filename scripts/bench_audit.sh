#!/bin/sh
# What a deployment and the audit log cost a decision (issue 13: p50 within
# 1.2x of the same policy without them), measured in one run, interleaved,
# so that load from other tenants falls on every mode alike.
#
# Usage: scripts/bench_audit.sh [BUILD_DIR] [ROUNDS]
#
# Each round runs bench_decide (1 thread, 1M profiles, 100 offers) three
# ways, in an order that rotates every round:
#   policy      --policy policies/margin_per_session.lua
#   deployment  --deployment bench/deployment.json (both arms that policy,
#               5 % holdout; arm counters flushed to the store)
#   audit       the same deployment with each decision's audit line written
#               to a file (a buffered log, as nginx's access_log buffer=)
# and prints each run's line, then the median p50 per mode over the rounds
# and its ratio to the policy alone. Data: `make bench` ($NBX_BENCH_DATA,
# default /tmp/nbx-bench-data); the deployment run writes arm counters into
# that store. NBX_BENCH_EVICT=KIB passes --evict KIB to bench_decide: that
# much other memory written between decisions, as a decision meets its
# caches in a busy server (bench/bench_decide.c says how).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
rounds=${2:-5}
evict=${NBX_BENCH_EVICT:-0}
. "$root/scripts/bench_lib.sh"
decision_data
[ -e "$store/data.mdb" ] || { echo "bench_audit: $store is missing: run make bench once" >&2; exit 1; }
out=$(mktemp)
log=$(mktemp)
trap 'rm -f "$out" "$log"' EXIT

one() { # mode, then bench_decide arguments
    mode=$1
    shift
    : >"$log"
    line=$("$build/bench/bench_decide" --store "$store" --catalog "$catalog" \
        --decisions "$decisions" --threads 1 --evict "$evict" "$@" | grep '^1 thread')
    p50=$(printf '%s\n' "$line" | sed -n 's/.* p50 \([0-9.]*\) us.*/\1/p')
    printf '%s %s\n' "$mode" "$p50" >>"$out"
    printf '%-11s %s\n' "$mode" "$line"
}

run_mode() {
    case $1 in
    policy) one policy --policy "$root/policies/margin_per_session.lua" ;;
    deployment) one deployment --deployment "$root/bench/deployment.json" ;;
    audit) one audit --deployment "$root/bench/deployment.json" --audit "$log" ;;
    esac
}

echo "build: $build ($(git -C "$build/.." rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
i=0
while [ "$i" -lt "$rounds" ]; do
    case $((i % 3)) in
    0) order="policy deployment audit" ;;
    1) order="deployment audit policy" ;;
    *) order="audit policy deployment" ;;
    esac
    for mode in $order; do run_mode "$mode"; done
    i=$((i + 1))
done

base=$(awk '$1 == "policy" {print $2}' "$out" | median)
echo
echo "median p50 over $rounds rounds (us) and ratio to the policy alone"
for mode in policy deployment audit; do
    m=$(awk -v n="$mode" '$1 == n {print $2}' "$out" | median)
    awk -v n="$mode" -v m="$m" -v b="$base" 'BEGIN {printf "%-11s %8.2f %6.3f\n", n, m, m / b}'
done
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"
