"""The load of bench/nginx_hostile.sh: static pages timed while hostile
decisions keep the same nginx workers busy.

Usage: nginx_hostile.py PORT SECONDS CONCURRENT HOSTILE_PATH...

First SECONDS/4 of static requests on an idle server (the baseline), then
SECONDS with CONCURRENT processes each sending hostile decisions back to
back (process i uses HOSTILE_PATH[i mod n]) while the main thread fetches the
static page every 10 ms. Every request opens a connection of its own, as a
new visitor would, so nginx hands it to whichever worker accepts it.
Prints the latencies (ms) and how the hostile decisions ended; exits 1 if
a request failed or a hostile decision did not fall back.
"""
import collections
import http.client
import json
import multiprocessing
import statistics
import sys
import time

STATIC_PAUSE_S = 0.01


def get(port, path):
    """(status, body bytes, seconds) of one GET on a new connection."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    return r.status, body, time.monotonic() - t0


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]


def row(name, seconds):
    ms = [s * 1000.0 for s in seconds]
    return "  %-28s %7d  %9.3f  %9.3f  %9.3f" % (name, len(ms), statistics.median(ms),
                                                  percentile(ms, 99), max(ms))


def time_static(port, until):
    latencies = []
    while time.monotonic() < until:
        status, _, seconds = get(port, "/static")
        if status != 200:
            raise SystemExit("nginx_hostile: the static page answered %d" % status)
        latencies.append(seconds)
        time.sleep(STATIC_PAUSE_S)
    return latencies


def attack(port, path, stop, results):
    """Hostile decisions back to back until stop; puts ([(seconds, how it
    ended)], [failures]) on results."""
    done, failed = [], []
    while not stop.is_set():
        try:
            status, body, took = get(port, path)
        except OSError as e:
            failed.append("%s: %s" % (path, e))
            continue
        ended = "status %d" % status
        if status == 200:
            d = json.loads(body)
            ended = ("fallback: " + d["error"]["kind"]) if d.get("fallback") else "normal"
        done.append((took, ended))
    results.put((done, failed))


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    port, seconds, concurrent = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    paths = sys.argv[4:]

    idle = time_static(port, time.monotonic() + seconds / 4)

    # the attackers are processes: a thread of this one would share its
    # interpreter lock with the timing of the static page
    stop = multiprocessing.Event()
    results = multiprocessing.Queue()
    attackers = [multiprocessing.Process(target=attack, args=(port, paths[i % len(paths)], stop,
                                                             results), daemon=True)
                 for i in range(concurrent)]
    for a in attackers:
        a.start()
    time.sleep(0.2)  # the hostile decisions reach the workers first
    loaded = time_static(port, time.monotonic() + seconds)
    stop.set()
    hostile, problems = [], []
    for _ in attackers:
        done, failed = results.get(timeout=180)
        hostile += done
        problems += failed
    for a in attackers:
        a.join(10)

    print("                                 requests   p50 (ms)   p99 (ms)  worst (ms)")
    print(row("static, idle", idle))
    print(row("static, behind %d hostile" % concurrent, loaded))
    print(row("hostile decisions", [took for took, _ in hostile]))
    ended = collections.Counter(e for _, e in hostile)
    print()
    print("  hostile decisions ended: " + ", ".join("%s %d" % kv for kv in sorted(ended.items())))
    p99 = percentile(loaded, 99) * 1000.0
    print("  static p99 behind %d hostile decisions: %.3f ms (target < 50 ms: %s; worst %.3f ms)"
          % (concurrent, p99, "met" if p99 < 50.0 else "MISSED", max(loaded) * 1000.0))
    bad = [e for e in ended if not e.startswith("fallback")]
    if problems or bad:
        print("nginx_hostile: %d requests failed, %d hostile decisions did not fall back%s"
              % (len(problems), sum(ended[e] for e in bad),
                 (": " + problems[0]) if problems else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
