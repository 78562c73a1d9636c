"""Tests of the Python binding (bindings/python/nbx): decide, record, batch,
errors and lifetimes, on real stores with the real libnbx."""
import datetime
import json
import os
import random
import shutil
import tempfile
import threading
import unittest

from pyutil import (AS_OF, CATALOG, POLICY, TempDirCase, generated_store, nbx, run_nbx,
                    without_decision_id)

BATCH_PROFILES = 1500


class SmallStoreCase(TempDirCase):
    """Six consenting customers u1..u6 and the test catalog."""

    def setUp(self):
        super().setUp()
        self.store = self.path("store")
        for i in range(1, 7):
            run_nbx("profile", "put", json.dumps({
                "id": f"u{i}", "consent": {"personalization": True, "email": i % 2 == 0},
                "propensity": {"winback_20": i / 10}}), "--store", self.store)

    def engine(self, **kw):
        kw.setdefault("store", self.store)
        kw.setdefault("catalog", CATALOG)
        kw.setdefault("policy", POLICY)
        e = nbx.Engine(**kw)
        self.addCleanup(e.close)
        return e

    def cli_decide(self, customer, *extra):
        r = run_nbx("decide", "--store", self.store, "--catalog", CATALOG, "--policy", POLICY,
                    "--customer", customer, "--as-of", AS_OF, *extra)
        return without_decision_id(r.stdout)


# ===========================================================================
# 1. Engine lifetime
# ===========================================================================

class T01Lifetime(SmallStoreCase):

    def test_01_context_manager_and_idempotent_close(self):
        with nbx.Engine(store=self.store, catalog=CATALOG, policy=POLICY) as e:
            self.assertFalse(e.closed)
            self.assertEqual(e.decide("u1", as_of=AS_OF)["customer"], "u1")
        self.assertTrue(e.closed)
        e.close()
        e.close()
        with self.assertRaises(nbx.InvalidArgument) as cm:
            e.decide("u1")
        self.assertIn("closed", cm.exception.message)

    def test_02_open_errors_carry_code_and_message(self):
        cases = [
            (dict(catalog=self.path("missing.json")), nbx.NotFound, "missing.json"),
            (dict(policy=self.write("bad.lua", "return {")), nbx.PolicyError, "bad.lua"),
            (dict(catalog=self.write("bad.json", '{"placements": 3}')), nbx.ParseError,
             "placements"),
            (dict(store=self.path("no-store")), nbx.NotFound, ""),
        ]
        for kw, cls, says in cases:
            with self.subTest(kw=kw):
                with self.assertRaises(cls) as cm:
                    self.engine(**kw)
                self.assertIsInstance(cm.exception, nbx.Error)
                self.assertEqual(cm.exception.code, cls.code)
                self.assertIn(says, cm.exception.message)
                self.assertIn(says, str(cm.exception))

    def test_03_info(self):
        info = self.engine().info()
        self.assertEqual(info["policy_name"], "margin_per_session")
        self.assertRegex(info["policy_version"], r"^[0-9a-f]{16}$")
        self.assertRegex(info["catalog_version"], r"^[0-9a-f]{16}$")
        self.assertEqual((info["offers"], info["placements"]), (8, 2))

    def test_04_error_classes(self):
        self.assertTrue(issubclass(nbx.InvalidArgument, ValueError))
        self.assertTrue(issubclass(nbx.ParseError, ValueError))
        self.assertTrue(issubclass(nbx.NotFound, LookupError))
        err = nbx.error_for(-12, "read-only")
        self.assertIsInstance(err, nbx.ReadOnly)
        self.assertEqual((err.code, err.name, err.message), (-12, "NBX_EREADONLY", "read-only"))
        self.assertEqual(type(nbx.error_for(-99, "x")), nbx.Error)

    def test_05_not_usable_after_fork(self):
        e = self.engine()
        e.decide("u1", as_of=AS_OF)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                e.decide("u1")
            except nbx.InvalidArgument as err:
                code = 0 if "another process" in err.message else 4
            except BaseException:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(e.decide("u1", as_of=AS_OF)["customer"], "u1", "the parent still works")


