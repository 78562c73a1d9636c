"""Tests of `nbx batch`: the real binary on real LMDB stores built with
`nbx gen` and `nbx import`. Run by ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_batch`.
"""
import csv
import io
import json
import os
import pty
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from cliutil import CATALOG, NBX, POLICY, CliTestCase, generated_store

AS_OF = "2026-03-01T12:00:00Z"
PROFILES = 3000
SUMMARY = re.compile(r"nbx batch: (\d+) customers: (\d+) decided, (\d+) failed, (\d+) fallbacks, "
                     r"(\d+) anonymous; (\d+) malformed lines skipped")


# ---------------------------------------------------------------------------
# XXH64, written out from the specification, so the test checks that
# --shard is the documented hash and not just whatever nbx_shard_of does.
# ---------------------------------------------------------------------------

_P1, _P2, _P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
_P4, _P5 = 9650029242287828579, 2870177450012600261
_M = (1 << 64) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def _merge(h, v):
    return ((h ^ _round(0, v)) * _P1 + _P4) & _M


def xxh64(data, seed=0):
    n, i = len(data), 0
    le = int.from_bytes
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M, (seed - _P1) & _M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _round(v[k], le(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for k in range(4):
            h = _merge(h, v[k])
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h = ((_rotl(h ^ _round(0, le(data[i:i + 8], "little")), 27)) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ ((le(data[i:i + 4], "little") * _P1) & _M), 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * _P5) & _M), 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    return h ^ (h >> 32)


# ---------------------------------------------------------------------------
# A store shared by the read-only tests (built once: gen + import)
# ---------------------------------------------------------------------------

_shared = {}


def setUpModule():
    tmp = tempfile.mkdtemp(prefix="nbx-batch-")
    _shared["tmp"] = tmp
    store, catalog = generated_store(tmp, PROFILES)
    _shared.update(store=store, catalog=catalog)


def tearDownModule():
    shutil.rmtree(_shared["tmp"], True)


def strip_id(line):
    """A result line as a dict without its decision_id (the only field that
    differs between two decisions of one customer at the same clock)."""
    d = json.loads(line)
    self_id = d.pop("decision_id")
    assert re.fullmatch(r"[0-9a-f-]{36}", self_id), self_id
    return d


def read_results(path):
    with open(path, encoding="utf-8") as f:
        return [strip_id(line) for line in f]


class BatchCase(CliTestCase):
    """Shortcuts for batch runs on the shared store."""

    def batch_args(self, *extra, store=None, catalog=None, policy=POLICY):
        return ["batch", "--store", store or _shared["store"], "--catalog",
                catalog or _shared["catalog"], "--policy", policy, "--as-of", AS_OF, *extra]

    def batch(self, *extra, code=0, **kw):
        r = self.nbx(*self.batch_args(*extra, **{k: kw.pop(k) for k in list(kw)
                                                  if k in ("store", "catalog", "policy")}),
                     **kw)
        self.assertEqual(r.returncode, code,
                         f"nbx batch {' '.join(extra)}: expected exit {code}, got {r.returncode}"
                         f"\nstderr: {r.stderr[-3000:]}")
        return r

    def summary(self, stderr):
        m = SUMMARY.search(stderr)
        self.assertIsNotNone(m, f"no summary in stderr: {stderr!r}")
        keys = ("customers", "decided", "failed", "fallbacks", "anonymous", "malformed")
        return dict(zip(keys, (int(g) for g in m.groups())))

    def ids(self, n=PROFILES):
        return [f"c{i:07d}" for i in range(1, n + 1)]


# ===========================================================================
# 0. The harness tests the binary it was given
# ===========================================================================

class T00Harness(unittest.TestCase):

    def find(self, env_extra, builds):
        """The binary cliutil picks in a fake source tree holding `builds`."""
        with tempfile.TemporaryDirectory() as src:
            for build in builds:
                os.makedirs(os.path.join(src, build))
                path = os.path.join(src, build, "nbx")
                with open(path, "w") as f:
                    f.write("#!/bin/sh\n")
                os.chmod(path, 0o755)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("NBX_BIN", "NBX_BINARY_DIR")}
            env.update(NBX_SOURCE_DIR=src, **env_extra)
            r = subprocess.run(["/usr/bin/python3", "-c", "import cliutil; print(cliutil.NBX)"],
                               cwd=os.path.dirname(os.path.abspath(__file__)), env=env,
                               capture_output=True, text=True)
            return r.returncode, r.stdout.strip().replace(src, "SRC"), r.stderr

    def test_01_build_dir_not_a_stale_build_cli(self):
        self.assertEqual(self.find({}, ["build-cli", "build"])[:2], (0, "SRC/build/nbx"))
        rc, _, err = self.find({}, ["build-cli"])
        self.assertNotEqual(rc, 0, "build-cli/nbx must not be picked up")
        self.assertRegex(err, r"no nbx binary at \S+/build/nbx \(the default build directory\)")

    def test_02_environment_first(self):
        rc, path, _ = self.find({"NBX_BIN": NBX}, ["build"])
        self.assertEqual((rc, path), (0, NBX))
        rc, _, err = self.find({"NBX_BIN": "/nonexistent/nbx"}, ["build"])
        self.assertNotEqual(rc, 0)
        self.assertIn("no nbx binary at /nonexistent/nbx (NBX_BIN)", err)


# ===========================================================================
# 1. Results equal nbx decide
# ===========================================================================

