#!/bin/sh
# nbx_decide through nginx under wrk, against nginx serving a static JSON
# body of the same size, in the same run.
#
# Usage: bench/nginx_wrk.sh [BUILD_DIR]
#
# Environment (optional):
#   NBX_BENCH_PROFILES     profiles in the store       (default 1000000)
#   NBX_BENCH_OFFERS       offers in the catalog       (default 100)
#   NBX_BENCH_DURATION     seconds per wrk run         (default 20)
#   NBX_BENCH_CONNECTIONS  wrk connections             (default 64)
#   NBX_BENCH_THREADS      wrk threads                 (default 2)
#   NBX_BENCH_WORKERS      nginx worker processes      (default 2)
#   NBX_BENCH_POLICY       policy file (default policies/margin_per_session.lua)
#   NBX_BENCH_DEPLOYMENT   a deployment file served instead of the policy
#   NBX_BENCH_AUDIT        1: write the audit log ($nbx_decision) with
#                          nginx's access_log, buffered, as docs/nginx.md shows
#   NBX_BENCH_PIN          1: wrk on the first CPU, every nginx worker on the
#                          last (worker_cpu_affinity), as when clients are
#                          other machines; by default all share every core
#
# The store is generated once with `nbx gen` + `nbx import` and kept in
# BUILD_DIR/bench-nginx for the next run. Targets (issue 11): nbx
# requests/s at least 0.85 of the static rate, nbx p99 at most 1.5x
# static's. The report says when the
# machine was busy (load average above the cores before the runs, CPU time
# stolen during them, static below its usual rate here): such figures are
# noise, neither a regression nor a win.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
profiles="${NBX_BENCH_PROFILES:-1000000}"
offers="${NBX_BENCH_OFFERS:-100}"
duration="${NBX_BENCH_DURATION:-20}"
connections="${NBX_BENCH_CONNECTIONS:-64}"
threads="${NBX_BENCH_THREADS:-2}"
workers="${NBX_BENCH_WORKERS:-2}"
policy="${NBX_BENCH_POLICY:-$root/policies/margin_per_session.lua}"
deployment="${NBX_BENCH_DEPLOYMENT:-}"
audit="${NBX_BENCH_AUDIT:-0}"
pin="${NBX_BENCH_PIN:-0}"
serving_label="policy $(basename "$policy")"
[ -n "$deployment" ] && serving_label="deployment $(basename "$deployment")"
[ "$audit" = 1 ] && serving_label="$serving_label, audit log on"
placement="wrk and nginx share every CPU"
[ "$pin" = 1 ] && placement="wrk pinned to CPU 0, nginx workers to CPU $(($(nproc) - 1))"
module="$build/bindings/nginx/ngx_http_nbx_module.so"
nbx="$build/nbx"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
work="$build/bench-nginx"
data="$work/data-$profiles-$offers"
run="$work/run"

die() { echo "nginx_wrk: $*" >&2; exit 1; }

[ -f "$module" ] || die "$module is missing (nginx-dev installed? make)"
[ -x "$nbx" ] || die "$nbx is missing (make)"
[ -f "$policy" ] || die "no policy $policy"
# wrk and the rest of the bench's packages, as `make bench` installs them
command -v wrk >/dev/null 2>&1 || "$root/scripts/deps.sh" bench ||
    die "wrk is not installed"

# ---------------------------------------------------------------------------
# Data: catalog and store, generated once
# ---------------------------------------------------------------------------
# A store left by an earlier nbx (another format) is generated again.
if [ -f "$data/ready" ] && ! "$nbx" stats --store "$data/store" >/dev/null 2>&1; then
    echo "nginx_wrk: $data/store does not open with this nbx; generating it again" >&2
    rm -f "$data/ready"
fi
if [ ! -f "$data/ready" ]; then
    rm -rf "$data"
    mkdir -p "$data"
    echo "nginx_wrk: generating $profiles profiles and $offers offers in $data" >&2
    "$nbx" gen catalog --offers "$offers" --out "$data/catalog.json"
    "$nbx" gen profiles --count "$profiles" --offers "$offers" --out "$data/profiles.jsonl"
    "$nbx" import profiles "$data/profiles.jsonl" --store "$data/store" >&2
    rm -f "$data/profiles.jsonl"
    touch "$data/ready"
fi

# ---------------------------------------------------------------------------
# nginx: /decide (nbx) and /static (return 200 with a body of the same size)
# ---------------------------------------------------------------------------
rm -rf "$run"
mkdir -p "$run/tmp"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

