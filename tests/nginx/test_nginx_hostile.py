"""Hostile policies (tests/policies/*.lua) served by nginx: each one that
loads gives the fallback decision and no worker dies (pids unchanged); each
one the sandbox refuses to load is refused by `nginx -t`.

Each file's first line says what it must produce: `-- expect: ...`."""

import os
import re
import unittest

import nbxnginx as nx
from nbxnginx import request

POLICY_DIR = os.path.join(nx.SOURCE_DIR, "tests", "policies")
KINDS = ("runtime", "timeout", "memory", "result")


def hostile_policies():
    """[(name, path, expect)] for every tests/policies/*.lua."""
    out = []
    if os.path.isdir(POLICY_DIR):
        for name in sorted(os.listdir(POLICY_DIR)):
            if not name.endswith(".lua"):
                continue
            path = os.path.join(POLICY_DIR, name)
            with open(path, errors="replace") as f:
                first = f.readline()
            m = re.match(r"\s*--\s*expect:\s*(.*)", first)
            if not m:
                raise AssertionError("%s: the first line is not '-- expect: ...'" % path)
            out.append((name[:-4], path, m.group(1).strip().lower()))
    return out


def refused_at_load(expect):
    return re.search(r"\b(load|reject|refuse|compile|check|syntax)", expect) is not None \
        and "fallback" not in expect


class HostileTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.policies = hostile_policies()
        if not self.policies:
            self.skipTest("no hostile policies in %s yet" % POLICY_DIR)
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.good = nx.write(self.path("good.lua"),
                             nx.SIMPLE_POLICY % dict(name="good", score="1.0"))
        self.store = nx.make_store(self.path("store"),
                                   [nx.profile("c%d" % i) for i in range(1, 5)])
        nx.give_to_workers(self.store)

    def test_hostile_policies_fall_back_and_workers_survive(self):
        serving = [(n, p, e) for n, p, e in self.policies if not refused_at_load(e)]
        if not serving:
            self.skipTest("every hostile policy is refused at load")
        locations = "".join("""
            location = /p/%s {
                nbx_policy %s;
                nbx_customer $arg_customer;
                nbx_decide;
            }""" % (name, path) for name, path, _ in serving)
        server = self.nginx("""
            server {
                listen 127.0.0.1:%%(port)s;
                nbx_store %s;
                nbx_catalog %s;
                nbx_time_limit 2ms;
                nbx_memory_limit 16m;
                location = /good {
                    nbx_policy %s;
                    nbx_customer $arg_customer;
                    nbx_decide;
                }
                %s
            }""" % (self.store, self.catalog, self.good, locations))
        pids = server.worker_pids()
        self.assertEqual(len(pids), 2)
        for name, path, expect in serving:
            for i in range(6):  # enough to reach both workers, and repeat
                r = request(server.url("/p/%s?customer=c%d&placement=hero&placement=recs"
                                       % (name, i % 4 + 1)), timeout=30)
                self.assertStatus(r, 200, "%s (expect: %s)" % (name, expect))
                d = r.json()
                if "fallback" in expect:
                    self.assertIs(d["fallback"], True, "%s: %s" % (name, d))
                    kind = d.get("error", {}).get("kind")
                    for k in KINDS:
                        if k in expect:
                            self.assertEqual(kind, k, "%s: %s" % (name, d))
                self.assertEqual(server.worker_pids(), pids,
                                 "a worker died serving %s" % name)
            # the worker still decides normally afterwards
            d = request(server.url("/good?customer=c1")).json()
            self.assertIs(d["fallback"], False, "after %s: %s" % (name, d))
        self.assertEqual(server.worker_pids(), pids)

    def test_policies_the_sandbox_refuses_fail_nginx_t(self):
        refused = [(n, p, e) for n, p, e in self.policies if refused_at_load(e)]
        if not refused:
            self.skipTest("no hostile policy is refused at load")
        for name, path, expect in refused:
            server = self.nginx("""
                server {
                    listen 127.0.0.1:%%(port)s;
                    location / {
                        nbx_store %s; nbx_catalog %s; nbx_policy %s;
                        nbx_customer $arg_customer;
                        nbx_decide;
                    }
                }""" % (self.store, self.catalog, path), name="t-" + name, start=False)
            ok, out = server.test_conf()
            self.assertFalse(ok, "%s (expect: %s) was accepted:\n%s" % (name, expect, out))
            self.assertIn(os.path.basename(path), out)


if __name__ == "__main__":
    unittest.main()
