#!/usr/bin/python3
"""What the Python binding costs per decision over the C call.

    PYTHONPATH=bindings/python NBX_LIBRARY=build/libnbx.so.0 \\
        /usr/bin/python3 bench/bench_python.py --store DIR --catalog FILE --policy FILE \\
        [--customers N] [--rounds R]

Over the first N ids of the store, in one process. The machine is shared
and noisy, so the C call and decide() are timed on the same chunks of 200
customers, one after the other in an order that rotates, and the overhead is
the median over chunks of the difference; batch() is the best of R rounds.
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
import statistics
import sys
import time

import nbx
from nbx import _native as N


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

        def c_calls(chunk):
            t = time.perf_counter()
            for c in chunk:
                req.customer = c
                if N.nbx_decide(ctx, ctypes.byref(req), ctypes.byref(result)) != 0:
                    raise RuntimeError(N.nbx_ctx_errmsg(ctx))
                N.nbx_result_json(result, ctypes.byref(size))
            return (time.perf_counter() - t) / len(chunk)

        seconds = as_of / 1000

        def decides(chunk, raw):
            t = time.perf_counter()
            for c in chunk:
                engine.decide(c, as_of=seconds, raw=raw)
            return (time.perf_counter() - t) / len(chunk)

        def batch(raw):
            def run():
                t = time.perf_counter()
                k = sum(1 for _ in engine.batch(ids, threads=1, as_of=seconds, raw=raw))
                assert k == n
                return (time.perf_counter() - t) / n
            return run

        bare = min(bare_calls() for _ in range(args.rounds))
        chunk = 200
        cs, ds, drs = [], [], []
        for k, at in enumerate(range(0, n - chunk + 1, chunk)):
            enc, txt = encoded[at:at + chunk], ids[at:at + chunk]
            runs = [lambda: cs.append(c_calls(enc)),
                    lambda: ds.append(decides(txt, False)),
                    lambda: drs.append(decides(txt, True))]
            for m in range(3):
                runs[(k + m) % 3]()
        b = min(batch(False)() for _ in range(args.rounds))
        r = min(batch(True)() for _ in range(args.rounds))

    med = statistics.median
    c = med(cs)
    d, dr = med(ds), med(drs)
    d_over = med(x - y for x, y in zip(ds, cs))
    dr_over = med(x - y for x, y in zip(drs, cs))
    c_decision = c - 2 * bare  # two foreign calls per decision in c_calls
    d_over += 2 * bare
    dr_over += 2 * bare
    us = 1e6
    print(f"bench_python: {n} customers, medians over {len(cs)} chunks of {chunk}, libnbx {nbx.version()}")
    print(f"  bare ctypes call             {bare * us:7.2f} us")
    print(f"  C decision (nbx_decide)      {c_decision * us:7.2f} us")
    print(f"  Engine.decide()              {d * us:7.2f} us   overhead {d_over * us:.2f} us")
    print(f"  Engine.decide(raw=True)      {dr * us:7.2f} us   overhead {dr_over * us:.2f} us")
    print(f"  Engine.batch(), dicts        {b * us:7.2f} us/item (1 worker thread, best of {args.rounds})")
    print(f"  Engine.batch(raw=True)       {r * us:7.2f} us/item (1 worker thread, best of {args.rounds})")
    print(json.dumps({"customers": n, "c_decision_us": round(c_decision * us, 2),
                      "decide_us": round(d * us, 2),
                      "decide_overhead_us": round(d_over * us, 2),
                      "decide_raw_us": round(dr * us, 2),
                      "decide_raw_overhead_us": round(dr_over * us, 2),
                      "batch_dict_us": round(b * us, 2), "batch_raw_us": round(r * us, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
