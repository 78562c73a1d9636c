#!/bin/sh
# Run one libFuzzer harness: its seed corpus first (every file, regression
# inputs included, must pass), then new inputs until SECONDS have passed.
# Usage: tests/fuzz/run.sh FUZZ_BUILD_DIR TARGET SECONDS [libFuzzer flags...]
#
# Used by ctest (label `fuzz`, about 10 s each: `make test`) and by
# `make fuzz` (FUZZ_SECONDS each). New inputs the fuzzer keeps go to
# FUZZ_BUILD_DIR/corpus/TARGET, never into the source tree; crashes, leaks
# and timeouts are written to FUZZ_BUILD_DIR/artifacts/ (docs/fuzzing.md says
# how to turn one into a regression input).
set -eu

if [ $# -lt 3 ]; then
    echo "usage: $0 FUZZ_BUILD_DIR TARGET SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
build=$1
target=$2
seconds=$3
shift 3

here=$(cd "$(dirname "$0")" && pwd)
bin="$build/tests/fuzz/fuzz_$target"
seeds="$here/corpus/$target"
if [ ! -x "$bin" ]; then
    echo "$0: no harness $bin (build the fuzz tree first: make fuzz)" >&2
    exit 2
fi
if [ ! -d "$seeds" ]; then
    echo "$0: no seed corpus $seeds" >&2
    exit 2
fi

# Per target: the largest input worth trying, and how long one input may run
# before it counts as a hang. Every parser answers in milliseconds; the
# engine harnesses run a policy under a 2 ms limit, the policy harness loads
# one under its 100 ms load limit. 5 s is far above all of them even on a
# slow machine under ASan, and far below the 7-10 s spins found so far.
# Files the repo keeps for other tests are seeds too (read, never written).
extra=""
case "$target" in
catalog) max_len=16384 extra="$here/../data" ;;
policy) max_len=8192 extra="$here/../policies $here/../../policies" ;;
customers) max_len=8192 ;;
*) max_len=4096 ;;
esac
timeout=5

work="$build/corpus/$target"
artifacts="$build/artifacts/$target"
mkdir -p "$work" "$artifacts"
# The harnesses make their temp stores under TMPDIR: keep them in the build
# tree, where a run killed before its atexit clean-up leaves nothing behind
# in /tmp.
mkdir -p "$build/tmp"
TMPDIR="$build/tmp"
export TMPDIR
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Always the suppressions (what they hide and why: lsan.supp), after any
# LSAN_OPTIONS of the caller's.
LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$here/lsan.supp"
export ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS

case "$target" in
policy) dict="-dict=$here/policy.dict" ;;
*) dict="-dict=$here/json.dict" ;;
esac

# -jobs/-workers stay at 1: the machine is shared; run one fuzzer at a time.
# shellcheck disable=SC2086
exec "$bin" -max_total_time="$seconds" -timeout="$timeout" -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" $dict "$@" "$work" "$seeds" $extra