write_conf() {
    user_line=""
    serve="nbx_policy $policy;"
    [ -n "$deployment" ] && serve="nbx_deployment $deployment;"
    audit_log=""
    [ "$audit" = 1 ] &&
        audit_log="access_log $run/audit.log nbx_audit buffer=256k flush=1s if=\$nbx_decision;"
    [ "$(id -u)" = 0 ] && user_line="user $(stat -c '%U %G' "$data/store");"
    affinity=""
    if [ "$pin" = 1 ]; then
        # the last CPU's bit, once per worker
        mask=1$(python3 -c "print('0' * ($(nproc) - 1))")
        affinity="worker_cpu_affinity$(i=0; while [ $i -lt "$workers" ]; do printf ' %s' "$mask"; i=$((i + 1)); done);"
    fi
    cat >"$run/nginx.conf" <<EOF
load_module $module;
$user_line
worker_processes $workers;
$affinity
pid $run/nginx.pid;
error_log $run/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    log_format nbx_audit escape=none '\$nbx_decision';
    keepalive_requests 1000000;
    client_body_temp_path $run/tmp/body;
    proxy_temp_path $run/tmp/proxy;
    fastcgi_temp_path $run/tmp/fastcgi;
    uwsgi_temp_path $run/tmp/uwsgi;
    scgi_temp_path $run/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location = /decide {
            nbx_store $data/store;
            nbx_catalog $data/catalog.json;
            $serve
            $audit_log
            nbx_customer \$arg_customer;
            nbx_decide;
        }
        location = /static {
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '$1';
        }
    }
}
EOF
}

stop_nginx() {
    if [ -s "$run/nginx.pid" ]; then
        kill "$(cat "$run/nginx.pid")" 2>/dev/null || true
        sleep 0.5
    fi
}
trap stop_nginx EXIT INT TERM

write_conf '{}'
"$nginx" -p "$run" -c "$run/nginx.conf" -q
sleep 0.5

# A real decision, to size the static body like it.
sample=$(curl -sf "http://127.0.0.1:$port/decide?customer=c0000001") ||
    die "the first decision failed; see $run/error.log"
size=$(printf '%s' "$sample" | wc -c)
pad=$(python3 -c "import sys; print('x' * max(0, int(sys.argv[1]) - 14))" "$size")
write_conf "{\"static\":\"$pad\"}"
"$nginx" -p "$run" -c "$run/nginx.conf" -s reload 2>/dev/null
sleep 1

# The store's pages in the page cache and every worker warm.
cat "$data/store/data.mdb" >/dev/null
export NBX_BENCH_CUSTOMERS="$profiles"
# wrk itself, on the first CPU when pinned
wrk() {
    if [ "$pin" = 1 ]; then taskset -c 0 "$wrk_bin" "$@"; else "$wrk_bin" "$@"; fi
}
wrk_bin=$(command -v wrk)
wrk -t "$threads" -c "$connections" -d 5s -s "$root/bench/nginx_wrk.lua" \
    "http://127.0.0.1:$port" >/dev/null

fallbacks=0
i=0
while [ $i -lt 50 ]; do
    c=$(printf 'c%07d' $(( (i * 7919) % profiles + 1 )))
    curl -s "http://127.0.0.1:$port/decide?customer=$c" | grep -q '"fallback": *true' &&
        fallbacks=$((fallbacks + 1))
    i=$((i + 1))
done

run_wrk() { # name, then wrk arguments
    name=$1
    shift
    wrk -t "$threads" -c "$connections" -d "${duration}s" --latency "$@" >"$work/$name.txt"
}

# Was the machine busy? A busy neighbour (another build, a fuzzer) halves
# the figures and is easily taken for a regression: the 1-minute load
# average before the runs (nginx idle, wrk not started) against the cores,
# and the CPU time the hypervisor stole during them, are printed beside the
# figures. cpu_stat prints the jiffies of /proc/stat: total, then steal.
cores=$(nproc)
load_before=$(cut -d' ' -f1 /proc/loadavg)
cpu_stat() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9 }' /proc/stat; }
cpu_before=$(cpu_stat)

# Both sides get the same client: wrk runs nginx_wrk.lua's request() for
# every request (a random customer's URL) for static too, with the path
# /static (which ignores the argument). wrk shares the two cores with
# nginx, and a scripted request costs wrk more CPU than a fixed one: given
# only to nbx, that cost would be counted against nbx.
run_static() { # name
    export NBX_BENCH_PATH=/static
    run_wrk "$1" -s "$root/bench/nginx_wrk.lua" "http://127.0.0.1:$port"
    unset NBX_BENCH_PATH
}
run_wrk nbx -s "$root/bench/nginx_wrk.lua" "http://127.0.0.1:$port"
run_static static
# The same at low concurrency (one connection per worker): latency there is
# the service time, not queueing behind 63 other connections.
low=$workers
connections_main=$connections
connections=$low
run_wrk nbx_low -s "$root/bench/nginx_wrk.lua" "http://127.0.0.1:$port"
run_static static_low
connections=$connections_main
cpu_after=$(cpu_stat)
load_after=$(cut -d' ' -f1 /proc/loadavg)

