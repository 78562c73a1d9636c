#!/usr/bin/python3
"""What the Python binding costs per decision over the C call.

    PYTHONPATH=bindings/python NBX_LIBRARY=build/libnbx.so.0 \\
        /usr/bin/python3 bench/bench_python.py --store DIR --catalog FILE --policy FILE \\
        [--customers N] [--rounds R]

Over the first N ids of the store, best of R interleaved rounds (the
machine is shared and noisy), in one process:
  c call       nbx_decide() through ctypes with a request built once, minus
               the cost of a bare ctypes call: the C decision itself;
  decide()     Engine.decide(customer): request built from Python values,
               result JSON parsed into a dict (and raw=True: the JSON text);
  batch()      Engine.batch(ids, threads=1) yielding dicts, and raw=True
               yielding the JSON text (the decisions run on a worker thread;
               this is wall time per item on the consuming thread).
Prints microseconds per decision and the binding's overhead:
decide() minus the C decision.
"""
import argparse
import ctypes
import json
import sys
import time

import nbx
from nbx import _native as N


def best(fn, rounds):
    return min(fn() for _ in range(rounds))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--catalog", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--customers", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    with nbx.Engine(store=args.store, catalog=args.catalog, policy=args.policy,
                    readonly=True) as engine:
        ids = []
        for cid in engine.customer_ids():
            ids.append(cid)
            if len(ids) == args.customers:
                break
        n = len(ids)
        as_of = nbx.as_of_ms(None) or int(time.time() * 1000)
        encoded = [c.encode() for c in ids]
        ctx = engine._ctx()
        req = N.Request()
        req.size = ctypes.sizeof(N.Request)
        req.now_ms = as_of
        result = ctypes.c_void_p()
        size = ctypes.c_size_t()
        for c in encoded[:2000]:  # warm up
            engine.decide(c.decode(), as_of=as_of / 1000)

        def bare_calls():
            t = time.perf_counter()
            for _ in range(n):
                N.nbx_batch_space(None)
            return (time.perf_counter() - t) / n

        def c_calls():
            t = time.perf_counter()
            for c in encoded:
                req.customer = c
                if N.nbx_decide(ctx, ctypes.byref(req), ctypes.byref(result)) != 0:
                    raise RuntimeError(N.nbx_ctx_errmsg(ctx))
                N.nbx_result_json(result, ctypes.byref(size))
            return (time.perf_counter() - t) / n

        seconds = as_of / 1000

        def decides(raw):
            def run():
                t = time.perf_counter()
                for c in ids:
                    engine.decide(c, as_of=seconds, raw=raw)
                return (time.perf_counter() - t) / n
            return run

        def batch(raw):
            def run():
                t = time.perf_counter()
                k = sum(1 for _ in engine.batch(ids, threads=1, as_of=seconds, raw=raw))
                assert k == n
                return (time.perf_counter() - t) / n
            return run

        bare, c, d, dr, b, r = 1e9, 1e9, 1e9, 1e9, 1e9, 1e9
        for _ in range(args.rounds):
            bare = min(bare, bare_calls())
            c = min(c, c_calls())
            d = min(d, decides(False)())
            dr = min(dr, decides(True)())
            b = min(b, batch(False)())
            r = min(r, batch(True)())

    c_decision = c - 2 * bare  # two foreign calls per decision in c_calls
    us = 1e6
    print(f"bench_python: {n} customers, best of {args.rounds} rounds, libnbx {nbx.version()}")
    print(f"  bare ctypes call             {bare * us:7.2f} us")
    print(f"  C decision (nbx_decide)      {c_decision * us:7.2f} us")
    print(f"  Engine.decide()              {d * us:7.2f} us   overhead {(d - c_decision) * us:.2f} us")
    print(f"  Engine.decide(raw=True)      {dr * us:7.2f} us   overhead {(dr - c_decision) * us:.2f} us")
    print(f"  Engine.batch(), dicts        {b * us:7.2f} us/item (1 worker thread)")
    print(f"  Engine.batch(raw=True)       {r * us:7.2f} us/item (1 worker thread)")
    print(json.dumps({"customers": n, "c_decision_us": round(c_decision * us, 2),
                      "decide_us": round(d * us, 2),
                      "decide_overhead_us": round((d - c_decision) * us, 2),
                      "decide_raw_us": round(dr * us, 2),
                      "decide_raw_overhead_us": round((dr - c_decision) * us, 2),
                      "batch_dict_us": round(b * us, 2), "batch_raw_us": round(r * us, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
