# Shared by the nginx benchmarks (nginx_wrk.sh, nginx_hostile.sh); sourced,
# not run. The caller calls bench_binaries first and sets `run` (a fresh
# directory for nginx's configuration, pid, logs and temp files) before
# starting nginx.

die() { echo "$bench_name: $*" >&2; exit 1; }

# module, nbx and nginx for BUILD_DIR, checked; NAME prefixes messages.
bench_binaries() { # name, build dir
    bench_name=$1
    module="$2/bindings/nginx/ngx_http_nbx_module.so"
    nbx="$2/nbx"
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    [ -f "$module" ] || die "$module is missing (nginx-dev installed? make)"
    [ -x "$nbx" ] || die "$nbx is missing (make)"
}

# A catalog of OFFERS offers and a store of PROFILES profiles in DIR (nbx
# gen, seed 1, and nbx import), made once and kept for the next run; a
# store an earlier nbx wrote in another format is made again.
bench_data() { # dir, profiles, offers
    if [ -f "$1/ready" ] && ! "$nbx" stats --store "$1/store" >/dev/null 2>&1; then
        echo "$bench_name: $1/store does not open with this nbx; generating it again" >&2
        rm -f "$1/ready"
    fi
    [ -f "$1/ready" ] && return
    rm -rf "$1"
    mkdir -p "$1"
    echo "$bench_name: generating $2 profiles and $3 offers in $1" >&2
    "$nbx" gen catalog --offers "$3" --out "$1/catalog.json"
    "$nbx" gen profiles --count "$2" --offers "$3" --out "$1/profiles.jsonl"
    "$nbx" import profiles "$1/profiles.jsonl" --store "$1/store" >&2
    rm -f "$1/profiles.jsonl"
    touch "$1/ready"
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The configuration up to the inside of the http block: the module, WORKERS
# worker processes, MAIN_LINE if given (another main-context directive) and
# temp paths under $run. Run as root, the workers run as the owner of
# OWNED_PATH (the store) so they can open it. The caller writes its servers
# and the closing brace.
nginx_conf_head() { # module, workers, owned path[, main line]
    user_line=""
    [ "$(id -u)" = 0 ] && user_line="user $(stat -c '%U %G' "$3");"
    cat <<EOF
load_module $1;
$user_line
worker_processes $2;
${4:-}
pid $run/nginx.pid;
error_log $run/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $run/tmp/body;
    proxy_temp_path $run/tmp/proxy;
    fastcgi_temp_path $run/tmp/fastcgi;
    uwsgi_temp_path $run/tmp/uwsgi;
    scgi_temp_path $run/tmp/scgi;
EOF
}

stop_nginx() {
    if [ -s "$run/nginx.pid" ]; then
        kill "$(cat "$run/nginx.pid")" 2>/dev/null || true
        sleep 0.5
    fi
}

# Was the machine busy? A busy neighbour (another build, a fuzzer) halves
# the figures and is easily taken for a regression: the 1-minute load
# average before the runs (nginx idle, no client started) against the
# cores, and the CPU time the hypervisor stole during them, are printed
# beside the figures. machine_before and machine_after bracket the runs;
# cpu_stat prints the jiffies of /proc/stat: total, then steal.
cpu_stat() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9 }' /proc/stat; }
machine_before() {
    cores=$(nproc)
    load_before=$(cut -d' ' -f1 /proc/loadavg)
    cpu_before=$(cpu_stat)
}
machine_after() {
    cpu_after=$(cpu_stat)
    load_after=$(cut -d' ' -f1 /proc/loadavg)
}

# The machine line, and BUSY MACHINE with its reasons when the load before
# the runs was above the cores or 5 % or more of the CPU time was stolen.
# Further reasons (one a line) may come on standard input. Exit status 0
# when quiet, 1 when busy.
machine_report() {
    python3 -c '
import sys
cores, load_before, load_after = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
t0, s0 = map(int, sys.argv[4].split())
t1, s1 = map(int, sys.argv[5].split())
steal = 100.0 * (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
busy = []
if load_before > cores:
    busy.append("load average %.2f before the runs, above the %d cores" % (load_before, cores))
if steal >= 5.0:
    busy.append("%.1f %% of the CPU time stolen by the hypervisor" % steal)
busy += [line.strip() for line in sys.stdin if line.strip()]
print("  machine        %d cores; load average %.2f before the runs, %.2f after (ours "
      "included); steal %.1f %%" % (cores, load_before, load_after, steal))
if busy:
    print("  BUSY MACHINE:  " + "; ".join(busy))
    print("                 the figures above are not comparable with a quiet run: run again")
else:
    print("  machine quiet during the runs")
sys.exit(1 if busy else 0)
' "$cores" "$load_before" "$load_after" "$cpu_before" "$cpu_after"
}
