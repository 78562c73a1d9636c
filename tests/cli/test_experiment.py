"""nbx report experiment and the per-arm counters of nbx stats, on real
stores with the real binary. Which arm a customer is in is asked of the
library itself (nbx_deployment_assign through ctypes), so the planted
uplift follows the assignment every binding uses."""
import ctypes
import json
import os
import random
import unittest

from cliutil import CATALOG, CliTestCase, SOURCE_DIR, purchase

LIBRARY = os.environ.get("NBX_LIBRARY") or os.path.join(SOURCE_DIR, "build", "libnbx.so")

DEPLOYMENT = {"name": "q4", "salt": "q4-2026", "holdout": {"percent": 20},
              "arms": [{"name": "champion", "policy": "p.lua", "percent": 60},
                       {"name": "challenger", "policy": "p.lua", "percent": 40}]}
WINDOW = ["--from", "2026-03-01T00:00:00Z", "--to", "2026-04-01T00:00:00Z"]


class Assigner:
    """The library's assignment of a deployment file."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(LIBRARY)
        self.lib.nbx_deployment_open.argtypes = [ctypes.c_char_p, ctypes.c_uint,
                                                 ctypes.POINTER(ctypes.c_void_p)]
        self.lib.nbx_deployment_assign.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                   ctypes.c_size_t]
        self.lib.nbx_deployment_assign.restype = ctypes.c_char_p
        self.lib.nbx_deployment_close.argtypes = [ctypes.c_void_p]
        self.d = ctypes.c_void_p()
        rc = self.lib.nbx_deployment_open(path.encode(), 1, ctypes.byref(self.d))
        if rc != 0:
            raise RuntimeError(f"nbx_deployment_open({path}): {rc}")

    def arm(self, customer):
        c = customer.encode()
        return self.lib.nbx_deployment_assign(self.d, c, len(c)).decode()

    def close(self):
        self.lib.nbx_deployment_close(self.d)


class ReportExperimentTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.deployment = self.write("q4.json", json.dumps(DEPLOYMENT))

    def planted_store(self, uplift, customers=3000):
        """Purchases of margin 20 +- 10 (seeded, the same every run), plus
        `uplift` for the challenger's customers; one outside the window."""
        assigner = Assigner(self.deployment)
        rng = random.Random(7)
        events = []
        for i in range(customers):
            cid = f"k{i:05d}"
            extra = uplift if assigner.arm(cid) == "challenger" else 0.0
            events.append(purchase(f"p{i}", cid, f"2026-03-{1 + i % 28:02d}T10:00:00Z", 90,
                                   round(20 + extra + rng.uniform(-10, 10), 4)))
        assigner.close()
        events.append(purchase("late", "k00000", "2026-04-01T00:00:00Z", 90, 10000))
        self.ok("import", "events", self.write_jsonl("events.jsonl", events),
                "--store", self.store)

    def report(self, *extra):
        return self.ok("report", "experiment", "--store", self.store,
                       "--deployment", self.deployment, *WINDOW, *extra)

    def test_json_finds_the_planted_uplift(self):
        self.planted_store(uplift=4.0)
        r = json.loads(self.report("--format", "json").stdout)
        arms = r["arms"]
        self.assertEqual(list(arms), ["holdout", "champion", "challenger"])
        self.assertEqual(sum(a["customers"] for a in arms.values()), 3000)
        self.assertIsNone(arms["holdout"]["uplift"])
        up = arms["challenger"]["uplift"]
        self.assertLessEqual(up["low"], 4.0, up)
        self.assertGreaterEqual(up["high"], 4.0, up)
        self.assertGreater(up["low"], 0, f"4 against a noise of sd 5.8: found ({up})")
        champion = arms["champion"]["uplift"]
        self.assertLessEqual(champion["low"], 0.0, champion)
        self.assertGreaterEqual(champion["high"], 0.0, champion)
        self.assertAlmostEqual(arms["challenger"]["margin_per_customer"], 24, delta=0.6)
        self.assertLess(arms["holdout"]["margin_per_customer"], 21,
                        "the purchase after the window does not count")
        self.assertEqual(r["deployment"]["name"], "q4")

    def test_markdown_has_the_table_and_a_chart(self):
        self.planted_store(uplift=4.0, customers=300)
        md = self.report().stdout
        self.assertIn("# Experiment report: q4", md)
        self.assertIn("| challenger | ", md)
        self.assertIn("| holdout | ", md)
        self.assertIn("<svg xmlns=\"http://www.w3.org/2000/svg\"", md)
        self.assertIn("</svg>", md)
        # with --out: the chart in a file beside it, linked
        out = self.path("report.md")
        self.report("--out", out)
        with open(out, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("](report.svg)", text)
        self.assertNotIn("<svg", text)
        with open(self.path("report.svg"), encoding="utf-8") as f:
            svg = f.read()
        self.assertTrue(svg.startswith("<svg") and svg.rstrip().endswith("</svg>"), svg[:200])
        self.assertIn(">challenger</text>", svg)

    def test_bad_flags_are_refused_and_write_nothing(self):
        self.planted_store(uplift=0, customers=10)
        base = ["report", "experiment", "--store", self.store]
        r = self.fails(2, *base, *WINDOW)
        self.assertIn("--deployment", r.stderr)
        r = self.fails(2, *base, "--deployment", self.deployment, "--from",
                       "2026-03-01T00:00:00Z")
        self.assertIn("--to", r.stderr)
        r = self.fails(2, *base, "--deployment", self.deployment, "--from",
                       "2026-04-01T00:00:00Z", "--to", "2026-03-01T00:00:00Z")
        self.assertIn("before", r.stderr)
        r = self.fails(2, *base, "--deployment", self.deployment, *WINDOW, "--format", "html")
        self.assertIn("html", r.stderr)
        broken = self.write("broken.json", '{"name": "q4", "arms": 3}')
        out = self.path("r.md")
        r = self.fails(1, *base, "--deployment", broken, *WINDOW, "--out", out)
        self.assertIn("broken.json", r.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(self.path("r.svg")))
        r = self.fails(1, "report", "experiment", "--store", self.path("none"),
                       "--deployment", self.deployment, *WINDOW)


class StatsArmsTest(CliTestCase):
    def test_stats_prints_the_arms_counters(self):
        uuid = "01900000-0000-7000-8000-000000000001"
        events = [
            {"event_id": "i1", "customer": "c1", "type": "impression", "offer": "o1",
             "decision_id": f"{uuid}.q4.challenger", "ts": "2026-03-05T10:00:00Z"},
            {"event_id": "a1", "customer": "c1", "type": "accept", "offer": "o1",
             "decision_id": f"{uuid}.q4.challenger", "ts": "2026-03-05T10:01:00Z"},
            dict(purchase("p1", "c1", "2026-03-06T10:00:00Z", 50, 12.5),
                 decision_id=f"{uuid}.q4.challenger"),
            {"event_id": "i2", "customer": "c2", "type": "impression", "offer": "o1",
             "ts": "2026-03-05T10:00:00Z"},
        ]
        self.ok("import", "events", self.write_jsonl("e.jsonl", events), "--store", self.store)
        arms = self.stats()["arms"]
        self.assertEqual(len(arms), 1, arms)
        a = arms[0]
        self.assertEqual((a["deployment"], a["arm"]), ("q4", "challenger"))
        self.assertEqual((a["impressions"], a["accepts"], a["purchases"]), (1, 1, 1))
        self.assertEqual(a["realised_margin"], 12.5)
        self.assertEqual(a["decisions"], 0)
        self.assertIsNone(a["accept_rate"], "no decisions counted: no rate")
        self.assertEqual((a["first_day"], a["last_day"]), ("2026-03-05", "2026-03-06"))
        text = self.ok("stats", "--store", self.store).stdout
        self.assertRegex(text, r"\n  q4 +challenger +0 +0 +0 +1 +1 ")

    def test_stats_without_arms_says_so(self):
        self.ok("import", "events", self.write_jsonl("e.jsonl", [
            purchase("p1", "c1", "2026-03-06T10:00:00Z", 50, 1)]), "--store", self.store)
        self.assertEqual(self.stats()["arms"], [])
        self.assertIn("arms:           none counted", self.ok("stats", "--store", self.store).stdout)


class CanaryAbortTest(CliTestCase):
    """The issue's canary: a challenger failing for 5 % of its customers is
    aborted by `nbx batch --deployment` once past min_decisions, and the
    abort is in `nbx kill --list` and its counters in `nbx stats`."""

    def test_a_challenger_failing_for_five_percent_is_aborted_by_a_batch(self):
        self.write("by_price.lua", "return {name = 'by_price',\n"
                   "  score = function(o) return o.price, o.margin end}\n")
        self.write("flaky.lua", "return {name = 'flaky', score = function(o, c)\n"
                   "  if c.attrs.flaky then error('flaky customer') end\n"
                   "  return o.price, o.margin end}\n")
        deployment = self.write("q4.json", json.dumps({
            "name": "q4", "salt": "q4-2026", "holdout": {"percent": 10},
            "arms": [{"name": "champion", "policy": "by_price.lua", "percent": 50},
                     {"name": "challenger", "policy": "flaky.lua", "percent": 50,
                      "abort": {"min_decisions": 500, "max_fallback_rate": 0.01}}]}))
        customers = [f"c{i:05d}" for i in range(3000)]
        self.ok("import", "profiles", self.write_jsonl("profiles.jsonl", [
            {"id": c, "consent": {"personalization": True}, "attrs": {"flaky": True}}
            for c in customers[::20]]), "--store", self.store)
        self.write("customers.txt", "".join(c + "\n" for c in customers))
        r = self.ok("batch", "--store", self.store, "--catalog", CATALOG, "--deployment",
                    deployment, "--customers", self.path("customers.txt"),
                    "--as-of", "2026-03-10T12:00:00Z", "--threads", "2", "--max-fallback-rate", "1")
        served = [json.loads(line)["arm"] for line in r.stdout.splitlines()]
        self.assertGreaterEqual(served.count("challenger"), 500, "enough to judge")
        kills = json.loads(self.ok("kill", "--list", "--json", "--store", self.store).stdout)
        self.assertEqual([(k["kind"], k["name"], k["by"]) for k in kills],
                         [("arm", "q4.challenger", "abort")], kills)
        self.assertIn("max_fallback_rate: fallback rate 0.0", kills[0]["reason"])
        arms = {a["arm"]: a for a in self.stats()["arms"]}
        self.assertEqual(sum(a["decisions"] for a in arms.values()), 3000)
        self.assertGreater(arms["challenger"]["fallbacks"] * 100, arms["challenger"]["decisions"])
        # the next batch serves the challenger's customers by the first arm
        r = self.ok("batch", "--store", self.store, "--catalog", CATALOG, "--deployment",
                    deployment, "--customers", self.path("customers.txt"),
                    "--as-of", "2026-03-10T12:00:00Z", "--threads", "2", "--max-fallback-rate", "1")
        served = [json.loads(line)["arm"] for line in r.stdout.splitlines()]
        self.assertNotIn("challenger", served)


if __name__ == "__main__":
    unittest.main()
