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

# `-- expect: ok` | `-- expect: fallback KIND[: MESSAGE]` |
# `-- expect: load_error: MESSAGE`; KIND is runtime, timeout, memory, result
# or limit (timeout or memory)
EXPECT = re.compile(r"--\s*expect:\s*(?:(?P<ok>ok)"
                    r"|fallback\s+(?P<kind>\w+)(?::\s*(?P<fmsg>.*?))?"
                    r"|load_error:\s*(?P<lmsg>.*?))\s*$")


class Expect:
    def __init__(self, line):
        m = EXPECT.match(line.strip())
        if not m:
            raise ValueError(line)
        self.text = line.strip()
        self.load_error = m.group("lmsg")
        self.kind = m.group("kind")
        self.message = m.group("fmsg") or m.group("lmsg") or None


# The limits a location gives a policy. A test means one limit; on a slow or
# busy machine (or with the other LuaJIT) another may trip first, so the
# limits it does not mean get room: a runtime error that builds a 1 MB
# message, or an honest policy, must not meet the 2 ms default time limit
# there; a time bomb that allocates must not meet the memory limit.
ROOMY_TIME = "nbx_time_limit 5s;"
ROOMY_MEMORY = "nbx_memory_limit 512m;"


# Load errors that are a limit: a load bomb meets either first.
LOAD_LIMITS = ("memory limit", "load time limit")


def limits_for(expect):
    """nginx directives for a policy with this expectation: room for the
    limits it does not test; the defaults for the one it does."""
    if expect.kind == "timeout":
        return ROOMY_MEMORY
    if expect.kind == "limit":  # either may trip: the defaults
        return ""
    return ROOMY_TIME  # ok, runtime, result, memory


def hostile_policies():
    """[(name, path, Expect)] for every tests/policies/*.lua."""
    out = []
    if os.path.isdir(POLICY_DIR):
        for name in sorted(os.listdir(POLICY_DIR)):
            if not name.endswith(".lua"):
                continue
            path = os.path.join(POLICY_DIR, name)
            with open(path, errors="replace") as f:
                first = f.readline()
            try:
                out.append((name[:-4], path, Expect(first)))
            except ValueError:
                raise AssertionError("%s: the first line is not '-- expect: ok|fallback "
                                     "KIND[: MESSAGE]|load_error: MESSAGE': %r" % (path, first))
    return out


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
        serving = [(n, p, e) for n, p, e in self.policies if e.load_error is None]
        if not serving:
            self.skipTest("every hostile policy is refused at load")
        # nbx_explain on: the error's message is the test's to read (a
        # client without it gets only the kind: test_nginx_errors)
        locations = "".join("""
            location = /p/%s {
                nbx_policy %s;
                %s
                nbx_customer $arg_customer;
                nbx_session mode $arg_mode;
                nbx_explain on;
                nbx_decide;
            }""" % (name, path, limits_for(expect)) for name, path, expect in serving)
        server = self.nginx("""
            server {
                listen 127.0.0.1:%%(port)s;
                nbx_store %s;
                nbx_catalog %s;
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
                # hostile policies misbehave when asked (mode=hostile):
                # nginx -t tries them on synthetic customers, without one
                r = request(server.url("/p/%s?customer=c%d&placement=hero&placement=recs"
                                       "&mode=hostile" % (name, i % 4 + 1)), timeout=30)
                what = "%s (%s)" % (name, expect.text)
                self.assertStatus(r, 200, what)
                self.assertEqual(server.worker_pids(), pids, "a worker died serving " + what)
                d = r.json()
                if expect.kind is None:
                    self.assertIs(d["fallback"], False, "%s: %s" % (what, d))
                    continue
                self.assertIs(d["fallback"], True, "%s: %s" % (what, d))
                error = d.get("error") or {}
                # "limit": a bomb where either the time or the memory limit
                # may trip first
                kinds = ("timeout", "memory") if expect.kind == "limit" else (expect.kind,)
                self.assertIn(error.get("kind"), kinds, "%s: %s" % (what, d))
                if expect.message:
                    self.assertIn(expect.message, error.get("message", ""),
                                  "%s: %s" % (what, d))
            # the worker still decides normally afterwards
            d = request(server.url("/good?customer=c1")).json()
            self.assertIs(d["fallback"], False, "after %s: %s" % (name, d))
        self.assertEqual(server.worker_pids(), pids)

    def test_policies_the_sandbox_refuses_fail_nginx_t(self):
        refused = [(n, p, e) for n, p, e in self.policies if e.load_error is not None]
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
            self.assertFalse(ok, "%s (%s) was accepted:\n%s" % (name, expect.text, out))
            self.assertIn("invalid nbx policy", out)
            self.assertIn(path, out)
            # nginx -t checks with the library's default limits; which of the
            # load limits trips first depends on the machine's speed: any
            # of them is the refusal promised
            reasons = LOAD_LIMITS if expect.load_error in LOAD_LIMITS else (expect.load_error,)
            self.assertTrue(any(r in out for r in reasons),
                            "%s: expected %s; nginx -t said:\n%s"
                            % (name, " or ".join(map(repr, reasons)), out))


if __name__ == "__main__":
    unittest.main()
