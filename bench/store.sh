#!/bin/sh
# bench/store.sh: generate the store benchmark's data with `nbx gen` (seeded,
# so every run sees the same files) and run bench/bench_store.c on it.
#
#   bench/store.sh [BUILD_DIR] [bench_store flags: --runs N --batch N --events-batch N ...]
#
# BUILD_DIR defaults to build. Data goes to $NBX_BENCH_DATA (default
# /tmp/nbx-bench-data), about 1 GB; stores are made and removed under it.
set -eu
build=${1:-build}
[ $# -gt 0 ] && shift
data=${NBX_BENCH_DATA:-/tmp/nbx-bench-data}
profiles=$data/profiles-1m.jsonl
events=$data/events-2m.jsonl
mkdir -p "$data"
if [ ! -s "$profiles" ]; then
    "$build/nbx" gen profiles --count 1000000 --seed 1 --out "$profiles.tmp"
    mv "$profiles.tmp" "$profiles"
fi
if [ ! -s "$events" ]; then
    "$build/nbx" gen events --customers 1000000 --count 2000000 --seed 1 --out "$events.tmp"
    mv "$events.tmp" "$events"
fi
exec "$build/bench/bench_store" --profiles "$profiles" --events "$events" \
    --dir "$data/stores" "$@"
