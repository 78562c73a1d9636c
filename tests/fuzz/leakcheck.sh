#!/bin/sh
# ctest fuzz_leaks_reported: with tests/fuzz/lsan.supp in force, a leak in
# our own code is still a finding (fuzz_leakcheck.c says how;
# docs/fuzzing.md, "Leaks").
# Usage: tests/fuzz/leakcheck.sh FUZZ_BUILD_DIR
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=$(sh "$here/run.sh" "$1" leakcheck 60 -runs=0 2>&1)
rc=$?
fail() {
    printf '%s\n' "$out"
    echo "leakcheck: $*" >&2
    exit 1
}
[ "$rc" -ne 0 ] || fail "the leaking input passed (exit 0): leaks are not reported"
leaks=$(printf '%s\n' "$out" | grep -c 'Direct leak of')
[ "$leaks" -eq 1 ] || fail "$leaks direct leaks reported, expected the one in nbx_profile_get"
printf '%s\n' "$out" | grep -q ' in nbx_profile_get ' ||
    fail "the leak reported is not the JSON nbx_profile_get allocated"
printf '%s\n' "$out" | grep -q ' in sb_alloc ' &&
    fail "a block LuaJIT allocated (sb_alloc) was reported: lsan.supp is not in force"
echo "leakcheck: the leak in nbx_profile_get was reported, and no block of LuaJIT's"
