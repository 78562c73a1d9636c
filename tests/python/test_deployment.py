"""Tests of nbx.Engine(deployment=...): arms, holdout, shadow policies and
reloads through the Python binding, on a real store with the real libnbx;
the same customer gets the same arm here as from the nbx CLI.
"""
import json
import os
import unittest

import nbx
from pyutil import (AS_OF, CATALOG, SOURCE_DIR, TempDirCase, consenting_store, run_nbx,
                    without_decision_id)

POLICIES = os.path.join(SOURCE_DIR, "policies")
CUSTOMERS = [f"u{i}" for i in range(1, 121)]


class DeploymentCase(TempDirCase):

    def setUp(self):
        super().setUp()
        self.store = consenting_store(self.path("store"), CUSTOMERS[:30], {"winback_20": 0.3})
        self.deployment = self.write_deployment("q4.json", holdout=10, shadow=["retention.lua"])

    def write_deployment(self, name, holdout=10, shadow=(), arms=None, salt="q4-2026"):
        arms = arms or [{"name": "champion", "percent": 70,
                         "policy": os.path.join(POLICIES, "margin_per_session.lua")},
                        {"name": "challenger", "percent": 30,
                         "policy": os.path.join(POLICIES, "retention.lua")}]
        path = self.path(name)
        with open(path, "w") as f:
            json.dump({"name": "q4", "salt": salt, "holdout": {"percent": holdout},
                       "arms": arms, "shadow": [os.path.join(POLICIES, s) for s in shadow]}, f)
        return path

    def engine(self, **kw):
        kw.setdefault("store", self.store)
        kw.setdefault("catalog", CATALOG)
        kw.setdefault("deployment", self.deployment)
        e = nbx.Engine(**kw)
        self.addCleanup(e.close)
        return e


class T01Serve(DeploymentCase):

    def test_01_same_arm_as_the_cli_for_every_customer(self):
        e = self.engine(readonly=True)
        seen = set()
        for c in CUSTOMERS[:40]:
            mine = e.decide(c, as_of=AS_OF)
            cli = json.loads(run_nbx("decide", "--store", self.store, "--catalog", CATALOG,
                                     "--deployment", self.deployment, "--customer", c,
                                     "--as-of", AS_OF).stdout)
            self.assertEqual(mine["arm"], cli["arm"], c)
            self.assertEqual(mine["arm"], e.arm_of(c))
            self.assertEqual(without_decision_id(mine), without_decision_id(cli))
            self.assertTrue(mine["decision_id"].endswith(".q4." + mine["arm"]))
            seen.add(mine["arm"])
        self.assertEqual(seen, {"holdout", "champion", "challenger"})

    def test_02_batch_gives_each_customer_their_arm(self):
        e = self.engine(readonly=True)
        got = list(e.batch(CUSTOMERS, threads=2, as_of=AS_OF))
        self.assertEqual([g["customer"] for g in got], CUSTOMERS)
        for g in got:
            self.assertEqual(g["arm"], e.arm_of(g["customer"]))
            self.assertEqual(without_decision_id(g),
                             without_decision_id(e.decide(g["customer"], as_of=AS_OF)))

    def test_03_holdout_gets_the_fallback_actions(self):
        e = self.engine(readonly=True)
        c = next(c for c in CUSTOMERS if e.arm_of(c) == "holdout")
        r = e.decide(c, as_of=AS_OF)
        self.assertIsNone(r["policy"])
        self.assertFalse(r["fallback"])
        self.assertEqual([a["offer"] for a in r["actions"]], ["brand_banner", "bestsellers"])
        self.assertTrue(all(a["probability"] == 1 for a in r["actions"]))

    def test_04_info_names_the_deployment(self):
        e = self.engine(readonly=True)
        info = e.info()
        self.assertEqual(info["deployment"]["name"], "q4")
        self.assertRegex(info["deployment"]["version"], r"^[0-9a-f]{16}$")
        self.assertEqual(info["policy_name"], "margin_per_session", "the first arm's")
        plain = nbx.Engine(store=self.store, catalog=CATALOG,
                           policy=os.path.join(POLICIES, "retention.lua"), readonly=True)
        self.addCleanup(plain.close)
        self.assertIsNone(plain.info()["deployment"])
        self.assertIsNone(plain.arm_of("u1"))
        self.assertIsNone(plain.decide("u1", as_of=AS_OF)["arm"])

    def test_05_assign_bucket_is_the_formula_s(self):
        # held out below 1000 (10 %): the bucket decides the holdout
        e = self.engine(readonly=True)
        for c in CUSTOMERS:
            b = nbx.assign_bucket("q4-2026", c)
            self.assertTrue(0 <= b < 10000)
            self.assertEqual(b < 1000, e.arm_of(c) == "holdout", c)

    def test_06_policy_or_deployment_exactly_one(self):
        with self.assertRaises(nbx.InvalidArgument):
            nbx.Engine(store=self.store, catalog=CATALOG)
        with self.assertRaises(nbx.InvalidArgument):
            nbx.Engine(store=self.store, catalog=CATALOG, deployment=self.deployment,
                       policy=os.path.join(POLICIES, "retention.lua"))


class T02Shadow(DeploymentCase):

    def test_01_a_failing_shadow_changes_nothing_served_and_consumes_no_caps(self):
        failing = self.path("failing.lua")
        with open(failing, "w") as f:
            f.write("return {name = 'failing', score = function(o) error('boom') end}\n")
        arms = [{"name": "only", "percent": 100,
                 "policy": os.path.join(POLICIES, "margin_per_session.lua")}]
        plain = self.write_deployment("plain.json", holdout=0, arms=arms)
        shadowed = self.write_deployment("shadowed.json", holdout=0, arms=arms,
                                         shadow=["retention.lua", failing])
        e1 = self.engine(deployment=plain, readonly=True)
        e2 = self.engine(deployment=shadowed)
        recorded = 0
        for c in CUSTOMERS[:10]:
            a = e1.decide(c, as_of=AS_OF)
            b = e2.decide(c, as_of=AS_OF, record=True)
            self.assertEqual(a["actions"], b["actions"], c)
            self.assertFalse(b["fallback"])
            self.assertEqual([s["policy"]["name"] for s in b["shadow"]],
                             ["retention", "failing"])
            self.assertTrue(b["shadow"][1]["fallback"])
            self.assertEqual(b["shadow"][1]["error"]["kind"], "runtime")
            recorded += len(b["actions"])
        stats = json.loads(run_nbx("stats", "--json", "--store", self.store).stdout)
        self.assertEqual(stats["events_seen"], recorded, "only the served actions are recorded")


class T03Reload(DeploymentCase):

    def test_01_a_broken_deployment_is_refused_and_the_old_one_serves(self):
        e = self.engine(readonly=True)
        c = next(c for c in CUSTOMERS if e.arm_of(c) == "challenger")
        bad = self.path("bad.json")
        with open(bad, "w") as f:
            f.write('{"name": "q5", "salt": "s", "arms": []}')
        with self.assertRaises(nbx.ParseError) as cm:
            e.load_deployment(bad)
        self.assertIn("bad.json", str(cm.exception))
        self.assertEqual(e.decide(c, as_of=AS_OF)["arm"], "challenger")
        good = self.write_deployment("next.json", holdout=0, arms=[
            {"name": "all", "percent": 100, "policy": os.path.join(POLICIES, "retention.lua")}])
        e.load_deployment(good)
        r = e.decide(c, as_of=AS_OF)
        self.assertEqual(r["arm"], "all")
        self.assertEqual(r["policy"]["name"], "retention")


if __name__ == "__main__":
    unittest.main()
