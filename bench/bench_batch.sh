#!/bin/sh
# bench_batch.sh: throughput and memory of `nbx batch --all`, what the batch
# runner costs over nbx_decide(), and the Python binding's overhead.
#
# Usage: bench/bench_batch.sh [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR  a build of this tree (default: build)
#   WORK_DIR   where the stores live (default: /tmp/nbx-bench-batch); they are
#              built once (gen + import, a few minutes) and reused.
# Environment: THREADS (default 2), POLICY (default policies/margin_per_session.lua),
#   SIZES (default "100000 1000000"), SKIP_PYTHON=1.
#
# Prints each command before its figures. Peak memory is the kernel's VmHWM
# (peak resident set) and the peak of RssAnon (sampled every 0.1 s): the
# store is memory-mapped, so resident file pages grow with the part of the
# store read, while RssAnon is what nbx allocates.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)
work=${2:-/tmp/nbx-bench-batch}
threads=${THREADS:-2}
policy=${POLICY:-$here/policies/margin_per_session.lua}
sizes=${SIZES:-"100000 1000000"}
nbx=$build/nbx
as_of=2026-03-01T12:00:00Z
mkdir -p "$work"

say() { printf '%s\n' "$*" >&2; }
run() { say "\$ $*"; "$@"; }

# --- data ------------------------------------------------------------------
if [ ! -f "$work/catalog.json" ]; then
    run "$nbx" gen catalog --offers 100 --out "$work/catalog.json"
fi
for n in $sizes; do
    # A store left by an earlier nbx (another format) is generated again.
    if [ ! -f "$work/store-$n/data.mdb" ] || ! "$nbx" stats --store "$work/store-$n" >/dev/null 2>&1; then
        rm -rf "$work/store-$n"
        run "$nbx" gen profiles --count "$n" --offers 100 --out "$work/profiles-$n.jsonl"
        run "$nbx" import profiles "$work/profiles-$n.jsonl" --store "$work/store-$n"
        rm -f "$work/profiles-$n.jsonl"
    fi
done

# --- nbx batch --all ---------------------------------------------------------
# Runs nbx in the background and samples /proc while it runs.
measure() {
    "$@" &
    pid=$!
    hwm=0
    anon=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ -r "/proc/$pid/status" ]; then
            vals=$(awk '/^VmHWM/{h=$2} /^RssAnon/{a=$2} END{print h+0, a+0}' \
                "/proc/$pid/status" 2>/dev/null || echo "0 0")
            h=${vals% *}
            a=${vals#* }
            [ "$h" -gt "$hwm" ] && hwm=$h
            [ "$a" -gt "$anon" ] && anon=$a
        fi
        sleep 0.1
    done
    wait "$pid"
}

say ""
say "== nbx batch --all, $threads threads, $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $sizes; do
    out=$work/out-$n.jsonl
    summary=$work/summary-$n.json
    say "\$ $nbx batch --store $work/store-$n --catalog $work/catalog.json --policy $policy" \
        "--all --threads $threads --as-of $as_of --out $out --summary $summary"
    # Read the store once first: this VM's host drops the page cache between
    # runs, and a cold store measures the virtual disk, not nbx.
    cat "$work/store-$n/data.mdb" >/dev/null
    measure "$nbx" batch --store "$work/store-$n" --catalog "$work/catalog.json" \
        --policy "$policy" --all --threads "$threads" --as-of "$as_of" --out "$out" \
        --summary "$summary" 2>"$work/stderr-$n.txt"
    rate=$(sed 's/.*"rate":\([0-9.]*\).*/\1/' "$summary")
    elapsed=$(sed 's/.*"elapsed_s":\([0-9.]*\).*/\1/' "$summary")
    printf 'batch %8d customers: %8.0f customers/s  %6.1f s  peak RSS %6d KiB  peak RssAnon %6d KiB  output %d MiB\n' \
        "$n" "$rate" "$elapsed" "$hwm" "$anon" $(( $(stat -c %s "$out") / 1048576 ))
    rm -f "$out"
done

# --- --record, on a copy of the smallest store -----------------------
smallest=$(for n in $sizes; do echo "$n"; done | sort -n | head -1)
rm -rf "$work/commit-store"
cp -r "$work/store-$smallest" "$work/commit-store"
say ""
say "== nbx batch --all --record (a copy of store-$smallest)"
say "\$ $nbx batch --store $work/commit-store --catalog $work/catalog.json --policy $policy" \
    "--all --threads $threads --as-of $as_of --record --out /dev/null --summary $work/summary-commit.json"
"$nbx" batch --store "$work/commit-store" --catalog "$work/catalog.json" --policy "$policy" \
    --all --threads "$threads" --as-of "$as_of" --record --out /dev/null \
    --summary "$work/summary-commit.json" 2>"$work/stderr-commit.txt"
printf 'commit %8d customers: %8.0f customers/s  %d impressions recorded\n' "$smallest" \
    "$(sed 's/.*"rate":\([0-9.]*\).*/\1/' "$work/summary-commit.json")" \
    "$(sed 's/.*"actions":\([0-9]*\).*/\1/' "$work/summary-commit.json")"
rm -rf "$work/commit-store"

# --- the runner over nbx_decide() --------------------------------------------
largest=$(for n in $sizes; do echo "$n"; done | sort -n | tail -1)
say ""
say "== batch runner vs nbx_decide() loop"
cat "$work/store-$largest/data.mdb" >/dev/null
run "$build/bench/bench_batch" --store "$work/store-$largest" --catalog "$work/catalog.json" \
    --policy "$policy" --customers 50000 --threads "$threads" --rounds 3

# --- Python ------------------------------------------------------------------
if [ "${SKIP_PYTHON:-0}" != 1 ]; then
    say ""
    say "== Python binding"
    run env PYTHONPATH="$here/bindings/python" NBX_LIBRARY="$build/libnbx.so.0" \
        /usr/bin/python3 "$here/bench/bench_python.py" --store "$work/store-$largest" \
        --catalog "$work/catalog.json" --policy "$policy" --customers 20000 --rounds 3
fi