# ===========================================================================
# 2. decide
# ===========================================================================

class T02Decide(SmallStoreCase):

    def test_01_same_as_the_cli(self):
        e = self.engine(readonly=True)
        for customer in ("u1", "u2", "stranger"):
            self.assertEqual(without_decision_id(e.decide(customer, as_of=AS_OF)),
                             self.cli_decide(customer))
        got = e.decide("u2", session={"channel": "email", "n": 3, "vip": True},
                       placements=["recs"], explain=True, as_of=AS_OF)
        want = self.cli_decide("u2", "--session", "channel=email", "--session", "n=3",
                               "--session", "vip=true", "--placement", "recs", "--explain")
        self.assertEqual(without_decision_id(got), want)
        self.assertTrue(got["candidates"])
        self.assertTrue(all(a["placement"] == "recs" for a in got["actions"]))

    def test_02_as_of_forms(self):
        e = self.engine(readonly=True)
        want = "2026-03-10T12:00:00Z"
        forms = [AS_OF, "1773144000", 1773144000, 1773144000.0,
                 datetime.datetime(2026, 3, 10, 12, 0, 0),
                 datetime.datetime(2026, 3, 10, 13, 0, 0,
                                   tzinfo=datetime.timezone(datetime.timedelta(hours=1)))]
        for form in forms:
            with self.subTest(as_of=form):
                self.assertEqual(e.decide("u1", as_of=form)["as_of"], want)
        with self.assertRaises(nbx.ParseError):
            e.decide("u1", as_of="yesterday")

    def test_03_bad_requests(self):
        e = self.engine(readonly=True)
        with self.assertRaises(nbx.InvalidArgument) as cm:
            e.decide("u1", placements=["nowhere"])
        self.assertIn("nowhere", cm.exception.message)
        self.assertEqual(cm.exception.code, -1)
        with self.assertRaises(nbx.InvalidArgument):
            e.decide("")
        with self.assertRaises(nbx.InvalidArgument):
            e.decide("x" * 300)
        with self.assertRaises(nbx.InvalidArgument):
            e.decide(42)

    def test_04_policy_failure_is_a_fallback_not_an_error(self):
        policy = self.write("failing.lua", "return { name = 'f', score = function() error('x') end }")
        seen = []
        e = self.engine(policy=policy, log=lambda level, msg: seen.append((level, msg)))
        r = e.decide("u1", as_of=AS_OF)
        self.assertTrue(r["fallback"])
        self.assertEqual(r["error"]["kind"], "runtime")
        self.assertTrue(seen and seen[0][0] == 0 and "fallback" in seen[0][1], seen)

    def test_05_threads_get_their_own_contexts(self):
        e = self.engine(readonly=True)
        want = {c: without_decision_id(e.decide(c, as_of=AS_OF)) for c in ("u1", "u2", "u3")}
        errors = []

        def work(seed):
            rnd = random.Random(seed)
            try:
                for _ in range(200):
                    c = rnd.choice(list(want))
                    got = without_decision_id(e.decide(c, as_of=AS_OF))
                    if got != want[c]:
                        errors.append((c, got))
            except Exception as ex:  # reported below
                errors.append(ex)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(e._contexts), 5, "one context per thread that decided")


# ===========================================================================
# 3. record
# ===========================================================================

