"""Helpers for the Python binding tests: real stores built with the real nbx
binary, the real libnbx loaded through ctypes.

ctest sets NBX_LIBRARY, NBX_BIN, NBX_SOURCE_DIR and PYTHONPATH; run by hand
from tests/python with those set (or with a build in build/):
    NBX_LIBRARY=build/libnbx.so.0 NBX_BIN=build/nbx PYTHONPATH=bindings/python \
        /usr/bin/python3 -m unittest -v test_engine
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NBX_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
if os.path.join(SOURCE_DIR, "bindings", "python") not in sys.path:
    sys.path.insert(0, os.path.join(SOURCE_DIR, "bindings", "python"))

import nbx  # noqa: E402  (after the path set-up)

NBX = os.environ.get("NBX_BIN") or os.path.join(SOURCE_DIR, "build", "nbx")
POLICY = os.path.join(SOURCE_DIR, "policies", "margin_per_session.lua")
CATALOG = os.path.join(SOURCE_DIR, "tests", "data", "catalog.json")
AS_OF = "2026-03-10T12:00:00Z"


def run_nbx(*args, check=True, **kw):
    env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
    r = subprocess.run([NBX, *args], capture_output=True, text=True, env=env, timeout=600, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"nbx {' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return r


def without_decision_id(result):
    d = dict(result if isinstance(result, dict) else json.loads(result))
    d.pop("decision_id")
    return d


def generated_store(tmp, count, offers=20):
    """A store of `count` generated profiles and a generated catalog."""
    profiles = os.path.join(tmp, "profiles.jsonl")
    catalog = os.path.join(tmp, "catalog.json")
    store = os.path.join(tmp, "store")
    run_nbx("gen", "profiles", "--count", str(count), "--offers", str(offers), "--out", profiles)
    run_nbx("gen", "catalog", "--offers", str(offers), "--out", catalog)
    run_nbx("import", "profiles", profiles, "--store", store)
    return store, catalog


def consenting_store(store, customers, propensity=None):
    """A store (created with `nbx import profiles`) holding a consenting
    profile for each id of customers, with the given propensities."""
    profiles = store + "-profiles.jsonl"
    with open(profiles, "w") as f:
        for c in customers:
            f.write(json.dumps({"id": c, "consent": {"personalization": True},
                                "propensity": propensity or {}}) + "\n")
    run_nbx("import", "profiles", profiles, "--store", store)
    return store


class TempDirCase(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nbx-py-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, text):
        with open(self.path(name), "w", encoding="utf-8") as f:
            f.write(text)
        return self.path(name)
