#!/bin/sh
# How long a static page waits behind hostile decisions on the same nginx
# (issue 10, section 2: "a static page behind 4 hostile decisions waits
# under 50 ms"; before the sandbox bounded C calls it waited 5.98 s).
#
# Usage: bench/nginx_hostile.sh [BUILD_DIR]
#
# Environment (optional):
#   NBX_BENCH_DURATION     seconds under hostile load  (default 10)
#   NBX_BENCH_WORKERS      nginx worker processes      (default 2, as measured in the issue)
#   NBX_BENCH_HOSTILE      hostile decisions in flight (default 4)
#   NBX_BENCH_HOSTILE_POLICIES
#                          hostile policies, names in tests/policies or paths
#                          (default: four that spend their time in C calls:
#                          timeout_tonumber_big timeout_big_allocations
#                          timeout_pattern_find timeout_pattern_gsub)
#
# Each policy serves a location of its own with the default limits and
# misbehaves on session mode=hostile (the trial of nginx's start-up decides
# without it). bench/nginx_hostile.py times the static page idle, then while
# NBX_BENCH_HOSTILE processes send hostile decisions back to back, and prints
# median, p99 and worst static latency, the hostile decisions' latency and
# how they ended; then the machine's load, as nginx_wrk.sh does.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/nginx_common.sh"
build=$(cd "${1:-$root/build}" && pwd)
duration="${NBX_BENCH_DURATION:-10}"
workers="${NBX_BENCH_WORKERS:-2}"
concurrent="${NBX_BENCH_HOSTILE:-4}"
hostile_policies="${NBX_BENCH_HOSTILE_POLICIES:-timeout_tonumber_big timeout_big_allocations timeout_pattern_find timeout_pattern_gsub}"
work="$build/bench-nginx-hostile"
run="$work/run"

bench_binaries nginx_hostile "$build"
# A small store: the subject is the sandbox's time limit, not the lookups.
data="$work/data-1000-20"
bench_data "$data" 1000 20

rm -rf "$run"
mkdir -p "$run/tmp"
port=$(free_port)

locations=""
paths=""
names=""
i=0
for p in $hostile_policies; do
    case "$p" in
    */*) file=$p ;;
    *) file="$root/tests/policies/$p.lua" ;;
    esac
    [ -f "$file" ] || die "no hostile policy $file"
    i=$((i + 1))
    locations="$locations
        location = /hostile/$i {
            nbx_store $data/store;
            nbx_catalog $data/catalog.json;
            nbx_policy $file;
            nbx_customer \$arg_customer;
            nbx_session mode \$arg_mode;
            nbx_decide;
        }"
    paths="$paths /hostile/$i?customer=$(printf 'c%07d' "$i")&mode=hostile"
    names="${names:+$names, }$(basename "$file" .lua)"
done

{
    nginx_conf_head "$module" "$workers" "$data/store"
    cat <<EOF
    server {
        listen 127.0.0.1:$port;
$locations
        location = /static {
            default_type text/html;
            add_header Cache-Control no-store;
            return 200 '<!doctype html><title>static</title><p>A static page.</p>';
        }
    }
}
EOF
} >"$run/nginx.conf"

# an interrupt ends the run (through the EXIT trap), rather than running on
# against the nginx the trap stopped
trap stop_nginx EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$nginx" -p "$run" -c "$run/nginx.conf" -q || die "nginx did not start; see $run/error.log"
sleep 0.5
curl -sf "http://127.0.0.1:$port/static" >/dev/null || die "no static page; see $run/error.log"

cat <<EOF

nbx on nginx: $workers workers; $concurrent hostile decisions in flight, back to back, for ${duration}s
hostile policies (default limits, one location each): $names
static page: a new connection every 10 ms, served by the same workers

EOF
machine_before
# shellcheck disable=SC2086 # one argument per path
python3 "$root/bench/nginx_hostile.py" "$port" "$duration" "$concurrent" $paths || status=$?
machine_after
echo
machine_report </dev/null || true
echo
echo "nginx log: $run/error.log"
exit "${status:-0}"