class T03Record(SmallStoreCase):

    def impression(self, n, offer="free_shipping", customer="u1"):
        return {"event_id": f"imp-{customer}-{n}", "customer": customer, "type": "impression",
                "ts": "2026-03-10T10:00:00Z", "offer": offer, "placement": "recs"}

    def test_01_applied_then_duplicate(self):
        e = self.engine()
        self.assertTrue(e.record(self.impression(1)))
        self.assertFalse(e.record(self.impression(1)))
        self.assertTrue(e.record(json.dumps(self.impression(2))))
        self.assertTrue(e.record(json.dumps(self.impression(3)).encode()))

    def test_02_recorded_impressions_reach_the_cap(self):
        e = self.engine()
        offers = lambda r: {a["offer"] for a in r["actions"]}
        self.assertIn("free_shipping", offers(e.decide("u1", as_of=AS_OF)))
        for n in range(3):  # the cap is 3 impressions in 7 days
            e.record(self.impression(n))
        r = e.decide("u1", as_of=AS_OF, explain=True)
        self.assertNotIn("free_shipping", offers(r))
        self.assertIn("frequency", {c["excluded"] for c in r["candidates"]
                                    if c["offer"] == "free_shipping"})

    def test_03_errors(self):
        e = self.engine()
        with self.assertRaises(nbx.ParseError) as cm:
            e.record({"event_id": "x", "customer": "u1", "type": "teleport", "ts": AS_OF})
        self.assertIn("type", cm.exception.message)
        with self.assertRaises(nbx.ParseError):
            e.record("{not json")
        ro = self.engine(readonly=True)
        with self.assertRaises(nbx.ReadOnly):
            ro.record(self.impression(9))

    def test_04_decide_with_record(self):
        e = self.engine()
        r = e.decide("u3", as_of=AS_OF, record=True)
        dup = {"event_id": f"{r['decision_id']}:0", "customer": "u3", "type": "impression",
               "ts": AS_OF, "offer": r["actions"][0]["offer"]}
        self.assertFalse(e.record(dup), "the decision's impression was recorded")


# ===========================================================================
# 4. batch
# ===========================================================================

