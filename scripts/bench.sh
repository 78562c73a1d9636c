#!/bin/sh
# Every benchmark behind docs/performance.md, in one run: `make bench`.
#
# Usage: scripts/bench.sh [BUILD_DIR]
#
# Data (about 3 GB) goes to $NBX_BENCH_DATA (default /tmp/nbx-bench-data) and
# is generated once with `nbx gen` (seeded), then reused. Each part prints
# the command that reproduces it before its figures. The machine these
# figures come from has 2 shared cores: quote medians and ratios from one run.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
data=${NBX_BENCH_DATA:-/tmp/nbx-bench-data}
nbx=$build/nbx
default_policy=$root/policies/margin_per_session.lua
mkdir -p "$data"

part() { printf '\n===== %s =====\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# A 1,000,000-profile store (10 attributes, 20 propensities each) and
# catalogs of 100 and 1,000 offers over 3 placements.
store=$data/decide-store-1m
# A store left by an earlier nbx (another format) is generated again.
if [ ! -f "$store/data.mdb" ] || ! "$nbx" stats --store "$store" >/dev/null 2>&1; then
    rm -rf "$store"
    part "data: 1,000,000 profiles"
    run "$nbx" gen profiles --count 1000000 --offers 100 --seed 1 --out "$data/decide-profiles.jsonl"
    run "$nbx" import profiles "$data/decide-profiles.jsonl" --store "$store"
    rm -f "$data/decide-profiles.jsonl"
fi
[ -f "$data/catalog-100.json" ] || "$nbx" gen catalog --offers 100 --seed 1 --out "$data/catalog-100.json"
[ -f "$data/catalog-1000.json" ] || "$nbx" gen catalog --offers 1000 --seed 1 --out "$data/catalog-1000.json"
# The default policy's formula written as a Lua score(), to measure the
# sandbox itself (the shipped policy uses the built-in scorer).
cat >"$data/margin_lua.lua" <<'EOF'
local policy = { name = "margin_per_session_lua", params = {} }
function policy.score(offer, customer, session)
  local m = nbx.expected_margin(customer, offer)
  return m, m
end
return policy
EOF

part "store: import, ingest, point lookups, bytes per profile, rfm rebuild"
NBX_BENCH_DATA=$data run "$root/bench/store.sh" "$build" --runs 3

part "decisions: 1M profiles, 100 offers over 3 placements, random customers"
for policy in "$default_policy" "$data/margin_lua.lua" "$root/policies/retention.lua"; do
    run "$build/bench/bench_decide" --store "$store" --catalog "$data/catalog-100.json" \
        --policy "$policy" --decisions 200000 --threads 2
done
part "decisions: a deployment (5 % holdout, two arms of the default policy) with the audit log"
run "$build/bench/bench_decide" --store "$store" --catalog "$data/catalog-100.json" \
    --policy "$default_policy" --decisions 200000 --threads 1
run "$build/bench/bench_decide" --store "$store" --catalog "$data/catalog-100.json" \
    --deployment "$root/bench/deployment.json" --audit "$data/audit.jsonl" --decisions 200000 --threads 1
rm -f "$data/audit.jsonl"
part "assignment: a customer's arm"
run "$build/bench/bench_assign"
part "decisions: the same at 1,000 offers"
for policy in "$default_policy" "$data/margin_lua.lua" "$root/policies/retention.lua"; do
    run "$build/bench/bench_decide" --store "$store" --catalog "$data/catalog-1000.json" \
        --policy "$policy" --decisions 50000 --threads 2
done

part "sandbox: production / no time limit / interpreter, 100 candidates"
run "$build/bench/bench_sandbox"

part "sandbox: how far past their limits hostile policies run"
run "$build/bench/bench_limits"

part "policy source: instrumenting a 256 KiB policy"
run "$build/bench/bench_lsource"

part "batch: nbx batch --all, Python binding overhead"
run "$root/bench/bench_batch.sh" "$build" "$data/batch"

part "policy diff: 100,000 customers, two Lua policies, 100 offers"
run "$root/bench/bench_diff.sh" "$build" "$data/diff"

part "nginx: nbx_decide vs a static body under wrk"
run "$root/bench/nginx_wrk.sh" "$build"
part "nginx: the same with policies/retention.lua"
run env NBX_BENCH_POLICY="$root/policies/retention.lua" "$root/bench/nginx_wrk.sh" "$build"
part "nginx: the same with a deployment and the audit log (access_log)"
run env NBX_BENCH_DEPLOYMENT="$root/bench/deployment.json" NBX_BENCH_AUDIT=1 "$root/bench/nginx_wrk.sh" "$build"
part "nginx: a static page behind 4 hostile decisions, 2 workers"
run "$root/bench/nginx_hostile.sh" "$build"