class T01SameAsDecide(BatchCase):

    def decide(self, customer, *extra):
        r = self.ok("decide", "--store", _shared["store"], "--catalog", _shared["catalog"],
                    "--policy", POLICY, "--as-of", AS_OF, "--customer", customer, *extra)
        return strip_id(r.stdout)

    def test_01_sampled_customers_equal_decide(self):
        out = self.path("all.jsonl")
        self.batch("--all", "--threads", "2", "--out", out)
        results = read_results(out)
        self.assertEqual([r["customer"] for r in results], self.ids())
        for i in sorted(random.Random(7).sample(range(PROFILES), 12)):
            with self.subTest(customer=results[i]["customer"]):
                self.assertEqual(results[i], self.decide(results[i]["customer"]))

    def test_02_placements_sessions_and_per_customer_fields(self):
        customers = self.write_jsonl("c.jsonl", [
            "c0000007",
            {"id": "c0000011", "channel": "push", "tier": 3},
            {"id": "c0000012", "vip": True, "ignored": None},
            "nobody-here",
        ])
        r = self.batch("--customers", customers, "--placement", "hero", "--placement", "recs",
                       "--session", "channel=email", "--session", "page=home")
        got = [strip_id(line) for line in r.stdout.splitlines()]
        want_sessions = [
            ["channel=email", "page=home"],
            ["channel=push", "page=home", "tier=3"],
            ["channel=email", "page=home", "vip=true"],
            ["channel=email", "page=home"],
        ]
        ids = ["c0000007", "c0000011", "c0000012", "nobody-here"]
        self.assertEqual([g["customer"] for g in got], ids)
        for g, customer, sess in zip(got, ids, want_sessions):
            args = ["--placement", "hero", "--placement", "recs"]
            for s in sess:
                args += ["--session", s]
            self.assertEqual(g, self.decide(customer, *args))
            self.assertTrue(all(a["placement"] in ("hero", "recs") for a in g["actions"]), g)

    def test_03_explain_matches(self):
        customers = self.write("ids.txt", "c0000005\n")
        r = self.batch("--customers", customers, "--explain")
        got = strip_id(r.stdout)
        self.assertIn("candidates", got)
        self.assertEqual(got, self.decide("c0000005", "--explain"))


# ===========================================================================
# 2. Order
# ===========================================================================

class T02Order(BatchCase):

    def test_01_same_output_for_1_2_4_threads(self):
        outputs = {}
        for threads in ("1", "2", "4"):
            out = self.path(f"t{threads}.jsonl")
            self.batch("--all", "--threads", threads, "--out", out)
            outputs[threads] = read_results(out)
        self.assertEqual(len(outputs["1"]), PROFILES)
        self.assertEqual(outputs["1"], outputs["2"])
        self.assertEqual(outputs["1"], outputs["4"])

    def test_02_input_order_is_kept(self):
        ids = self.ids(1500)
        random.Random(3).shuffle(ids)
        customers = self.write("ids.txt", "".join(i + "\n" for i in ids))
        for threads, window in (("1", "1"), ("2", "5"), ("4", "1000")):
            r = self.batch("--customers", customers, "--threads", threads, "--window", window)
            got = [json.loads(line)["customer"] for line in r.stdout.splitlines()]
            self.assertEqual(got, ids, f"--threads {threads} --window {window}")

    def test_03_decision_ids_are_unique(self):
        r = self.batch("--all", "--threads", "2")
        ids = [json.loads(line)["decision_id"] for line in r.stdout.splitlines()]
        self.assertEqual(len(set(ids)), PROFILES)


# ===========================================================================
# 3. Shards
# ===========================================================================

class T03Shards(BatchCase):

    def test_01_xxh64_reference(self):
        # Published XXH64 values (seed 0) of the specification's test inputs.
        self.assertEqual(xxh64(b""), 0xEF46DB3751D8E999)
        self.assertEqual(xxh64(b"a"), 0xD24EC4F1A98C6E5B)
        self.assertEqual(xxh64(b"abc"), 0x44BC2CF5AD770999)

    def test_02_shards_partition_the_store(self):
        n = 3
        seen = []
        for i in range(n):
            r = self.batch("--all", "--shard", f"{i}/{n}", "--threads", "2")
            shard = [strip_id(line) for line in r.stdout.splitlines()]
            for res in shard:
                self.assertEqual(xxh64(res["customer"].encode()) % n, i, res["customer"])
            ids = [res["customer"] for res in shard]
            self.assertEqual(ids, sorted(ids), "a shard of --all is in id order")
            self.assertIn(f"in other shards (shard {i}/{n})", r.stderr)
            seen += shard
        self.assertEqual(sorted(s["customer"] for s in seen), self.ids())
        full = self.batch("--all", "--threads", "2")
        self.assertEqual(sorted(seen, key=lambda s: s["customer"]),
                         [strip_id(line) for line in full.stdout.splitlines()])

    def test_03_shards_of_a_customer_file(self):
        ids = self.ids(400) + ["ghost-1", "ghost-2", "x"]
        customers = self.write("ids.txt", "".join(i + "\n" for i in ids))
        got = []
        for i in range(2):
            r = self.batch("--customers", customers, "--shard", f"{i}/2")
            got += [json.loads(line)["customer"] for line in r.stdout.splitlines()]
        self.assertEqual(sorted(got), sorted(ids))

    def test_04_bad_shard(self):
        for bad in ("3/3", "1", "a/2", "1/0", "-1/2", "1/2/3", " 0/3", "+0/3", "0/+3", "0/ 3",
                    "0/-3"):
            r = self.nbx(*self.batch_args("--all", "--shard", bad))
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("--shard", r.stderr)


# ===========================================================================
# 4. Exposures: plan by default, commit on request
# ===========================================================================

