#!/usr/bin/python3
"""Decide for every customer of a store on a Dask cluster: one task per shard.

Each task opens its own nbx engine (read-only) in its worker process and
decides for the customers of its shard -- those whose xxh64(id, seed 0)
mod N is the task's index, the partition of `nbx batch --shard I/N` -- on
the library's threads, writing part-IIIII-of-NNNNN.jsonl. Together the parts
hold every customer of the store exactly once; with --merge they are merged
into one file in id order, the output of a single `nbx batch --all` run
(decision ids aside).

Every task uses the same clock (--as-of, else the time the job starts), so
a retried task decides exactly as the first attempt did; parts are written
to a temporary name and renamed, so a retry replaces a half-written part.

The store directory must be readable by every worker (the same machine, or
a copy of the store on each worker host at the same path).

    PYTHONPATH=bindings/python NBX_LIBRARY=build/libnbx.so.0 \\
    /usr/bin/python3 bindings/python/examples/dask_batch.py \\
        --store store --catalog catalog.json --policy policies/margin_per_session.lua \\
        --shards 8 --workers 2 --out-dir parts --merge decisions.jsonl

--scheduler tcp://HOST:8786 uses an existing cluster instead of starting a
LocalCluster of --workers processes on 127.0.0.1.
"""
import argparse
import heapq
import json
import os
import sys
import time


def decide_shard(store, catalog, policy, shard, shards, out_dir, as_of, threads):
    """One Dask task: decide for shard `shard` of `shards`; returns counts."""
    import nbx  # imported in the worker process: engines do not survive fork()

    path = os.path.join(out_dir, f"part-{shard:05d}-of-{shards:05d}.jsonl")
    tmp = f"{path}.tmp-{os.getpid()}"
    counts = {"shard": shard, "path": path, "customers": 0, "fallbacks": 0, "anonymous": 0,
              "actions": 0, "expected_margin": 0.0}
    started = time.monotonic()
    with nbx.Engine(store=store, catalog=catalog, policy=policy, readonly=True) as engine, \
            open(tmp, "w", encoding="utf-8") as out:
        # customer_ids() walks the store in id order; batch(shard=...) skips
        # the other shards' ids before any decision is made.
        for text in engine.batch(engine.customer_ids(), shard=(shard, shards), threads=threads,
                                 as_of=as_of, raw=True):
            out.write(text)  # nbx's own JSON, byte for byte
            out.write("\n")
            result = json.loads(text)
            counts["customers"] += 1
            counts["fallbacks"] += result["fallback"]
            counts["anonymous"] += result["anonymous"]
            counts["actions"] += len(result["actions"])
            counts["expected_margin"] += sum(a["expected_margin"] for a in result["actions"])
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    counts["seconds"] = time.monotonic() - started
    return counts


def merge_parts(paths, dest):
    """Merge shard outputs (each in id order) into one file in id order."""
    files = [open(p, encoding="utf-8") for p in paths]
    try:
        keyed = [((json.loads(line)["customer"], line) for line in f) for f in files]
        with open(dest, "w", encoding="utf-8") as out:
            for _, line in heapq.merge(*keyed):
                out.write(line)
    finally:
        for f in files:
            f.close()


def run(store, catalog, policy, shards, out_dir, as_of=None, workers=2, threads=1,
        scheduler=None, merge=None):
    """Run the job; returns the per-shard counts. Usable from other code."""
    from dask.distributed import Client, LocalCluster

    import nbx

    os.makedirs(out_dir, exist_ok=True)
    # One clock for every task, fixed here: retries and stragglers decide as
    # the first attempt did.
    as_of_ms = nbx.as_of_ms(as_of) or int(time.time() * 1000)
    paths = [os.path.abspath(p) for p in (store, catalog, policy)]
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(decide_shard, *paths, i, shards, os.path.abspath(out_dir),
                                 f"{as_of_ms / 1000:.3f}", threads, key=f"nbx-shard-{i}-of-{shards}",
                                 pure=False)
                   for i in range(shards)]
        results = client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if merge:
        merge_parts([r["path"] for r in results], merge)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--catalog", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--out-dir", required=True, help="where the part files go")
    p.add_argument("--shards", type=int, default=8, help="tasks (default 8)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--threads", type=int, default=1, help="nbx threads per task (default 1)")
    p.add_argument("--as-of", help="the decisions' clock (default: when the job starts)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler")
    p.add_argument("--merge", help="also merge the parts into this file, in id order")
    args = p.parse_args(argv)
    if args.shards < 1:
        p.error("--shards must be at least 1")
    started = time.monotonic()
    results = run(args.store, args.catalog, args.policy, args.shards, args.out_dir, args.as_of,
                  args.workers, args.threads, args.scheduler, args.merge)
    elapsed = time.monotonic() - started
    total = sum(r["customers"] for r in results)
    for r in results:
        print(f"shard {r['shard']}: {r['customers']} customers in {r['seconds']:.2f} s "
              f"-> {r['path']}", file=sys.stderr)
    print(json.dumps({"shards": len(results), "customers": total,
                      "fallbacks": sum(r["fallbacks"] for r in results),
                      "anonymous": sum(r["anonymous"] for r in results),
                      "actions": sum(r["actions"] for r in results),
                      "expected_margin": sum(r["expected_margin"] for r in results),
                      "elapsed_s": round(elapsed, 3),
                      "rate": round(total / elapsed, 1) if elapsed > 0 else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
