"""nbx policy diff: what a policy change does to the same customers, for a
reviewer. Its counts must be those of two `nbx batch` runs over the same
customers; NEW's fallbacks and the reviewer's limits fail it; every text
from a policy or a catalog is escaped in the report and its charts."""
import collections
import json
import os
import shutil
import tempfile
import unittest
import xml.etree.ElementTree as ET

from cliutil import NBX, CliTestCase, generated_store

AS_OF = "2026-03-10T12:00:00Z"

# Ranks by expected margin: the shipped margin_per_session in a few lines.
BY_MARGIN = """return { name = "by_margin",
  score = function(o, c) local m = nbx.expected_margin(c, o) return m, m end }
"""
# Ranks the other way round: the worst offers first (a margin drop).
WORST_FIRST = """return { name = "worst_first",
  score = function(o, c) local m = nbx.expected_margin(c, o) return -m, m end }
"""
# Fails, at line 3, for every customer from Germany.
FAILS_FOR_DE = """return { name = "fails_for_de",
  score = function(o, c)
    if c.attrs.country == "DE" then return c.attrs.nope + 1 end
    local m = nbx.expected_margin(c, o) return m, m end }
"""


class PolicyDiff(CliTestCase):

    @classmethod
    def setUpClass(cls):
        cls.shared = tempfile.mkdtemp(prefix="nbx-diff-")
        cls.shared_store, cls.catalog = generated_store(cls.shared, 300, offers=20)
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        import subprocess
        subprocess.run([NBX, "rfm", "rebuild", "--store", cls.shared_store, "--as-of", AS_OF],
                       check=True, capture_output=True, env=env)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.shared, True)

    def policies(self, old=BY_MARGIN, new=WORST_FIRST):
        return self.write("old.lua", old), self.write("new.lua", new)

    def diff(self, old, new, *extra, code=0):
        args = ("policy", "diff", old, new, "--catalog", self.catalog,
                "--store", self.shared_store, "--as-of", AS_OF, *extra)
        return self.fails(code, *args) if code else self.ok(*args)

    def batch(self, policy, customers):
        r = self.nbx("batch", "--store", self.shared_store, "--catalog", self.catalog,
                     "--policy", policy, "--customers", customers, "--as-of", AS_OF)
        self.assertIn(r.returncode, (0, 3), r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines()]

    def test_counts_agree_with_two_batch_runs(self):
        old, new = self.policies()
        ids = ["c%07d" % i for i in range(1, 301, 2)] + ["nobody-stored"]
        customers = self.write("ids.txt", "\n".join(ids) + "\n")
        report = json.loads(self.diff(old, new, "--customers", customers,
                                      "--format", "json", "--max-changed", "100").stdout)
        a, b = self.batch(old, customers), self.batch(new, customers)
        self.assertEqual(len(a), len(ids))
        self.assertEqual(report["customers"], len(ids))

        def tops(result):
            top = {}
            for action in result["actions"]:
                top.setdefault(action["placement"], action["offer"])
            return top

        changed = collections.Counter()
        for x, y in zip(a, b):
            self.assertEqual(x["customer"], y["customer"])
            tx, ty = tops(x), tops(y)
            for p in set(tx) | set(ty):
                if tx.get(p) != ty.get(p):
                    changed[p] += 1
        self.assertGreater(sum(changed.values()), 0, "the two policies must differ here")
        self.assertEqual({p: n for p, n in report["changed_top"].items() if n}, dict(changed))

        shown = collections.defaultdict(lambda: {"old": 0, "new": 0})
        for side, results in (("old", a), ("new", b)):
            for r in results:
                for action in r["actions"]:
                    shown[action["offer"]][side] += 1
        self.assertEqual(report["offers"], dict(shown))
        self.assertEqual(report["fallbacks"], {"old": sum(r["fallback"] for r in a),
                                               "new": sum(r["fallback"] for r in b)})
        for side, results in (("old", a), ("new", b)):
            total = sum(act["expected_margin"] for r in results for act in r["actions"])
            self.assertAlmostEqual(report["expected_margin"][side], total,
                                   delta=1e-6 * max(1.0, abs(total)))
        self.assertLess(report["expected_margin"]["new"], report["expected_margin"]["old"])
        lo, hi = report["expected_margin"]["interval_95"]
        self.assertLessEqual(lo, report["expected_margin"]["difference"])
        self.assertGreaterEqual(hi, report["expected_margin"]["difference"])

    def test_json_fields_and_a_deterministic_sample(self):
        old, new = self.policies()
        runs = [json.loads(self.diff(old, new, "--sample", "120", "--format", "json",
                                     "--max-changed", "100").stdout) for _ in range(2)]
        for key in ("customers", "changed_top", "expected_margin", "offers", "fallbacks",
                    "errors", "segments", "exclusions", "decision_time_us", "top_customers",
                    "policies", "as_of"):
            self.assertIn(key, runs[0])
        self.assertEqual(runs[0]["customers"], 120)
        self.assertEqual(set(runs[0]["expected_margin"]), {"old", "new", "difference",
                                                           "interval_95"})
        self.assertEqual(set(runs[0]["fallbacks"]), {"old", "new"})
        self.assertEqual(runs[0]["as_of"], AS_OF)
        self.assertEqual(runs[0]["policies"]["new"]["name"], "worst_first")
        for o in runs[0]["offers"].values():
            self.assertEqual(set(o), {"old", "new"})
        self.assertLessEqual(len(runs[0]["top_customers"]), 5)
        for key in ("customers", "changed_top", "expected_margin", "offers", "segments",
                    "top_customers"):
            self.assertEqual(runs[0][key], runs[1][key], key)

    def test_limits_give_a_non_zero_exit(self):
        old, new = self.policies()
        r = self.diff(old, new, "--sample", "100", "--max-changed", "0", code=3)
        self.assertIn("--max-changed 0", r.stderr)
        self.assertIn("NEW should not go live", r.stdout)
        r = self.diff(old, new, "--sample", "100", "--max-margin-drop", "1", code=3)
        self.assertIn("--max-margin-drop 1", r.stderr)
        # generous limits, and the same policy on both sides, pass
        self.diff(old, new, "--sample", "100", "--max-changed", "100",
                  "--max-margin-drop", "100")
        r = self.diff(old, old, "--sample", "100", "--max-changed", "0",
                      "--max-margin-drop", "0")
        self.assertIn("0 of 100 customers (0.0 %) get another top action", r.stdout)
        self.fails(2, "policy", "diff", old, new, "--catalog", self.catalog,
                   "--store", self.shared_store, "--max-changed", "lots")

    def test_a_failing_new_policy_exits_non_zero_naming_file_and_line(self):
        old, new = self.policies(new=FAILS_FOR_DE)
        out = self.path("review.md")
        r = self.diff(old, new, "--sample", "300", "--out", out, code=3)
        self.assertRegex(r.stderr, r"NEW fell back for \d+ customers; most often \(\d+\): "
                                   r"\S*new\.lua:3: ")
        with open(out, encoding="utf-8") as f:
            report = f.read()
        # new.lua:3 in Markdown (the colons escaped), the counts of each side
        self.assertRegex(report, r"\| fallback \| new\.lua\\:3\\: [^|]*nope[^|]*\| 0 \| [1-9]")
        r = self.diff(old, new, "--sample", "300", "--format", "json", code=3)
        report = json.loads(r.stdout)
        self.assertEqual(report["fallbacks"]["old"], 0)
        self.assertGreater(report["fallbacks"]["new"], 0)
        (reason, counts), = report["fallback_reasons"].items()
        self.assertIn("new.lua:3", reason)
        self.assertEqual(counts, {"old": 0, "new": report["fallbacks"]["new"]})
        # OLD failing is reported but is not NEW's fault
        self.diff(new, old, "--sample", "300", "--max-changed", "100", "--max-margin-drop",
                  "100")

    def test_a_new_policy_that_does_not_load_names_its_line(self):
        old, _ = self.policies()
        bad = self.write("broken.lua", "return {\n  name = 'x',\n  score = function(o) return o.margin +\nend }\n")
        r = self.diff(old, bad, "--sample", "10", code=1)
        self.assertRegex(r.stderr, r"broken\.lua:\d+:")
        self.assertEqual(r.stdout, "")

    def test_the_report_has_every_section_and_its_charts(self):
        old, new = self.policies()
        out = self.path("review.md")
        self.diff(old, new, "--sample", "200", "--out", out, "--max-changed", "100",
                  "--session", "channel=web")
        with open(out, encoding="utf-8") as f:
            report = f.read()
        for heading in ("## The policies", "## Headline", "## Top action changes per placement",
                        "## Expected margin", "## Per RFM segment", "## Per offer",
                        "## Exclusions by reason", "## Fallbacks and errors",
                        "## Decision time", "customers whose expected margin changed most"):
            self.assertIn(heading, report)
        self.assertIn("by\\_margin", report)
        self.assertIn("95 % interval", report)
        self.assertIn("Clock: " + AS_OF, report)
        self.assertIn("P(accept)", report)  # the top customers, explained
        self.assertEqual(report.count("### "), 5)
        for chart in ("review.offers.svg", "review.segments.svg"):
            self.assertIn("(" + chart + ")", report)
            ET.parse(self.path(chart))  # well-formed

    def test_text_from_policies_and_catalogs_is_escaped(self):
        evil = '<img src=x onerror=alert(1)> | **bold** [link](http://x) `code`\x1b[31m'
        with open(self.catalog, encoding="utf-8") as f:
            catalog = json.load(f)
        for offer in catalog["offers"]:
            offer["name"] = evil
        catalog_path = self.write("catalog.json", json.dumps(catalog))
        old = self.write("old.lua", BY_MARGIN.replace('"by_margin"', json.dumps(evil[:-6])))
        new = self.write("new.lua", WORST_FIRST)
        out = self.path("review.md")
        self.ok("policy", "diff", old, new, "--catalog", catalog_path, "--store",
                self.shared_store, "--as-of", AS_OF, "--sample", "50", "--out", out)
        with open(out, encoding="utf-8") as f:
            report = f.read()
        self.assertIn("&lt;img src=x onerror=alert\\(1\\)&gt; \\| \\*\\*bold\\*\\*", report)
        for raw in ("<img", "**bold**", "[link](", "`code`", "\x1b"):
            self.assertNotIn(raw, report)
        # every row of the offer table keeps the header's columns
        lines = report.splitlines()
        header = lines.index("| offer | shown old | shown new | difference | share old | share new |")
        rows = []
        for line in lines[header + 2:]:
            if not line.startswith("| "):
                break
            rows.append(line)
        self.assertGreater(len(rows), 2)
        for line in rows:
            self.assertEqual(line.replace("\\|", "").count("|"), 7, line)
        with open(self.path("review.offers.svg"), encoding="utf-8") as f:
            svg = f.read()
        self.assertNotIn("<img", svg)
        self.assertNotIn("\x1b", svg)
        root = ET.fromstring(svg)
        self.assertEqual({e.tag.split("}")[1] for e in root.iter()} - {"svg", "rect", "text",
                                                                         "line"}, set())

    def test_usage(self):
        old, new = self.policies()
        self.fails(2, "policy", "diff", old, new, "--store", self.shared_store)
        self.fails(2, "policy", "diff", old, new, "--catalog", self.catalog, "--store",
                   self.shared_store, "--sample", "5", "--customers", old)
        self.fails(2, "policy", "diff", old, new, "--catalog", self.catalog, "--store",
                   self.shared_store, "--format", "html")


if __name__ == "__main__":
    unittest.main()