class T04Exposures(BatchCase):

    def setUp(self):
        super().setUp()
        # The test catalog with at most 4 contacts a week: one committed
        # campaign (4 actions: hero + 3 recs) uses a customer's allowance.
        with open(CATALOG, encoding="utf-8") as f:
            cat = json.load(f)
        cat["guardrails"]["max_contacts"] = {"max": 4, "window_days": 7}
        self.catalog = self.write("catalog.json", json.dumps(cat))
        self.store = self.path("store")
        for i in range(1, 7):
            self.ok("profile", "put", json.dumps({"id": f"u{i}", "consent": {
                "personalization": True, "email": True}}), "--store", self.store)

    def run_ids(self, ids, *extra):
        customers = self.write("ids.txt", "".join(i + "\n" for i in ids))
        r = self.batch("--customers", customers, "--as-of", "2026-03-10T12:00:00Z",
                       "--threads", "2", *extra, store=self.store, catalog=self.catalog)
        return {d["customer"]: d for d in map(json.loads, r.stdout.splitlines())}

    def test_01_planning_consumes_nothing(self):
        first = self.run_ids(["u1", "u2", "u3"])
        again = self.run_ids(["u1", "u2", "u3"])
        for c in ("u1", "u2", "u3"):
            self.assertEqual(len(first[c]["actions"]), 4, first[c])
            self.assertEqual(first[c]["actions"], again[c]["actions"])
        st = self.stats()
        self.assertEqual((st["events_seen"], st["exposure_keys"]), (0, 0), st)

    def test_02_committed_campaign_caps_an_overlapping_one(self):
        a = self.run_ids(["u1", "u2", "u3"], "--record")
        self.assertTrue(all(len(d["actions"]) == 4 for d in a.values()), a)
        self.assertEqual(self.stats()["events_seen"], 12)
        b = self.run_ids(["u2", "u3", "u4"], "--record")
        self.assertEqual(b["u2"]["actions"], [], "u2 was contacted 4 times already")
        self.assertEqual(b["u3"]["actions"], [])
        self.assertEqual(len(b["u4"]["actions"]), 4)
        self.assertEqual(self.stats()["events_seen"], 16)
        r = self.batch("--customers", self.write("one.txt", "u2\n"), "--as-of",
                       "2026-03-10T12:00:00Z", "--explain", store=self.store,
                       catalog=self.catalog)
        excluded = {c["excluded"] for c in json.loads(r.stdout)["candidates"]}
        self.assertIn("contacts", excluded)
        self.assertIn("exclusions: consent 0, frequency 0, cooldown 0, contacts ", r.stderr)

    def test_03_impressions_are_the_decided_actions(self):
        a = self.run_ids(["u5"], "--record")
        export = self.ok("export", "profiles", "--store", self.store).stdout
        self.assertIn("u5", export)
        decision = a["u5"]["decision_id"]
        # Each action is an impression event with id DECISION_ID:INDEX: a
        # second apply of the same ids is a duplicate.
        events = [{"event_id": f"{decision}:{i}", "customer": "u5", "type": "impression",
                   "ts": "2026-03-10T12:00:00Z", "offer": act["offer"]}
                  for i, act in enumerate(a["u5"]["actions"])]
        r = self.ok("ingest", self.write_jsonl("ev.jsonl", events), "--store", self.store)
        self.assertIn(f"{len(events)} duplicates", r.stdout)


    def test_04_concurrent_campaigns_never_exceed_the_caps(self):
        # Two processes record for the same 400 customers at the same time,
        # with at most one contact a week (every action is a contact): each
        # customer ends up with exactly one action, from one campaign.
        with open(self.catalog, encoding="utf-8") as f:
            cat = json.load(f)
        cat["guardrails"]["max_contacts"] = {"max": 1, "window_days": 7}
        catalog = self.write("one.json", json.dumps(cat))
        ids = [f"v{i:04d}" for i in range(400)]
        self.ok("import", "profiles", self.write_jsonl("v.jsonl", [
            {"id": i, "consent": {"personalization": True}} for i in ids]), "--store", self.store)
        customers = self.write("v.txt", "".join(i + "\n" for i in ids))
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        procs = []
        for name in ("a", "b"):
            args = self.batch_args("--customers", customers, "--as-of", "2026-03-10T12:00:00Z",
                                   "--record", "--threads", "2", "--window", "8",
                                   "--out", self.path(f"{name}.jsonl"), store=self.store,
                                   catalog=catalog)
            procs.append(subprocess.Popen([NBX, *args], stderr=subprocess.PIPE, text=True,
                                          env=env))
        for p in procs:
            _, err = p.communicate(timeout=300)
            self.assertEqual(p.returncode, 0, err)
        got = {}
        for name in ("a", "b"):
            with open(self.path(f"{name}.jsonl")) as f:
                for d in map(json.loads, f):
                    got.setdefault(d["customer"], []).append(len(d["actions"]))
        self.assertEqual(sorted(got), ids)
        wrong = {c: n for c, n in got.items() if sum(n) != 1}
        self.assertEqual(wrong, {}, "actions per customer (campaign a, b); the cap is 1")
        self.assertEqual(self.stats()["events_seen"], 400)


    def test_05_a_plan_respects_daily_budgets_like_a_commit(self):
        # Issue 10: with an offer at daily_impressions 100, the plan assigned
        # it to 2,165 customers and a committing run to 100. --threads 1 for
        # an exact comparison of every offer: the customers a budgeted offer
        # reaches then follow the input order in both runs, and those it
        # misses get the same next choice (with threads, which customers
        # reach the budget first varies, and so may their other offers).
        with open(self.catalog, encoding="utf-8") as f:
            cat = json.load(f)
        for o in cat["offers"]:
            if o["id"] == "free_shipping":
                o["budget"] = {"daily_impressions": 100}
        catalog = self.write("budget.json", json.dumps(cat))
        policy = self.write("fs_first.lua", "return { name = 'fs_first', score = function(o)\n"
                                            "  if o.id == 'free_shipping' then return 100 end\n"
                                            "  return o.price end }\n")
        ids = [f"w{i:04d}" for i in range(500)]
        self.ok("import", "profiles", self.write_jsonl("w.jsonl", [
            {"id": i, "consent": {"personalization": True}} for i in ids]), "--store", self.store)
        customers = self.write("w.txt", "".join(i + "\n" for i in ids))

        def per_offer(*extra, threads="1"):
            r = self.batch("--customers", customers, "--as-of", "2026-03-10T12:00:00Z",
                           "--threads", threads, *extra, store=self.store, catalog=catalog,
                           policy=policy)
            counts = {}
            for d in map(json.loads, r.stdout.splitlines()):
                for a in d["actions"]:
                    counts[a["offer"]] = counts.get(a["offer"], 0) + 1
            return counts

        self.assertEqual(per_offer(threads="2")["free_shipping"], 100)
        plan = per_offer()
        self.assertEqual(plan["free_shipping"], 100)
        commit = per_offer("--record")
        self.assertEqual(plan, commit)
        self.assertNotIn("free_shipping", per_offer(), "the day's budget is spent")

    def test_06_commit_exposures_is_the_old_spelling_of_record(self):
        old = self.run_ids(["u1"], "--commit-exposures")
        self.assertEqual(self.stats()["events_seen"], 4)
        new = self.run_ids(["u2"], "--record")
        self.assertEqual(self.stats()["events_seen"], 8)
        self.assertEqual(old["u1"]["actions"], new["u2"]["actions"])
        again = self.run_ids(["u1", "u2"], "--commit-exposures")
        self.assertEqual((again["u1"]["actions"], again["u2"]["actions"]), ([], []),
                         "both spellings spent the same caps")
        self.assertEqual(self.stats()["events_seen"], 8)
        r = self.ok("batch", "--help")
        self.assertIn("[--record]", r.stdout)
        self.assertNotIn("[--commit-exposures]", r.stdout, "an alias is not in the usage line")
        self.assertRegex(r.stdout, r"--commit-exposures +the old spelling of --record")
        r = self.nbx("batch", "--commit-exposures=1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--commit-exposures takes no value", r.stderr)