class T04Batch(TempDirCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="nbx-py-batch-")
        cls.store, cls.catalog = generated_store(cls.dir, BATCH_PROFILES)
        cls.ids = [f"c{i:07d}" for i in range(1, BATCH_PROFILES + 1)]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, True)

    def engine(self, **kw):
        e = nbx.Engine(store=self.store, catalog=self.catalog, policy=POLICY,
                       readonly=kw.pop("readonly", True), **kw)
        self.addCleanup(e.close)
        return e

    def test_01_batch_equals_decide_in_input_order(self):
        e = self.engine()
        ids = self.ids[:300] + ["ghost"]
        random.Random(1).shuffle(ids)
        got = list(e.batch(ids, threads=2, as_of=AS_OF))
        self.assertEqual([g["customer"] for g in got], ids)
        for g in got:
            self.assertEqual(without_decision_id(g),
                             without_decision_id(e.decide(g["customer"], as_of=AS_OF)))

    def test_02_same_results_for_any_thread_count(self):
        e = self.engine()
        runs = [[without_decision_id(r) for r in e.batch(self.ids, threads=t, window=w,
                                                          as_of=AS_OF)]
                for t, w in ((1, 1), (2, None), (4, 7))]
        self.assertEqual(len(runs[0]), BATCH_PROFILES)
        self.assertEqual(runs[0], runs[1])
        self.assertEqual(runs[0], runs[2])

    def test_03_items_with_session_fields(self):
        e = self.engine()
        items = ["c0000001", {"id": "c0000002", "channel": "push", "tier": 2, "x": None}]
        got = list(e.batch(items, session={"channel": "email", "page": "home"},
                           placements=["hero", "recs"], as_of=AS_OF))
        want = [e.decide("c0000001", session={"channel": "email", "page": "home"},
                         placements=["hero", "recs"], as_of=AS_OF),
                e.decide("c0000002", session={"channel": "push", "page": "home", "tier": 2},
                         placements=["hero", "recs"], as_of=AS_OF)]
        self.assertEqual([without_decision_id(g) for g in got],
                         [without_decision_id(w) for w in want])

    def test_04_one_clock_by_default(self):
        e = self.engine()
        as_of = {r["as_of"] for r in e.batch(self.ids[:500], threads=2)}
        self.assertEqual(len(as_of), 1)

    def test_05_on_error(self):
        e = self.engine()
        items = ["c0000001", "", {"channel": "x"}, "c0000002", "y" * 300, "c0000003"]
        with self.assertRaises(nbx.InvalidArgument):
            list(e.batch(items))
        got = list(e.batch(items, on_error="skip"))
        self.assertEqual([g["customer"] for g in got], ["c0000001", "c0000002", "c0000003"])
        got = list(e.batch(items, on_error="return"))
        self.assertEqual(len(got), 6)
        self.assertEqual(got[1]["error"]["name"], "NBX_EINVAL")
        self.assertEqual(got[2]["error"]["name"], "NBX_EPARSE")
        self.assertEqual(got[4]["error"]["code"], -1)
        self.assertEqual([g["customer"] for g in got[::3]], ["c0000001", "c0000002"])
        with self.assertRaises(nbx.InvalidArgument):
            e.batch([], on_error="ignore")

    def test_06_raise_comes_in_order(self):
        e = self.engine()
        seen = []
        with self.assertRaises(nbx.InvalidArgument):
            for r in e.batch(["c0000001", "c0000002", "", "c0000003"]):
                seen.append(r["customer"])
        self.assertEqual(seen, ["c0000001", "c0000002"])

    def test_07_shards_partition(self):
        e = self.engine()
        got = []
        for i in range(3):
            part = [r["customer"] for r in e.batch(self.ids, shard=(i, 3), as_of=AS_OF)]
            self.assertTrue(all(nbx.shard_of(c, 3) == i for c in part))
            self.assertEqual(part, [c for c in e.customer_ids(shard=(i, 3))])
            got += part
        self.assertEqual(sorted(got), self.ids)
        cli = run_nbx("batch", "--store", self.store, "--catalog", self.catalog, "--policy",
                      POLICY, "--all", "--shard", "1/3", "--as-of", AS_OF)
        self.assertEqual([json.loads(line)["customer"] for line in cli.stdout.splitlines()],
                         list(e.customer_ids(shard=(1, 3))))

    def test_08_customer_ids(self):
        e = self.engine()
        self.assertEqual(list(e.customer_ids()), self.ids)
        self.assertEqual(list(e.customer_ids(after="c0001495")), self.ids[-5:])
        with self.assertRaises(nbx.InvalidArgument):
            nbx.shard_of("x", 0)

    def test_09_raw_and_record(self):
        e = self.engine()
        raw = list(e.batch(["c0000001"], raw=True, as_of=AS_OF))
        self.assertIsInstance(raw[0], str)
        self.assertEqual(json.loads(raw[0])["customer"], "c0000001")
        with self.assertRaises(nbx.ReadOnly):
            e.batch(["c0000001"], record=True)

    def test_10_abandoned_and_closed_batches(self):
        e = self.engine()
        gen = e.batch(self.ids, threads=2)
        first = next(gen)
        self.assertEqual(first["customer"], "c0000001")
        gen.close()  # stops the workers, frees the window
        gen = e.batch(self.ids, threads=2)
        next(gen)
        e.close()  # closes the batch first
        with self.assertRaises(nbx.InvalidArgument):
            for _ in gen:
                pass


# ===========================================================================
# 5. Arguments are checked, never silently bent
# ===========================================================================

