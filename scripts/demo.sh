#!/bin/sh
# The demo behind `make demo`: a store of synthetic customers with purchase
# history, RFM, decisions with explanations, nginx serving decisions, and a
# CRM batch run. Deterministic: fixed seeds and a fixed clock.
#
# Usage: scripts/demo.sh [BUILD_DIR] [stop]
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
nbx="$build/nbx"
demo="$build/demo"
store="$demo/store"
catalog="$demo/catalog.json"
policy="$root/policies/margin_per_session.lua"
as_of="2026-03-02T12:00:00Z"

if [ "${2:-}" = stop ]; then
    exec "$root/scripts/nginx_demo.sh" stop "$build"
fi

say() {
    printf '\n\033[1m== %s\033[0m\n' "$*"
}

pretty() {
    /usr/bin/python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=2))'
}

# A compact view of an explained decision: actions, then every candidate
# with its score and why it was excluded.
explain_table() {
    /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
print("decision %s for %s  policy %s %s  fallback=%s" % (d["decision_id"], d["customer"],
      d["policy"]["name"], d["policy"]["version"], d["fallback"]))
for a in d["actions"]:
    print("  -> %-14s %-8s score %9.4f  expected margin %9.4f" % (a["offer"], a["placement"],
          a["score"] if a["score"] is not None else float("nan"), a["expected_margin"]))
shown = 0
for c in d.get("candidates", []):
    if shown >= 12:
        print("     ... %d more candidates" % (len(d["candidates"]) - shown)); break
    score = "%9.4f" % c["score"] if c["score"] is not None else "        -"
    print("     %-14s %-8s %s  %s" % (c["offer"], c["placement"], score, c["excluded"] or ""))
    shown += 1
'
}

say "Generating synthetic data in $demo"
rm -rf "$demo"
mkdir -p "$demo"
"$nbx" gen catalog --offers 30 --seed 7 --out "$catalog"
"$nbx" gen profiles --count 20000 --offers 30 --seed 7 --out "$demo/profiles.jsonl"
"$nbx" gen events --customers 20000 --count 200000 --offers 30 --seed 7 \
    --start 2026-01-01T00:00:00Z --days 60 --out "$demo/events.jsonl"

say "Importing profiles and ingesting purchase and exposure events"
"$nbx" import profiles "$demo/profiles.jsonl" --store "$store"
"$nbx" ingest "$demo/events.jsonl" --store "$store"
"$nbx" stats --store "$store"

say "Rebuilding RFM as of $as_of (quintiles, scores and the segment distribution)"
"$nbx" rfm rebuild --store "$store" --as-of "$as_of"

say "A few profiles"
for id in c0000001 c0000042 c0000777; do
    "$nbx" profile get "$id" --store "$store" | pretty
done

say "Decisions with explanations (policy: margin_per_session)"
for id in c0000001 c0000042 c0000777 c9999999; do
    "$nbx" decide --store "$store" --catalog "$catalog" --policy "$policy" \
        --customer "$id" --session channel=web --session device=mobile \
        --as-of "$as_of" --explain | explain_table
done

say "The same customer under the retention policy"
"$nbx" decide --store "$store" --catalog "$catalog" --policy "$root/policies/retention.lua" \
    --customer c0000042 --as-of "$as_of" | explain_table

say "Reviewing a policy change: margin_per_session -> retention on 5,000 customers"
"$nbx" policy diff "$policy" "$root/policies/retention.lua" --catalog "$catalog" \
    --store "$store" --sample 5000 --as-of "$as_of" --out "$demo/review.md" ||
    echo "(nbx policy diff exit status $?: NEW fell back or failed, see the report)"
sed -n '/^## Headline/,/^## Expected margin/p' "$demo/review.md" | sed '$d'
echo "the whole report: $demo/review.md (charts: $demo/review.offers.svg, $demo/review.segments.svg)"

if "$nbx" help batch >/dev/null 2>&1; then
    say "A CRM batch over every customer (plan only: no caps consumed)"
    "$nbx" batch --store "$store" --catalog "$catalog" --policy "$policy" --all \
        --placement hero --as-of "$as_of" --out "$demo/batch.jsonl"
    echo "first lines of $demo/batch.jsonl:"
    head -n 2 "$demo/batch.jsonl" | cut -c 1-240
fi

if [ -f "$build/bindings/nginx/ngx_http_nbx_module.so" ]; then
    say "nginx with the nbx module on 127.0.0.1:8080"
    NBX_DEMO_STORE="$store" NBX_DEMO_CATALOG="$catalog" NBX_DEMO_POLICY="$policy" \
        "$root/scripts/nginx_demo.sh" start "$build"
    echo
    echo "curl 'http://127.0.0.1:8080/decide?customer=c0000042&placement=hero&channel=web'"
    curl -s 'http://127.0.0.1:8080/decide?customer=c0000042&placement=hero&channel=web'
    echo
    echo "curl -X POST http://127.0.0.1:8080/event -d '{\"event_id\":\"demo-1\",\"customer\":\"c0000042\",\"type\":\"impression\",\"offer\":\"o001\",\"ts\":\"$as_of\"}'"
    curl -s -o /dev/null -w 'HTTP %{http_code}\n' -X POST http://127.0.0.1:8080/event \
        -d "{\"event_id\":\"demo-1\",\"customer\":\"c0000042\",\"type\":\"impression\",\"offer\":\"o001\",\"ts\":\"$as_of\"}"
    echo
    echo "nginx keeps running. Stop it with: make demo-stop   (or: scripts/demo.sh $build stop)"
else
    say "nginx module not built (nginx-dev missing?): skipping the nginx part"
fi
