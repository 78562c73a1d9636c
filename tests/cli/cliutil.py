"""Helpers for the nbx CLI tests: run the real binary on real stores.

NBX_BIN names the binary (ctest sets it to the nbx it built). Without it
the tests use $NBX_BINARY_DIR/nbx, else build/nbx under the source tree (where
`make` and CMake's documented commands build), so a developer can run
`python3 -m unittest -v test_cli` from tests/cli after building. No other
directory is searched: a stale binary of another build must not be tested
by accident.
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NBX_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))


def _find_binary():
    path = os.environ.get("NBX_BIN")
    if path:
        where = "NBX_BIN"
    elif os.environ.get("NBX_BINARY_DIR"):
        path, where = os.path.join(os.environ["NBX_BINARY_DIR"], "nbx"), "NBX_BINARY_DIR"
    else:
        path, where = os.path.join(SOURCE_DIR, "build", "nbx"), "the default build directory"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise RuntimeError(f"no nbx binary at {path} ({where}): build it "
                           f"(cmake -S . -B build && cmake --build build) or set NBX_BIN")
    return path


NBX = _find_binary()
POLICY = os.path.join(SOURCE_DIR, "policies", "margin_per_session.lua")
CATALOG = os.path.join(SOURCE_DIR, "tests", "data", "catalog.json")


def generated_store(directory, profiles, offers=20):
    """A store of `profiles` generated profiles and a catalog of `offers`,
    made with `nbx gen` and `nbx import` in directory (for a test module's
    shared store). Returns (store, catalog)."""
    env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}

    def run(*args):
        r = subprocess.run([NBX, *args], capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"nbx {' '.join(args)}: {r.stderr}")

    jsonl = os.path.join(directory, "profiles.jsonl")
    catalog = os.path.join(directory, "catalog.json")
    store = os.path.join(directory, "store")
    run("gen", "profiles", "--count", str(profiles), "--offers", str(offers), "--out", jsonl)
    run("gen", "catalog", "--offers", str(offers), "--out", catalog)
    run("import", "profiles", jsonl, "--store", store)
    return store, catalog


class CliTestCase(unittest.TestCase):
    """A temporary directory per test, and shortcuts for running nbx."""

    maxDiff = 4000

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nbx-cli-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = os.path.join(self.tmp, "store")

    def path(self, name):
        return os.path.join(self.tmp, name)

    def nbx(self, *args, input=None, env=None, timeout=300):
        """Run nbx; returns the CompletedProcess (text mode). NBX_STORE is
        removed from the environment unless env sets it."""
        full_env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        if env:
            full_env.update(env)
        return subprocess.run([NBX, *args], input=input, capture_output=True, text=True,
                              env=full_env, timeout=timeout)

    def ok(self, *args, **kw):
        """Run nbx and require exit status 0."""
        r = self.nbx(*args, **kw)
        self.assertEqual(r.returncode, 0,
                         f"nbx {' '.join(args)}: expected exit 0, got {r.returncode}\n"
                         f"stdout: {r.stdout[:2000]}\nstderr: {r.stderr[:2000]}")
        return r

    def fails(self, code, *args, **kw):
        """Run nbx and require the given exit status and a message on stderr."""
        r = self.nbx(*args, **kw)
        self.assertEqual(r.returncode, code,
                         f"nbx {' '.join(args)}: expected exit {code}, got {r.returncode}\n"
                         f"stdout: {r.stdout[:2000]}\nstderr: {r.stderr[:2000]}")
        self.assertTrue(r.stderr.strip(), f"nbx {' '.join(args)}: no message on stderr")
        return r

    def write(self, name, text):
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def write_jsonl(self, name, records):
        """Records are dicts (dumped) or strings (written as they are)."""
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        return self.write(name, "".join(line + "\n" for line in lines))

    def stats(self, store=None):
        r = self.ok("stats", "--json", "--store", store or self.store)
        return json.loads(r.stdout)

    def export(self, store=None):
        return self.ok("export", "profiles", "--store", store or self.store).stdout

    def profile(self, customer, store=None):
        r = self.ok("profile", "get", customer, "--store", store or self.store)
        return json.loads(r.stdout)

    def gen(self, *args):
        return self.ok("gen", *args).stdout


def profile(n, **fields):
    """A small valid profile with id pNNN."""
    p = {"id": f"p{n:03d}", "attrs": {"country": "DE", "age": 30 + n, "vip": n % 2 == 0},
         "consent": {"personalization": True, "email": n % 3 != 0},
         "propensity": {"free_shipping": 0.1, "apparel": 0.02 * (n % 10)},
         "ltv": 10.0 * n, "churn": 0.1}
    p.update(fields)
    return p


def purchase(event_id, customer, ts, amount, margin=None):
    e = {"event_id": event_id, "customer": customer, "type": "purchase", "ts": ts,
         "amount": amount}
    if margin is not None:
        e["margin"] = margin
    return e


def exposure(event_id, customer, kind, offer, ts, placement=None):
    e = {"event_id": event_id, "customer": customer, "type": kind, "ts": ts, "offer": offer}
    if placement:
        e["placement"] = placement
    return e
