"""Tests of `--deployment FILE` for `nbx decide` and `nbx batch`: the real
binary on a real store. Run by ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_deployment`.

The arm each customer should get is computed here from the documented
formula (docs/experiments.md, "Assignment") with an XXH64 written from its
specification (test_batch), so the test checks the promise, not the code.
"""
import csv
import io
import json
import os
import unittest

from cliutil import CATALOG, SOURCE_DIR, CliTestCase
from test_batch import xxh64

AS_OF = "2026-03-10T12:00:00Z"
POLICIES = os.path.join(SOURCE_DIR, "policies")
CUSTOMERS = [f"c{i:04d}" for i in range(200)]


def expected_arm(salt, holdout_percent, arms, customer):
    """arms: [(name, percent)]; the documented assignment."""
    bucket = xxh64(customer.encode(), xxh64(salt.encode())) % 10000
    held = round(holdout_percent * 100)
    if bucket < held:
        return "holdout"
    cumulative = 0
    for name, percent in arms:
        cumulative += round(percent * 100)
        if bucket < held + (10000 - held) * cumulative // 10000:
            return name
    return arms[-1][0]


class DeploymentCase(CliTestCase):
    SALT = "q4-2026"
    ARMS = [("champion", 70), ("challenger", 30)]

    def setUp(self):
        super().setUp()
        self.write_jsonl("profiles.jsonl", [
            {"id": c, "consent": {"personalization": True, "email": True},
             "propensity": {"free_shipping": 0.1}} for c in CUSTOMERS[:50]])
        self.ok("import", "profiles", self.path("profiles.jsonl"), "--store", self.store)
        self.deployment = self.write("q4.json", json.dumps({
            "name": "q4", "salt": self.SALT, "holdout": {"percent": 10},
            "arms": [{"name": "champion", "percent": 70,
                      "policy": os.path.join(POLICIES, "margin_per_session.lua")},
                     {"name": "challenger", "percent": 30,
                      "policy": os.path.join(POLICIES, "retention.lua")}],
            "shadow": [os.path.join(POLICIES, "retention.lua")]}))

    def arm_of(self, customer):
        return expected_arm(self.SALT, 10, self.ARMS, customer)

    def decide(self, customer, *extra):
        r = self.ok("decide", "--store", self.store, "--catalog", CATALOG, "--deployment",
                    self.deployment, "--customer", customer, "--as-of", AS_OF, *extra)
        return json.loads(r.stdout)


class T01Decide(DeploymentCase):

    def test_01_each_customer_gets_the_arm_of_the_formula(self):
        seen = set()
        for c in CUSTOMERS[:60]:
            d = self.decide(c)
            want = self.arm_of(c)
            seen.add(want)
            self.assertEqual(d["arm"], want, c)
            self.assertEqual(d["deployment"]["name"], "q4")
            self.assertRegex(d["deployment"]["version"], r"^[0-9a-f]{16}$")
            self.assertTrue(d["decision_id"].endswith(f".q4.{want}"), d["decision_id"])
            self.assertEqual(len(d["decision_id"]), 36 + len(f".q4.{want}"))
            for a in d["actions"]:
                self.assertEqual(a["probability"], 1)
            policy = d["policy"]
            if want == "holdout":
                self.assertIsNone(policy)
            else:
                self.assertEqual(policy["name"],
                                 "margin_per_session" if want == "champion" else "retention")
            self.assertEqual(len(d["shadow"]), 1)
            self.assertEqual(d["shadow"][0]["policy"]["name"], "retention")
        self.assertEqual(seen, {"holdout", "champion", "challenger"})

    def test_02_the_same_customer_always_gets_the_same_arm(self):
        c = next(c for c in CUSTOMERS if self.arm_of(c) == "challenger")
        arms = {self.decide(c)["arm"] for _ in range(3)}
        self.assertEqual(arms, {"challenger"})

    def test_03_the_holdout_gets_the_catalog_s_fallback_actions(self):
        c = next(c for c in CUSTOMERS[:50] if self.arm_of(c) == "holdout")
        d = self.decide(c)
        self.assertEqual(d["arm"], "holdout")
        self.assertFalse(d["fallback"], "the control treatment is not a failure")
        self.assertNotIn("error", d)
        self.assertEqual([(a["offer"], a["placement"]) for a in d["actions"]],
                         [("brand_banner", "hero"), ("bestsellers", "recs")])

    def test_04_record_with_a_deployment_records_the_served_actions_only(self):
        c = next(c for c in CUSTOMERS[:50] if self.arm_of(c) == "champion")
        d = self.decide(c, "--record")
        events = self.stats()["events_seen"]
        self.assertEqual(events, len(d["actions"]), "shadow actions must not be recorded")

    def test_05_policy_or_deployment_not_both_nor_neither(self):
        base = ["decide", "--store", self.store, "--catalog", CATALOG, "--customer", "c0001"]
        r = self.fails(2, *base, "--deployment", self.deployment, "--policy",
                       os.path.join(POLICIES, "retention.lua"))
        self.assertIn("not both", r.stderr)
        r = self.fails(2, *base)
        self.assertIn("--policy FILE or --deployment FILE is required", r.stderr)

    def test_06_a_broken_deployment_names_file_and_field(self):
        bad = self.write("bad.json", json.dumps({
            "name": "q4", "salt": "s",
            "arms": [{"name": "a", "percent": 60,
                      "policy": os.path.join(POLICIES, "retention.lua")}]}))
        r = self.fails(1, "decide", "--store", self.store, "--catalog", CATALOG,
                       "--deployment", bad, "--customer", "c0001")
        self.assertIn("bad.json: field 'arms'", r.stderr)
        self.assertEqual(r.stdout, "")
        missing = self.write("missing.json", json.dumps({
            "name": "q4", "salt": "s",
            "arms": [{"name": "a", "percent": 100, "policy": "nowhere.lua"}]}))
        r = self.fails(1, "decide", "--store", self.store, "--catalog", CATALOG,
                       "--deployment", missing, "--customer", "c0001")
        self.assertIn("arm 'a'", r.stderr)
        self.assertIn("nowhere.lua", r.stderr)

    def test_07_policy_paths_are_relative_to_the_deployment_file(self):
        sub = self.path("sub")
        os.mkdir(sub)
        with open(os.path.join(sub, "p.lua"), "w") as f:
            f.write("return {name = 'local_one', score = function(o) return 1 end}\n")
        with open(os.path.join(sub, "d.json"), "w") as f:
            json.dump({"name": "rel", "salt": "s",
                       "arms": [{"name": "all", "percent": 100, "policy": "p.lua"}]}, f)
        r = self.ok("decide", "--store", self.store, "--catalog", CATALOG, "--deployment",
                    os.path.join(sub, "d.json"), "--customer", "c0001", "--as-of", AS_OF)
        self.assertEqual(json.loads(r.stdout)["policy"]["name"], "local_one")