class T05Arguments(SmallStoreCase):

    def assertInvalid(self, call, says):
        with self.assertRaises(nbx.InvalidArgument) as cm:
            call()
        self.assertIn(says, cm.exception.message)
        return cm.exception

    def test_01_nul_in_strings(self):
        e = self.engine(readonly=True)
        self.assertInvalid(lambda: e.decide("u1\0x"), "customer must not contain NUL")
        self.assertInvalid(lambda: e.decide(b"u1\0x"), "must not contain NUL")
        self.assertInvalid(lambda: e.decide("u1", session={"k": "a\0b"}), "must not contain NUL")
        self.assertInvalid(lambda: e.decide("u1", placements=["hero\0"]), "must not contain NUL")
        got = list(e.batch(["u1", "u2\0x", "u3"], on_error="return", as_of=AS_OF))
        self.assertEqual([g["customer"] for g in got], ["u1", "u2\0x", "u3"])
        self.assertEqual(got[1]["error"]["name"], "NBX_EINVAL")
        self.assertIn("NUL", got[1]["error"]["message"])

    def test_02_shards(self):
        e = self.engine(readonly=True)
        for bad, says in (((0, 0), "the count must be from 1"), ((3, 3), "0..2"),
                          ((-1, 3), "0..2"), ((True, 2), "integers"), (("0", 3), "integers"),
                          ((1,), "a pair"), (3, "a pair")):
            with self.subTest(shard=bad):
                self.assertInvalid(lambda: e.batch(["u1"], shard=bad), says)
                err = self.assertInvalid(lambda: list(e.customer_ids(shard=bad)), says)
                self.assertNotIn("..-1", err.message)

    def test_03_customers_must_be_an_iterable_of_items(self):
        e = self.engine(readonly=True)
        for bad in ("u1", b"u1"):
            self.assertInvalid(lambda: e.batch(bad), "not a single string")
        self.assertInvalid(lambda: e.batch(5), "iterable")

    def test_04_as_of_out_of_range(self):
        e = self.engine(readonly=True)
        for bad in (1e20, -1e12, float("nan"), float("inf"), 10 ** 30):
            with self.subTest(as_of=bad):
                self.assertInvalid(lambda: e.decide("u1", as_of=bad), "as_of")
                self.assertInvalid(lambda: e.batch(["u1"], as_of=bad), "as_of")
                self.assertInvalid(lambda: nbx.as_of_ms(bad), "as_of")
        self.assertEqual(nbx.as_of_ms(253402300799), 253402300799000)

    def test_05_threads_and_window(self):
        e = self.engine(readonly=True)
        for name in ("threads", "window"):
            for bad in (-1, 2.5, True, "2", 10 ** 9):
                with self.subTest(name=name, value=bad):
                    self.assertInvalid(lambda: e.batch(["u1"], **{name: bad}), name)
        self.assertEqual(len(list(e.batch(["u1", "u2"], threads=1, window=1))), 2)

    def test_05b_engine_limits(self):
        # ctypes wraps what does not fit the C field: -1 was 71 minutes of
        # CPU per decision, 2**32 the default, -1 bytes no memory limit.
        for name, bads in (("time_limit_us", (-1, 2 ** 32, 2.5, True, "2000")),
                           ("memory_limit", (-1, 2 ** 64, 1.5, True, "32m"))):
            for bad in bads:
                with self.subTest(name=name, value=bad):
                    self.assertInvalid(lambda: self.engine(**{name: bad}), name)
        e = self.engine(readonly=True, time_limit_us=5000, memory_limit=64 << 20)
        self.assertEqual(e.decide("u1", as_of=AS_OF)["customer"], "u1")
        e = self.engine(readonly=True, time_limit_us=None, memory_limit=0)
        self.assertEqual(e.decide("u1", as_of=AS_OF)["customer"], "u1")

    def test_06_session_must_be_a_mapping(self):
        e = self.engine(readonly=True)
        for bad in ("page=/home", [("page", "/home")], 3):
            with self.subTest(session=bad):
                self.assertInvalid(lambda: e.decide("u1", session=bad), "mapping")
                self.assertInvalid(lambda: e.batch(["u1"], session=bad), "mapping")
        got = list(e.batch([{"id": "u1", "page": "/home"}], session={"channel": "email"}))
        self.assertEqual(got[0]["customer"], "u1")

    def test_06b_placements_must_be_ids(self):
        e = self.engine(readonly=True)
        for bad in (5, 2.5, object()):
            with self.subTest(placements=bad):
                self.assertInvalid(lambda: e.decide("u1", placements=bad), "placements")
                self.assertInvalid(lambda: e.batch(["u1"], placements=bad), "placements")
        self.assertInvalid(lambda: e.decide("u1", placements=[3]), "a placement")
        # any iterable of ids, as a list is
        one = e.decide("u1", placements=["hero"], as_of=AS_OF)
        self.assertEqual(e.decide("u1", placements=iter(["hero"]), as_of=AS_OF)["actions"],
                         one["actions"])
        self.assertEqual(e.decide("u1", placements="hero", as_of=AS_OF)["actions"],
                         one["actions"])

    def test_07_item_without_an_id(self):
        e = self.engine(readonly=True)
        got = list(e.batch(["u1", "u2", {"channel": "x"}, "u3"], on_error="return"))
        self.assertEqual(got[2]["customer"], None, "not the whole dict")
        self.assertEqual(got[2]["error"]["name"], "NBX_EPARSE")
        self.assertEqual(got[2]["error"]["message"], "item 2 has no id")
        with self.assertRaises(nbx.ParseError) as cm:
            list(e.batch(["u1", {"channel": "x"}]))
        self.assertEqual(cm.exception.message, "item 1 has no id")