# wrk prints "Requests/sec: N" and, with --latency, "99%  1.23ms".
rps() { awk '/^Requests\/sec:/ { print $2 }' "$work/$1.txt"; }
row() { printf '%11s  %11s  %10s  %10s  %7s' "$2" "$(rps "$1")" "$(pct "$1" 50%)" \
    "$(pct "$1" 99%)" "$(errors "$1")"; }
pct() {
    awk -v p="$2" '$1 == p {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000
        printf "%.3f\n", v }' "$work/$1.txt"
}
p99() { pct "$1" 99%; }
errors() {
    awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' \
        "$work/$1.txt"
}

nbx_rps=$(rps nbx)
static_rps=$(rps static)
nbx_p99=$(p99 nbx)

cat <<EOF

nbx on nginx: $workers workers, $profiles profiles, $offers offers, $serving_label
wrk: $threads threads, $connections connections, ${duration}s per run, random customers
CPUs: $placement
response size: $size bytes (the static body is padded to the same size)

                 connections   requests/s    p50 (ms)    p99 (ms)   errors
  nbx_decide     $(row nbx "$connections")
  static 200     $(row static "$connections")
  nbx_decide     $(row nbx_low "$low")
  static 200     $(row static_low "$low")

EOF

python3 - "$nbx_rps" "$static_rps" "$nbx_p99" "$(p99 static)" "$fallbacks" <<'EOF'
import sys
nbx, static, p99, static_p99 = map(float, sys.argv[1:5])
fallbacks = int(sys.argv[5])
ratio = nbx / static if static else 0.0
p99_ratio = p99 / static_p99 if static_p99 else 0.0
# issue 11: at least 0.85 of static's requests/s, p99 at most 1.5x static's
print("  nbx / static   %.2f   (target >= 0.85: %s)" % (ratio, "met" if ratio >= 0.85 else "MISSED"))
print("  nbx p99        %.3f ms, %.2fx static's (target <= 1.5x: %s)"
      % (p99, p99_ratio, "met" if p99_ratio <= 1.5 else "MISSED"))
print("  fallbacks in 50 sampled decisions: %d" % fallbacks)
EOF
# The static figure against this machine's earlier quiet runs of the same
# settings (kept in $work): static nginx does not change with nbx, so a
# static rate well below its usual one says the machine, not nbx, was slow.
# (static requests for random URLs through the script since 2026-12-02:
# a history of its own)
history="$work/static-history-random-$workers-$threads-$connections-pin$pin"
python3 - "$cores" "$load_before" "$load_after" "$cpu_before" "$cpu_after" "$static_rps" \
    "$history" <<'EOF'
import statistics, sys
cores, load_before, load_after = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
t0, s0 = map(int, sys.argv[4].split())
t1, s1 = map(int, sys.argv[5].split())
static, history = float(sys.argv[6]), sys.argv[7]
steal = 100.0 * (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
try:
    with open(history) as f:
        earlier = [float(x) for x in f.read().split()]
except OSError:
    earlier = []
busy = []
if load_before > cores:
    busy.append("load average %.2f before the runs, above the %d cores" % (load_before, cores))
if steal >= 5.0:
    busy.append("%.1f %% of the CPU time stolen by the hypervisor" % steal)
usual = statistics.median(earlier) if earlier else 0.0
if usual and static < 0.85 * usual:
    busy.append("static 200 at %.2fx its median of %d earlier quiet runs here"
                % (static / usual, len(earlier)))
print()
print("  machine        %d cores; load average %.2f before the runs, %.2f after (ours "
      "included); steal %.1f %%" % (cores, load_before, load_after, steal))
if usual:
    print("  static 200     %.2fx its median of %d earlier quiet runs here (%.0f requests/s)"
          % (static / usual, len(earlier), usual))
if busy:
    print("  BUSY MACHINE:  " + "; ".join(busy))
    print("                 the figures above are not comparable with a quiet run: run again")
else:
    print("  machine quiet during the runs")
    # only quiet runs make the reference, so a busy run does not lower it
    with open(history, "a") as f:
        f.write("%.2f\n" % static)
EOF
echo
echo "raw wrk output: $work/nbx.txt, $work/static.txt; nginx log: $run/error.log"