# ===========================================================================
# 5. Checkpoints
# ===========================================================================

class T05Checkpoint(BatchCase):

    def setUp(self):
        super().setUp()
        # Repeat the ids so the run lasts long enough to be killed mid-way;
        # each line is a distinct input position.
        self.lines = self.ids() * 4
        self.customers = self.write("ids.txt", "".join(i + "\n" for i in self.lines))
        self.out = self.path("out.jsonl")
        self.ckpt = self.path("run.ckpt")

    def args(self, *extra):
        return self.batch_args("--customers", self.customers, "--out", self.out,
                               "--checkpoint", self.ckpt, "--checkpoint-every", "200", *extra)

    def start(self, *extra):
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        return subprocess.Popen([NBX, *self.args(*extra)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)

    def kill(self, proc, sig=signal.SIGKILL):
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        return err

    def wait_for_checkpoint(self, proc, min_customers=400):
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(self.ckpt):
                with open(self.ckpt) as f:
                    m = re.search(r"total\.customers (\d+)", f.read())
                if m and int(m.group(1)) >= min_customers:
                    return
            if proc.poll() is not None:
                self.fail(f"the batch ended before a checkpoint: {proc.stderr.read()}")
            time.sleep(0.02)
        self.fail("no checkpoint within 120 s")

    def check_complete_output(self):
        results = read_results(self.out)
        self.assertEqual([r["customer"] for r in results], self.lines,
                         "every input line exactly once, in order")
        reference = self.path("reference.jsonl")
        self.batch("--customers", self.customers, "--out", reference)
        self.assertEqual(results, read_results(reference))

    def test_01_kill_9_and_resume(self):
        proc = self.start("--threads", "1")
        self.wait_for_checkpoint(proc)
        self.kill(proc)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        partial = os.path.getsize(self.out)
        r = self.nbx(*self.args("--threads", "2"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resuming from", r.stderr)
        self.assertGreater(os.path.getsize(self.out), partial)
        self.check_complete_output()
        s = self.summary(r.stderr)
        self.assertEqual(s["customers"], len(self.lines), "the summary covers the whole run")
        # A finished run is not run again.
        before = os.path.getmtime(self.out), os.path.getsize(self.out)
        r = self.nbx(*self.args())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("already complete", r.stderr)
        self.assertEqual((os.path.getmtime(self.out), os.path.getsize(self.out)), before)

    def test_02_kill_twice_csv(self):
        for _ in range(2):
            proc = self.start("--threads", "2", "--format", "csv")
            self.wait_for_checkpoint(proc, min_customers=600 if _ else 300)
            self.kill(proc)
        r = self.nbx(*self.args("--format", "csv"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(self.out, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        seen = []
        for row in rows:
            key = row["decision_id"]
            if not seen or seen[-1][0] != key:
                seen.append((key, row["customer"]))
        self.assertEqual([c for _, c in seen], self.lines)
        with open(self.out, encoding="utf-8") as f:
            self.assertEqual(sum(1 for line in f if line.startswith("customer,")), 1,
                             "one CSV header")

    def test_03_sigterm_stops_at_a_checkpoint(self):
        proc = self.start("--threads", "1")
        self.wait_for_checkpoint(proc, min_customers=200)
        err = self.kill(proc, signal.SIGTERM)
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("interrupted; run the same command again to resume", err)
        with open(self.ckpt) as f:
            text = f.read()
        committed = int(re.search(r"output_offset (\d+)", text).group(1))
        self.assertEqual(os.path.getsize(self.out), committed,
                         "a graceful stop commits everything it wrote")
        r = self.nbx(*self.args())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_complete_output()

    def test_04_different_parameters_are_refused(self):
        proc = self.start("--threads", "1")
        self.wait_for_checkpoint(proc, min_customers=200)
        self.kill(proc)
        size = os.path.getsize(self.out)
        for extra, name in ((["--placement", "hero"], "placements"),
                            (["--session", "k=v"], "session"),
                            (["--as-of", "2026-03-02T00:00:00Z"], "as_of"),
                            (["--shard", "0/2"], "shard"),
                            (["--time-limit-us", "5000"], "time_limit_us"),
                            (["--memory-limit", "1M"], "memory_limit")):
            r = self.nbx(*self.args(*extra))
            self.assertEqual(r.returncode, 1, extra)
            self.assertIn(f"different command: {name} was", r.stderr)
            self.assertEqual(os.path.getsize(self.out), size, "the output was not touched")
        # --as-of may be left out on resume (the checkpoint keeps the clock),
        # and --threads may change.
        r = self.nbx(*self.args("--threads", "2"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_complete_output()

    def test_06_changed_customer_file_is_refused(self):
        proc = self.start("--threads", "1")
        self.wait_for_checkpoint(proc, min_customers=200)
        self.kill(proc)
        with open(self.ckpt) as f:
            text = f.read()
        offset = int(re.search(r"input_offset (\d+)", text).group(1))
        with open(self.customers, "rb") as f:
            data = f.read()
        # The checkpoint holds the documented hash of the part decided.
        self.assertEqual(re.search(r"input_hash ([0-9a-f]{16})", text).group(1),
                         f"{xxh64(data[:offset]):016x}")
        size = os.path.getsize(self.out)
        # One id a byte longer: the old offset would now fall mid-line.
        with open(self.customers, "wb") as f:
            f.write(b"c00000001" + data[len(b"c0000001"):])
        r = self.nbx(*self.args())
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"{self.customers} changed since the checkpoint; delete {self.ckpt} to "
                      "start over", r.stderr)
        self.assertEqual(os.path.getsize(self.out), size, "the output was not touched")
        # Put back, the run resumes.
        with open(self.customers, "wb") as f:
            f.write(data)
        r = self.nbx(*self.args())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_complete_output()

    def test_07_rerun_of_a_complete_run_keeps_its_exit_status(self):
        with open(self.customers, "a") as f:
            f.write('{"id": 5}\n')
        r = self.nbx(*self.args())
        self.assertEqual(r.returncode, 1, "a malformed line was skipped")
        before = os.path.getmtime(self.out), os.path.getsize(self.out)
        r = self.nbx(*self.args())
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("already complete; nothing done (exit 1, as the run that finished)",
                      r.stderr)
        self.assertEqual(self.summary(r.stderr)["malformed"], 1)
        self.assertEqual((os.path.getmtime(self.out), os.path.getsize(self.out)), before)

    def test_08_record_checkpoints_every_group(self):
        store = self.path("store")
        shutil.copytree(_shared["store"], store)
        args = self.batch_args("--customers", self.customers, "--out", self.out, "--checkpoint",
                               self.ckpt, "--checkpoint-every", "100000", "--record",
                               "--threads", "2", store=store)
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        proc = subprocess.Popen([NBX, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env)
        self.wait_for_checkpoint(proc, min_customers=1)
        with open(self.ckpt) as f:
            text = f.read()
        self.assertIn("complete 0", text, "a checkpoint before the end of the run")
        first = int(re.search(r"total\.customers (\d+)", text).group(1))
        self.assertEqual(first % 128, 0, "a checkpoint at every group of 128")
        self.kill(proc)
        # A run started with --record resumes under its old spelling.
        r = self.nbx(*[a if a != "--record" else "--commit-exposures" for a in args])
        self.assertEqual(r.returncode, 0, r.stderr)
        results = read_results(self.out)
        self.assertEqual([d["customer"] for d in results], self.lines)
        # What a kill costs: impressions committed for customers decided
        # again on resume, at most (window + group) customers' worth.
        recorded = self.ok("stats", "--json", "--store", store)
        events = json.loads(recorded.stdout)["events_seen"]
        written = sum(len(d["actions"]) for d in results)
        most = max(len(d["actions"]) for d in results)
        self.assertLessEqual(events - written, (2 * 128 + 128) * most,
                             f"{events} impressions recorded, {written} in the output")

    def test_05_checkpoint_needs_a_file_output(self):
        r = self.nbx(*self.batch_args("--customers", self.customers, "--checkpoint", self.ckpt))
        self.assertEqual(r.returncode, 2)
        self.assertIn("--checkpoint needs --out", r.stderr)


# ===========================================================================
# 5b. Consent binds the channel
# ===========================================================================

class T05bChannelConsent(BatchCase):
    """Issue 9: `--session channel=email` gave actions to customers who had
    refused email."""

    def setUp(self):
        super().setUp()
        with open(CATALOG, encoding="utf-8") as f:
            cat = json.load(f)
        self.plain = self.write("plain.json", json.dumps(cat))
        cat["channels"] = {"email": {"purpose": "email"}, "web": {"purpose": None}}
        self.catalog = self.write("channels.json", json.dumps(cat))
        self.store = self.path("store")
        rows = [{"id": f"r{i:03d}", "consent": {"personalization": True, "email": False}}
                for i in range(300)]
        rows += [{"id": f"g{i:03d}", "consent": {"personalization": True, "email": True}}
                 for i in range(100)]
        self.ok("import", "profiles", self.write_jsonl("p.jsonl", rows), "--store", self.store)
        self.customers = self.write("ids.txt", "".join(r["id"] + "\n" for r in rows))

    def run_batch(self, *extra, catalog=None, code=0):
        r = self.batch("--customers", self.customers, "--as-of", "2026-03-10T12:00:00Z",
                       "--threads", "2", *extra, store=self.store,
                       catalog=catalog or self.catalog, code=code)
        return r, [json.loads(line) for line in r.stdout.splitlines()]

    def test_01_refused_email_gets_nothing_by_email(self):
        for catalog in (self.catalog, self.plain):  # declared, and named like a purpose
            with self.subTest(catalog=os.path.basename(catalog)):
                _, got = self.run_batch("--session", "channel=email", catalog=catalog)
                self.assertEqual(len(got), 400)
                refused = [d for d in got if d["customer"].startswith("r")]
                self.assertEqual(sum(len(d["actions"]) for d in refused), 0,
                                 [d for d in refused if d["actions"]][:2])
                granted = [d for d in got if d["customer"].startswith("g")]
                self.assertTrue(all(d["actions"] for d in granted))
        # the same customers on the web get offers
        _, got = self.run_batch("--session", "channel=web")
        self.assertTrue(all(d["actions"] for d in got))

    def test_02_an_unknown_channel_fails_the_batch_or_the_customer(self):
        r, got = self.run_batch("--session", "channel=fax", code=1)
        self.assertEqual(got, [])
        self.assertIn("field 'session.channel': 'fax' is not a channel of the catalog "
                      "(channels: email, web)", r.stderr)
        customers = self.write_jsonl("c.jsonl", [
            {"id": "g001", "channel": "email"}, {"id": "g002", "channel": "fax"},
            {"id": "g003"}])
        r = self.batch("--customers", customers, "--as-of", "2026-03-10T12:00:00Z",
                       store=self.store, catalog=self.catalog, code=1)
        self.assertEqual([json.loads(line)["customer"] for line in r.stdout.splitlines()],
                         ["g001", "g003"])
        self.assertIn("customer g002: field 'session.channel': 'fax' is not a channel", r.stderr)
        self.assertEqual(self.summary(r.stderr)["failed"], 1)
        r = self.nbx("decide", "--store", self.store, "--catalog", self.catalog, "--policy",
                     POLICY, "--customer", "g001", "--session", "channel=fax")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("'fax' is not a channel", r.stderr)


# ===========================================================================
# 6. Bad input, anonymous ids
# ===========================================================================

class T06Input(BatchCase):

    def test_01_malformed_lines_are_reported_and_skipped(self):
        lines = ["c0000001", '{"id": 17}', "c0000002", '{"id": "c0000003", "geo": {"x": 1}}',
                 "", '{"id": "c0000004"', "x" * 300, '{"name": "no id"}', "c0000005\r",
                 '{"id": "c0000006", "channel": "sms"}']
        customers = self.write("bad.txt", "\n".join(lines) + "\n")
        r = self.batch("--customers", customers, code=1)
        got = [json.loads(line)["customer"] for line in r.stdout.splitlines()]
        self.assertEqual(got, ["c0000001", "c0000002", "c0000005", "c0000006"])
        for line_no, what in ((2, "'id'"), (4, "'geo'"), (6, "column"), (7, "longer than"),
                              (8, "'id'")):
            self.assertRegex(r.stderr, rf"{re.escape(customers)}:{line_no}: .*{re.escape(what)}")
        self.assertNotIn(f"{customers}:5:", r.stderr, "a blank line is not an error")
        s = self.summary(r.stderr)
        self.assertEqual((s["customers"], s["malformed"]), (4, 5))

    def test_02_unknown_ids_are_anonymous(self):
        customers = self.write("ids.txt", "c0000001\nghost-a\nc0000002\nghost-b\nghost-c\n")
        r = self.batch("--customers", customers)
        got = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([g["anonymous"] for g in got], [False, True, False, True, True])
        self.assertEqual(self.summary(r.stderr)["anonymous"], 3)

    def test_03_usage_errors(self):
        for extra, says in (([], "either --customers FILE or --all"),
                            (["--all", "--customers", "x"], "either --customers FILE or --all"),
                            (["--all", "--format", "xml"], "--format"),
                            (["--all", "--format", "csv", "--explain"], "--explain"),
                            (["--all", "--threads", "0"], "--threads")):
            r = self.nbx(*self.batch_args(*extra))
            self.assertEqual(r.returncode, 2, extra)
            self.assertIn(says, r.stderr)
        r = self.nbx("batch", "--store", _shared["store"], "--policy", POLICY, "--all")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--catalog FILE is required", r.stderr)
        r = self.nbx(*self.batch_args("--customers", self.path("missing.txt")))
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.txt", r.stderr)
        r = self.nbx(*self.batch_args("--all", "--placement", "nowhere"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("nowhere", r.stderr)

    def test_05_ids_with_whitespace_bom_and_json_non_objects(self):
        data = ("\ufeffc0000001\n c0000002\nc0000003 \nc0000004\t\n\tc0000005\n[1,2]\n"
                '"c0000006"\n  {"id": "c0000007"}\nc0000008\r\n12345\n')
        customers = self.path("ids.txt")
        with open(customers, "w", encoding="utf-8", newline="") as f:
            f.write(data)
        r = self.batch("--customers", customers, code=1)
        got = [json.loads(line)["customer"] for line in r.stdout.splitlines()]
        self.assertEqual(got, ["c0000001", "c0000007", "c0000008", "12345"])
        self.assertFalse(json.loads(r.stdout.splitlines()[0])["anonymous"],
                         "the BOM is not part of the first id")
        for line_no in (2, 3, 4, 5):
            self.assertIn(f"{customers}:{line_no}: id has leading or trailing whitespace; use "
                          "JSONL to pass such an id; line skipped", r.stderr)
        for line_no in (6, 7):
            self.assertRegex(r.stderr, rf"{re.escape(customers)}:{line_no}: .*JSON object")
        self.assertEqual(self.summary(r.stderr)["malformed"], 6)

    def test_04_customers_from_stdin(self):
        r = self.batch("--customers", "-", input="c0000009\nc0000008\n")
        self.assertEqual([json.loads(line)["customer"] for line in r.stdout.splitlines()],
                         ["c0000009", "c0000008"])


# ===========================================================================
# 6b. Files that must be distinct
# ===========================================================================

class T06bDistinctFiles(BatchCase):

    def setUp(self):
        super().setUp()
        self.text = "c0000001\nc0000002\n"
        self.customers = self.write("ids.txt", self.text)

    def refused(self, *extra, names):
        r = self.nbx(*self.batch_args(*extra))
        self.assertEqual(r.returncode, 2, f"{extra}: {r.stderr}")
        for name in names:
            self.assertIn(name, r.stderr)
        self.assertIn("are the same file", r.stderr)
        return r

    def test_01_customers_as_out(self):
        self.refused("--customers", self.customers, "--out", self.customers,
                     names=("--out", "--customers"))
        with open(self.customers) as f:
            self.assertEqual(f.read(), self.text, "the customer list was not touched")
        # The same file by another name: a relative path, a symbolic link.
        link = self.path("link.txt")
        os.symlink(self.customers, link)
        self.refused("--customers", self.customers, "--out", link, names=("--out", "--customers"))
        with open(self.customers) as f:
            self.assertEqual(f.read(), self.text)

    def test_02_outputs_that_collide(self):
        out = self.write("out.jsonl", "precious\n")
        self.refused("--customers", self.customers, "--out", out, "--checkpoint", out,
                     names=("--out", "--checkpoint"))
        self.refused("--customers", self.customers, "--out", out, "--summary", out,
                     names=("--out", "--summary"))
        self.refused("--customers", self.customers, "--out", out, "--checkpoint",
                     self.path("ck"), "--summary", self.path("ck.tmp"),
                     names=("--checkpoint's temporary file", "--summary"))
        with open(out) as f:
            self.assertEqual(f.read(), "precious\n", "the output was not touched")
        # Files not there yet: the same path spelled two ways.
        fresh = self.path("fresh.jsonl")
        self.refused("--customers", self.customers, "--out", fresh, "--checkpoint",
                     os.path.join(self.tmp, ".", "fresh.jsonl"), names=("--out", "--checkpoint"))
        self.assertFalse(os.path.exists(fresh))

    def test_03_inputs_are_never_written(self):
        store = self.path("store")
        shutil.copytree(_shared["store"], store)
        r = self.nbx(*self.batch_args("--all", "--out", os.path.join(store, "data.mdb"),
                                      store=store))
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--out and the store's data.mdb are the same file", r.stderr)
        self.assertEqual(self.stats(store)["profiles"], PROFILES, "the store is intact")
        self.refused("--customers", self.customers, "--summary", POLICY,
                     names=("--summary", "--policy"))
        with open(self.customers, "a") as stdout:
            r = subprocess.run([NBX, *self.batch_args("--customers", self.customers)],
                               stdout=stdout, stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("standard output and --customers are the same file", r.stderr)
        with open(self.customers) as f:
            self.assertEqual(f.read(), self.text)

    def test_04_devices_may_be_shared(self):
        self.batch("--customers", self.customers, "--out", os.devnull, "--summary", os.devnull)


# ===========================================================================
# 7. CSV and the summary
# ===========================================================================

class T07CsvAndSummary(BatchCase):

    def test_01_csv_rows_match_jsonl(self):
        ids = self.ids(200) + ["ghost,with \"quotes\""]
        customers = self.write("ids.txt", "".join(i + "\n" for i in ids))
        jsonl = [json.loads(line) for line in self.batch("--customers", customers).stdout.splitlines()]
        r = self.batch("--customers", customers, "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        self.assertEqual(r.stdout.splitlines()[0],
                         "customer,decision_id,rank,offer,placement,score,expected_margin,"
                         "fallback,anonymous,policy_version,as_of")
        by_customer = {}
        for row in rows:
            by_customer.setdefault(row["customer"], []).append(row)
        self.assertEqual(list(by_customer), ids, "customers in input order")
        for d in jsonl:
            got = by_customer[d["customer"]]
            if not d["actions"]:
                self.assertEqual([(g["rank"], g["offer"]) for g in got], [("0", "")])
                continue
            self.assertEqual([int(g["rank"]) for g in got], list(range(1, len(d["actions"]) + 1)))
            for g, a in zip(got, d["actions"]):
                self.assertEqual((g["offer"], g["placement"]), (a["offer"], a["placement"]))
                self.assertEqual(float(g["expected_margin"]), a["expected_margin"])
                self.assertEqual(g["score"] == "", a["score"] is None)
                if a["score"] is not None:
                    self.assertEqual(float(g["score"]), a["score"])
                self.assertEqual(g["fallback"], "true" if d["fallback"] else "false")
                self.assertEqual(g["anonymous"], "true" if d["anonymous"] else "false")
                self.assertEqual(g["policy_version"], d["policy"]["version"])
                self.assertEqual(g["as_of"], d["as_of"])
            self.assertEqual(len({g["decision_id"] for g in got}), 1)

    def test_05_csv_neutralises_formulas_and_keeps_numbers(self):
        # Issue 10: ids starting with = + - @ were written as they are, and a
        # spreadsheet runs them as formulas. They are written as text, with
        # a leading apostrophe, quoted (docs/batch.md, "Output formats").
        ids = ["=1+2", "+c1", "-c2", "@c3", "=HYPERLINK(\"x\",\"y\")", "\tc4", "\rc5",
               "c6=ok", "plain"]
        customers = self.write_jsonl("ids.jsonl", [{"id": i} for i in ids])
        r = self.batch("--customers", customers, "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(r.stdout, newline="")))
        want = ["'" + i if i[0] in "=+-@\t\r" else i for i in ids]
        # standard output is read in text mode: the quoted CR comes back as LF
        want = [w.replace("\r", "\n") for w in want]
        self.assertEqual(list(dict.fromkeys(row["customer"] for row in rows)), want)
        self.assertIn('\n"\'=HYPERLINK(""x"",""y"")",', r.stdout)
        self.assertIn('\n"\'=1+2",', r.stdout)
        self.assertIn("\nc6=ok,", r.stdout)
        for line in r.stdout.splitlines()[1:]:
            self.assertNotRegex(line, r"^[=+\-@\t]", "a cell a spreadsheet would evaluate")
        # ids of the catalog too, and negative numbers stay numbers
        with open(CATALOG, encoding="utf-8") as f:
            cat = json.load(f)
        for o in cat["offers"]:
            if o["id"] == "bestsellers":
                o["id"] = "-bestsellers"
        cat["fallback"]["recs"] = ["-bestsellers"]
        catalog = self.write("catalog.json", json.dumps(cat))
        policy = self.write("cheap.lua", "return { name = 'cheap', score = function(o)\n"
                                         "  return -o.price - 0.25, -1.5 end }\n")
        r = self.batch("--customers", customers, "--format", "csv", catalog=catalog,
                       policy=policy)
        rows = list(csv.DictReader(io.StringIO(r.stdout, newline="")))
        self.assertIn("'-bestsellers", {row["offer"] for row in rows})
        scored = [row for row in rows if row["score"]]
        self.assertTrue(scored)
        for row in scored:
            self.assertLess(float(row["score"]), 0)
            self.assertEqual(row["expected_margin"], "-1.5")
        self.assertRegex(r.stdout, r",-25\.25,-1\.5,", "numbers are written unquoted")

    def test_02_summary_adds_up(self):
        customers = self.write("ids.txt", "".join(i + "\n" for i in self.ids(500) + ["nope"]))
        summary = self.path("summary.json")
        r = self.batch("--customers", customers, "--summary", summary, "--explain")
        results = [json.loads(line) for line in r.stdout.splitlines()]
        with open(summary) as f:
            s = json.load(f)
        self.assertEqual(s["customers"], 501)
        self.assertEqual(s["decided"], 501)
        # the unknown id, and the customers decided as anonymous visitors
        # because they refused personalisation
        decided = set(self.ids(500))
        refused = sum(not p["consent"].get("personalization", False)
                      for p in map(json.loads, self.export(_shared["store"]).splitlines())
                      if p["id"] in decided)
        self.assertGreater(refused, 0)
        self.assertEqual(s["anonymous"], 1 + refused)
        self.assertEqual(s["anonymous"], sum(d["anonymous"] for d in results))
        self.assertEqual(s["fallbacks"], sum(d["fallback"] for d in results))
        self.assertEqual(s["actions"], sum(len(d["actions"]) for d in results))
        margin = sum(a["expected_margin"] for d in results for a in d["actions"])
        self.assertAlmostEqual(s["expected_margin"], margin, places=6)
        counts = {}
        for d in results:
            for c in d["candidates"]:
                if c["excluded"]:
                    counts[c["excluded"]] = counts.get(c["excluded"], 0) + 1
        for reason, n in s["exclusions"].items():
            self.assertEqual(n, counts.get(reason, 0), reason)
        self.assertTrue(s["complete"])
        self.assertEqual(s["as_of"], "2026-03-01T12:00:00Z")
        # The text summary on stderr says the same.
        self.assertEqual(self.summary(r.stderr)["customers"], 501)
        self.assertIn(f"{s['actions']} actions, expected margin {s['expected_margin']:.2f}",
                      r.stderr)
        text = ", ".join(f"{k} {v}" for k, v in s["exclusions"].items())
        self.assertIn(f"exclusions: {text}", r.stderr)
        self.assertRegex(r.stderr, r"nbx batch: [\d.]+ s, \d+ customers/s")

    def test_03_fallbacks_are_counted(self):
        policy = self.write("failing.lua",
                            "return { name = 'failing', score = function(o) error('no') end }\n")
        customers = self.write("ids.txt", "c0000001\nc0000002\n")
        r = self.batch("--customers", customers, policy=policy, code=3)
        self.assertTrue(all(json.loads(line)["fallback"] for line in r.stdout.splitlines()))
        self.assertEqual(self.summary(r.stderr)["fallbacks"], 2)

    # Issue 10: a policy that fell back for 669 of 5,000 customers left a
    # batch that exited 0. Failures cannot hide: a distinct exit status, and
    # the summary says so first.
    SEVENS = ("return { name = 'sevens', score = function(o, c)\n"
              "  if c.id:sub(-1) == '7' then return c.attrs.nope < 1 end\n"
              "  return o.price end }\n")

    def summary_lines(self, stderr):
        """The summary: from its first line on (engine log lines come before)."""
        lines = [line for line in stderr.splitlines() if "fallback served" not in line]
        return lines

    def test_06_fallbacks_exit_3_and_lead_the_summary(self):
        policy = self.write("sevens.lua", self.SEVENS)
        customers = self.write("ids.txt", "".join(i + "\n" for i in self.ids(500)))
        summary = self.path("summary.json")
        r = self.batch("--customers", customers, "--summary", summary, policy=policy, code=3)
        got = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(got), 500, "the output is complete")
        self.assertEqual(sum(d["fallback"] for d in got), 50)
        lines = self.summary_lines(r.stderr)
        self.assertEqual(lines[0], "nbx batch: 50 of 500 decisions fell back to the fallback "
                                   "decision (10.00 %), more than --max-fallback-rate (0 %): "
                                   "exit status 3", r.stderr)
        self.assertEqual(lines[1], "nbx batch: fallback reasons:")
        self.assertRegex(lines[2], r"^nbx batch:   50 x sevens\.lua:2: attempt to compare .*nil"
                                   r".* \(first: c0000007\)$")
        with open(summary, encoding="utf-8") as f:
            text = f.read()
        s = json.loads(text)
        self.assertTrue(text.startswith('{"status":"fallbacks","exit_status":3,'), text[:80])
        self.assertEqual((s["fallbacks"], s["fallback_rate"], s["max_fallback_rate"]),
                         (50, 0.1, 0))
        self.assertEqual(s["fallback_reasons"][0]["count"], 50)
        self.assertEqual(s["fallback_reasons"][0]["first_customer"], "c0000007")

    def test_07_max_fallback_rate_allows_some(self):
        policy = self.write("sevens.lua", self.SEVENS)
        customers = self.write("ids.txt", "".join(i + "\n" for i in self.ids(500)))
        for rate, code in (("0.1", 0), ("1", 0), ("0.09", 3), ("0", 3)):
            with self.subTest(rate=rate):
                r = self.batch("--customers", customers, "--max-fallback-rate", rate,
                               policy=policy, code=code)
                first = self.summary_lines(r.stderr)[0]
                self.assertTrue(first.startswith("nbx batch: 50 of 500 decisions fell back"),
                                first)
                self.assertIn("within" if code == 0 else "more than", first)
        # no fallback: the summary starts as it always did, exit 0
        r = self.batch("--customers", customers)
        self.assertRegex(r.stderr.splitlines()[0], r"^nbx batch: 500 customers:")
        for bad in ("-0.1", "1.5", "x", "nan", "", "0.1x"):
            r = self.nbx(*self.batch_args("--customers", customers, "--max-fallback-rate", bad))
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("--max-fallback-rate", r.stderr)

    def test_08_failures_come_before_fallbacks(self):
        # a malformed line and fallbacks: the output is incomplete, exit 1
        policy = self.write("sevens.lua", self.SEVENS)
        customers = self.write("ids.txt", "c0000007\n{\"id\": 3}\nc0000001\n")
        r = self.batch("--customers", customers, policy=policy, code=1)
        self.assertIn("1 of 2 decisions fell back", r.stderr)

    def test_09_rerun_of_a_complete_run_with_fallbacks_exits_3(self):
        policy = self.write("sevens.lua", self.SEVENS)
        customers = self.write("ids.txt", "".join(i + "\n" for i in self.ids(30)))
        args = ["--customers", customers, "--out", self.path("o.jsonl"), "--checkpoint",
                self.path("ck")]
        self.batch(*args, policy=policy, code=3)
        r = self.batch(*args, policy=policy, code=3)
        self.assertTrue(self.summary_lines(r.stderr)[0].startswith(
            "nbx batch: 3 of 30 decisions fell back"), r.stderr)
        self.assertIn("already complete", r.stderr)
        self.batch(*args, "--max-fallback-rate", "0.1", policy=policy, code=0)

    def test_10_every_json_written_is_json(self):
        # Issue 10: scores of 1e308 summed to "expected_margin":inf in the
        # summary, which is not JSON.
        policy = self.write("huge.lua", "return { name = 'huge', score = function(o)\n"
                                        "  return 1e308, 1e308 end }\n")
        customers = self.write("ids.txt", "".join(i + "\n" for i in self.ids(20)))
        summary = self.path("summary.json")

        def strict(text):
            def refuse(constant):
                raise ValueError(f"{constant} is not JSON")
            return json.loads(text, parse_constant=refuse)

        r = self.batch("--customers", customers, "--summary", summary, policy=policy)
        for line in r.stdout.splitlines():
            d = strict(line)
            self.assertEqual(d["actions"][0]["expected_margin"], 1e308)
        with open(summary, encoding="utf-8") as f:
            s = strict(f.read())
        self.assertIsNone(s["expected_margin"], "an overflowed sum is null, not inf")
        self.assertIn("expected margin inf", r.stderr)

    def test_11_help_lists_the_exit_statuses(self):
        r = self.ok("batch", "--help")
        for line in ("  0  every customer decided", "  1  something went wrong",
                     "  2  usage error", "  3  every customer decided, but more decisions fell "
                     "back", "--max-fallback-rate R"):
            self.assertIn(line, r.stdout)

    def test_04_progress_only_on_a_terminal(self):
        r = self.batch("--all")
        self.assertNotIn("\r", r.stderr, "no progress when stderr is not a terminal")
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        proc = subprocess.Popen([NBX, *self.batch_args("--all", "--threads", "1",
                                                         "--out", self.path("o.jsonl"))],
                                stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=120)
        os.close(master)
        text = b"".join(chunks).decode(errors="replace")
        self.assertEqual(proc.returncode, 0, text)
        self.assertIn("\r", text)
        self.assertRegex(text, r"\d+\.\d% \d+ customers, \d+/s")
        self.assertIn(f"nbx batch: {PROFILES} customers", text)


if __name__ == "__main__":
    unittest.main()