class T02Batch(DeploymentCase):

    def batch(self, *extra):
        self.write("customers.txt", "".join(c + "\n" for c in CUSTOMERS))
        return self.ok("batch", "--store", self.store, "--catalog", CATALOG, "--deployment",
                       self.deployment, "--customers", self.path("customers.txt"), "--as-of",
                       AS_OF, "--threads", "2", *extra)

    def test_01_jsonl_each_customer_by_their_arm_as_decide_does(self):
        lines = [json.loads(line) for line in self.batch().stdout.splitlines()]
        self.assertEqual([d["customer"] for d in lines], CUSTOMERS)
        for d in lines:
            self.assertEqual(d["arm"], self.arm_of(d["customer"]), d["customer"])
            self.assertTrue(d["decision_id"].endswith(".q4." + d["arm"]))
        for d in lines[:10]:
            one = self.decide(d["customer"])
            for k in ("decision_id",):
                one.pop(k)
                d.pop(k)
            self.assertEqual(one, d, "batch and decide agree")

    def test_02_csv_has_the_arm_and_the_arm_s_policy_version(self):
        rows = list(csv.DictReader(io.StringIO(self.batch("--format", "csv").stdout)))
        self.assertEqual(list(rows[0].keys())[-1], "arm")
        versions = {}
        for row in rows:
            want = self.arm_of(row["customer"])
            self.assertEqual(row["arm"], want)
            versions.setdefault(want, set()).add(row["policy_version"])
        self.assertEqual(versions["holdout"], {""}, "the control treatment runs no policy")
        self.assertEqual(len(versions["champion"]), 1)
        self.assertEqual(len(versions["challenger"]), 1)
        self.assertNotEqual(versions["champion"], versions["challenger"])

    def test_03_summary_names_the_deployment_version(self):
        self.batch("--summary", self.path("summary.json"))
        with open(self.path("summary.json")) as f:
            summary = json.load(f)
        d = self.decide("c0001")
        self.assertEqual(summary["deployment_version"], d["deployment"]["version"])

    def test_04_a_resume_with_another_deployment_is_refused(self):
        out, ck = self.path("out.jsonl"), self.path("ck")
        self.batch("--out", out, "--checkpoint", ck, "--checkpoint-every", "10")
        # the same run again: finished, nothing to do
        self.batch("--out", out, "--checkpoint", ck, "--checkpoint-every", "10")
        other = json.load(open(self.deployment))
        other["salt"] = "another"
        with open(self.deployment, "w") as f:
            json.dump(other, f)
        self.write("customers.txt", "".join(c + "\n" for c in CUSTOMERS))
        r = self.fails(1, "batch", "--store", self.store, "--catalog", CATALOG,
                       "--deployment", self.deployment, "--customers",
                       self.path("customers.txt"), "--as-of", AS_OF, "--threads", "2",
                       "--out", out, "--checkpoint", ck, "--checkpoint-every", "10")
        self.assertIn("deployment_version", r.stderr)

    def test_05_policy_or_deployment_not_both(self):
        self.write("customers.txt", "c0001\n")
        r = self.fails(2, "batch", "--store", self.store, "--catalog", CATALOG,
                       "--deployment", self.deployment, "--policy",
                       os.path.join(POLICIES, "retention.lua"), "--customers",
                       self.path("customers.txt"))
        self.assertIn("not both", r.stderr)


if __name__ == "__main__":
    unittest.main()
