#!/bin/sh
# Start or stop nginx with the nbx module on 127.0.0.1 serving a store.
#
# Usage: scripts/nginx_demo.sh start|stop|status [BUILD_DIR]
#
# Environment (all optional):
#   NBX_DEMO_STORE    store directory    (default BUILD_DIR/demo/store)
#   NBX_DEMO_CATALOG  catalog JSON file  (default BUILD_DIR/demo/catalog.json)
#   NBX_DEMO_POLICY   policy Lua file    (default policies/margin_per_session.lua)
#   NBX_DEMO_PORT     port               (default 8080)
#
# When the store or the catalog is missing, a small one is generated with
# the nbx CLI (1000 profiles, 20 offers). nginx runs from BUILD_DIR/nginx-demo
# (configuration, pid, logs), its workers as the owner of the store
# directory, since they write exposure counters to it.
set -eu

cmd="${1:-}"
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${2:-$root/build}" 2>/dev/null && pwd) || {
    echo "nginx_demo: no build directory ${2:-$root/build}; run make first" >&2
    exit 1
}
run="$build/nginx-demo"
port="${NBX_DEMO_PORT:-8080}"
store="${NBX_DEMO_STORE:-$build/demo/store}"
catalog="${NBX_DEMO_CATALOG:-$build/demo/catalog.json}"
policy="${NBX_DEMO_POLICY:-$root/policies/margin_per_session.lua}"
module="$build/bindings/nginx/ngx_http_nbx_module.so"
nbx="$build/nbx"
nginx=$(command -v nginx || echo /usr/sbin/nginx)

master_pid() {
    [ -s "$run/nginx.pid" ] || return 1
    pid=$(cat "$run/nginx.pid")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

stop() {
    if pid=$(master_pid); then
        "$nginx" -p "$run" -c "$run/nginx.conf" -s quit 2>/dev/null || kill "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        echo "nginx_demo: stopped nginx (pid $pid)"
    else
        echo "nginx_demo: not running"
    fi
}

make_data() {
    [ -x "$nbx" ] || { echo "nginx_demo: $nbx is missing; run make first" >&2; exit 1; }
    mkdir -p "$(dirname "$store")" "$(dirname "$catalog")"
    if [ ! -f "$catalog" ]; then
        echo "nginx_demo: generating a catalog in $catalog"
        "$nbx" gen catalog --offers 20 --out "$catalog"
    fi
    if [ ! -f "$store/data.mdb" ]; then
        echo "nginx_demo: generating 1000 profiles into $store"
        "$nbx" gen profiles --count 1000 --offers 20 --out "$run/profiles.jsonl"
        "$nbx" import profiles "$run/profiles.jsonl" --store "$store"
    fi
}

write_conf() {
    owner=$(stat -c %U "$store")
    group=$(stat -c %G "$store")
    user_line=""
    [ "$(id -u)" = 0 ] && user_line="user $owner $group;"
    cat >"$run/nginx.conf" <<EOF
# written by scripts/nginx_demo.sh; see docs/nginx.md
load_module $module;
$user_line
worker_processes 2;
pid $run/nginx.pid;
error_log $run/error.log info;
events { worker_connections 1024; }
http {
    access_log $run/access.log;
    client_body_temp_path $run/tmp/body;
    proxy_temp_path $run/tmp/proxy;
    fastcgi_temp_path $run/tmp/fastcgi;
    uwsgi_temp_path $run/tmp/uwsgi;
    scgi_temp_path $run/tmp/scgi;

    server {
        listen 127.0.0.1:$port;

        nbx_store   $store;
        nbx_catalog $catalog;
        nbx_policy  $policy;

        location = /decide {
            nbx_customer \$arg_customer;
            nbx_session channel \$arg_channel;
            nbx_session device \$http_x_device;
            nbx_decide;
        }
        location = /explain {
            nbx_customer \$arg_customer;
            nbx_explain on;
            nbx_decide;
        }
        location = /event {
            nbx_event;
        }
    }
}
EOF
}

start() {
    # A running demo may map a store that was regenerated since: restart.
    if master_pid >/dev/null; then
        stop
    fi
    [ -f "$module" ] || {
        echo "nginx_demo: $module is missing (is nginx-dev installed? run make)" >&2
        exit 1
    }
    mkdir -p "$run/tmp"
    make_data
    [ -f "$policy" ] || { echo "nginx_demo: no policy $policy" >&2; exit 1; }
    write_conf
    # workers reach the store and the demo files through these directories
    chmod o+x "$run" 2>/dev/null || true
    "$nginx" -p "$run" -c "$run/nginx.conf" -t -q || {
        echo "nginx_demo: the configuration was refused; see above" >&2
        exit 1
    }
    "$nginx" -p "$run" -c "$run/nginx.conf"
    i=0
    until curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 50 ]; then
            echo "nginx_demo: nginx did not come up; see $run/error.log" >&2
            tail -n 20 "$run/error.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    customer=$("$nbx" export profiles --store "$store" 2>/dev/null | head -n 1 |
        sed -n 's/.*"id": *"\([^"]*\)".*/\1/p') || true
    customer="${customer:-c0000001}"
    offer=$(python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))
print(next((o["id"] for o in c["offers"] if "hero" in o["placements"]
            and o.get("kind", "offer") == "offer"), "OFFER"))' "$catalog" 2>/dev/null) ||
        offer=OFFER
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    cat <<EOF

nbx on nginx is serving $store on http://127.0.0.1:$port (pid $(cat "$run/nginx.pid"))

  # a decision (placements are optional: all by default)
  curl -s 'http://127.0.0.1:$port/decide?customer=$customer&placement=hero&placement=recs&channel=web'

  # the same with every candidate and why it was excluded
  curl -s 'http://127.0.0.1:$port/explain?customer=$customer&placement=hero'

  # record an impression (204; frequency caps count it on the next decision)
  curl -s -i -X POST http://127.0.0.1:$port/event -d '{"event_id":"demo-1","customer":"$customer","type":"impression","offer":"$offer","placement":"hero","ts":"$now"}'

  logs:    $run/error.log, $run/access.log
  config:  $run/nginx.conf
  stop:    $0 stop $build

EOF
}

case "$cmd" in
start) start ;;
stop) stop ;;
status)
    if pid=$(master_pid); then echo "running (pid $pid) on 127.0.0.1:$port"; else
        echo "not running"; exit 1; fi ;;
*)
    echo "usage: $0 start|stop|status [BUILD_DIR]" >&2
    exit 2
    ;;
esac