# ===========================================================================
# 6. batch(record=True): every customer recorded reaches the consumer
# ===========================================================================

class T06RecordedBatch(SmallStoreCase):

    def recorded(self):
        return json.loads(run_nbx("stats", "--json", "--store", self.store).stdout)["events_seen"]

    def test_01_a_bad_item_stops_the_reading(self):
        e = self.engine()
        seen = []
        with self.assertRaises(nbx.InvalidArgument):
            for r in e.batch(["u1", "u2", "x" * 300, "u3", "u4"], record=True, window=8,
                             as_of=AS_OF):
                seen.append(r)
        self.assertEqual([r["customer"] for r in seen], ["u1", "u2"])
        self.assertEqual(self.recorded(), sum(len(r["actions"]) for r in seen),
                         "customers after the bad item were recorded but never returned")

    def test_02_window_bounds_what_an_early_stop_leaves_recorded(self):
        e = self.engine()
        gen = e.batch(["u1", "u2", "u3", "u4"], record=True, window=1, as_of=AS_OF)
        first = next(gen)
        gen.close()
        self.assertEqual(self.recorded(), len(first["actions"]))


# ===========================================================================
# 7. A planning batch counts its own actions against daily budgets
# ===========================================================================

class T07PlannedBudgets(SmallStoreCase):
    """Engine.batch() goes through nbx_batch: a plan (record=False) gives a
    budgeted offer to no more customers than its daily budget, as a
    recording batch does (issue 10, section 7)."""

    def test_01_plan_and_record_reach_the_budget(self):
        with open(CATALOG, encoding="utf-8") as f:
            cat = json.load(f)
        for o in cat["offers"]:
            if o["id"] == "free_shipping":
                o["budget"] = {"daily_impressions": 2}
        catalog = self.write("budget.json", json.dumps(cat))
        policy = self.write("fs_first.lua", "return { name = 'fs_first', score = function(o)\n"
                                            "  if o.id == 'free_shipping' then return 100 end\n"
                                            "  return o.price end }\n")
        ids = ["u1", "u2", "u3", "u4", "u5", "u6"]

        def free_shipping(**kw):
            return sum(a["offer"] == "free_shipping" for r in e.batch(ids, as_of=AS_OF, **kw)
                       for a in r["actions"])

        e = self.engine(catalog=catalog, policy=policy)
        for threads in (1, 2):
            self.assertEqual(free_shipping(threads=threads), 2, f"{threads} threads")
        plan = [without_decision_id(r) for r in e.batch(ids, threads=1, as_of=AS_OF)]
        recorded = [without_decision_id(r) for r in
                    e.batch(ids, threads=1, as_of=AS_OF, record=True)]
        self.assertEqual(plan, recorded)
        self.assertEqual(free_shipping(threads=2), 0, "the recorded run spent the budget")


if __name__ == "__main__":
    unittest.main()
