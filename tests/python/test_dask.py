"""The Dask recipe (bindings/python/examples/dask_batch.py) on a LocalCluster
of two worker processes: its shards together equal one `nbx batch --all`
run, decision ids aside."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from pyutil import AS_OF, POLICY, SOURCE_DIR, TempDirCase, generated_store, nbx, run_nbx

RECIPE = os.path.join(SOURCE_DIR, "bindings", "python", "examples", "dask_batch.py")
PROFILES = 2000

try:
    import distributed  # noqa: F401
except ImportError as e:  # a failure, not a skip: `make test` installs it
    raise ImportError("test_dask needs Debian's python3-distributed "
                      "(scripts/deps.sh test installs it)") from e


def results(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            d.pop("decision_id")
            out.append(d)
    return out


class T01DaskRecipe(TempDirCase):

    def test_01_shards_on_two_workers_equal_one_batch(self):
        store, catalog = generated_store(self.tmp, PROFILES)
        reference = self.path("reference.jsonl")
        run_nbx("batch", "--store", store, "--catalog", catalog, "--policy", POLICY, "--all",
                "--as-of", AS_OF, "--out", reference)

        parts, merged = self.path("parts"), self.path("merged.jsonl")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(SOURCE_DIR, "bindings", "python")] +
            [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("NBX_LIBRARY", nbx.library_path)
        r = subprocess.run([sys.executable, RECIPE, "--store", store, "--catalog", catalog,
                            "--policy", POLICY, "--shards", "5", "--workers", "2",
                            "--out-dir", parts, "--merge", merged, "--as-of", AS_OF],
                           capture_output=True, text=True, env=env, timeout=600, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr[-4000:])
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(summary["shards"], 5)
        self.assertEqual(summary["customers"], PROFILES)

        want = results(reference)
        self.assertEqual(len(want), PROFILES)
        self.assertEqual(results(merged), want)

        # Each part holds exactly its shard, in id order.
        seen = []
        for i in range(5):
            part = results(os.path.join(parts, f"part-{i:05d}-of-00005.jsonl"))
            ids = [d["customer"] for d in part]
            self.assertEqual(ids, sorted(ids))
            self.assertTrue(all(nbx.shard_of(c, 5) == i for c in ids), f"part {i}")
            seen += ids
        self.assertEqual(sorted(seen), [d["customer"] for d in want])
        self.assertEqual(summary["actions"], sum(len(d["actions"]) for d in want))
        self.assertFalse([f for f in os.listdir(parts) if ".tmp" in f], "no temporary parts left")


if __name__ == "__main__":
    unittest.main()
