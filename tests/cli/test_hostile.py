"""The hostile policies of tests/policies through the real nbx binary: each
one is run by `nbx batch` over two customers in turn, alice and bob, on one
thread (one sandbox sees them one after the other, as an nginx worker
would). Each must produce what its first line says (`-- expect: ...`, as in
the C suite and tests/nginx/test_nginx_hostile.py), and no line of the
output may hold the other customer's data: issue 10's leaks (an upvalue, a
global table, the previous customer's ltv) put alice's secret into bob's
decision in the CLI's batch.

Run by ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_hostile`.
"""
import json
import os
import re

from cliutil import SOURCE_DIR, CliTestCase

POLICY_DIR = os.path.join(SOURCE_DIR, "tests", "policies")
CATALOG = os.path.join(SOURCE_DIR, "tests", "data", "catalog.json")

EXPECT = re.compile(r"--\s*expect:\s*(?:(?P<ok>ok)"
                    r"|fallback\s+(?P<kind>\w+)(?::\s*(?P<fmsg>.*?))?"
                    r"|load_error:\s*(?P<lmsg>.*?))\s*$")

# Each customer's data, distinct enough that finding it anywhere in the
# other's result can only be a leak (ltv: leak_previous_ltv scores with it).
SECRETS = {
    "alice": ("ALICE-SECRET-7f3a", "777.125"),
    "bob": ("BOB-SECRET-19c2", "31.0625"),
}

# A policy means one limit; on a slow or busy machine another may trip
# first, so the limits it does not mean get room (as the nginx test does).
ROOMY_TIME = ["--time-limit-us", "5000000"]
ROOMY_MEMORY = ["--memory-limit", str(512 << 20)]


def hostile_policies():
    """[(file name, path, match)] for every tests/policies/*.lua."""
    out = []
    for name in sorted(os.listdir(POLICY_DIR)):
        if name.endswith(".lua"):
            path = os.path.join(POLICY_DIR, name)
            with open(path, errors="replace") as f:
                m = EXPECT.match(f.readline().strip())
            if not m:
                raise AssertionError(f"{path}: the first line is not '-- expect: ...'")
            out.append((name, path, m))
    return out


class HostileBatchTest(CliTestCase):

    def setUp(self):
        super().setUp()
        profiles = [{"id": cid, "attrs": {"secret": secret},
                     "consent": {"personalization": True, "email": True}, "ltv": float(ltv)}
                    for cid, (secret, ltv) in SECRETS.items()]
        self.ok("import", "profiles", self.write_jsonl("profiles.jsonl", profiles),
                "--store", self.store)
        # alice, bob, alice, bob: each decision follows the other customer's
        self.customers = self.write_jsonl("customers.jsonl",
                                          [{"id": cid, "mode": "hostile"}
                                           for cid in ("alice", "bob", "alice", "bob")])

    def batch(self, path, limits):
        out = self.path("out.jsonl")
        if os.path.exists(out):
            os.remove(out)
        r = self.nbx("batch", "--store", self.store, "--catalog", CATALOG, "--policy", path,
                     "--customers", self.customers, "--threads", "1", "--out", out,
                     "--as-of", "2026-03-01T12:00:00Z", *limits, timeout=120)
        lines = []
        if os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                lines = [json.loads(line) for line in f]
        return r, lines

    def assertNoLeak(self, name, lines):
        for d in lines:
            text = json.dumps(d)
            for other, (secret, ltv) in SECRETS.items():
                if other == d["customer"]:
                    continue
                self.assertNotIn(secret, text, f"{name}: {other}'s secret in {d['customer']}'s "
                                 f"decision: {text[:600]}")
                self.assertNotRegex(text, r"[:\[,]\s*%s\b" % re.escape(ltv),
                                    f"{name}: {other}'s ltv in {d['customer']}'s decision")

    def test_every_hostile_policy_through_nbx_batch(self):
        policies = hostile_policies()
        self.assertGreater(len(policies), 40, "expected the hostile suite")
        for name, path, m in policies:
            kind = m.group("kind")
            with self.subTest(policy=name, expect=m.group(0)):
                if m.group("lmsg") is not None:
                    # refused before any decision: exit 1, the file and the
                    # reason named, no output
                    r, lines = self.batch(path, [])
                    self.assertEqual(r.returncode, 1, r.stderr[-2000:])
                    self.assertIn(m.group("lmsg"), r.stderr)
                    self.assertIn(name, r.stderr)
                    self.assertEqual(lines, [])
                    continue
                limits = (ROOMY_MEMORY if kind == "timeout" else [] if kind == "limit"
                          else ROOMY_TIME)
                r, lines = self.batch(path, limits)
                self.assertEqual([d["customer"] for d in lines], ["alice", "bob"] * 2,
                                 r.stderr[-2000:])
                self.assertNoLeak(name, lines)
                if kind is None:
                    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                    self.assertEqual([d["fallback"] for d in lines], [False] * 4)
                    continue
                # every decision fell back: exit status 3 (docs/batch.md)
                self.assertEqual(r.returncode, 3, r.stderr[-2000:])
                kinds = ("timeout", "memory") if kind == "limit" else (kind,)
                for d in lines:
                    self.assertIs(d["fallback"], True, d)
                    self.assertIn(d["error"]["kind"], kinds, d["error"])
                    if m.group("fmsg"):
                        self.assertIn(m.group("fmsg"), d["error"]["message"])

    def test_the_upvalue_leak_is_refused_by_nbx_decide_naming_the_line(self):
        path = os.path.join(POLICY_DIR, "leak_upvalue.lua")
        r = self.fails(1, "decide", "--store", self.store, "--catalog", CATALOG, "--policy",
                       path, "--customer", "alice")
        self.assertIn("leak_upvalue.lua:11: assignment to 'prev'", r.stderr)
        self.assertEqual(r.stdout, "")


if __name__ == "__main__":
    import unittest
    unittest.main()
