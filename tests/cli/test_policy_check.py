"""nbx policy check --catalog: a policy is tried on customers before it
serves. Failures that only some customers meet (a missing attribute, one
segment, print, a string score) used to pass the check and then fall back
for a share of real customers."""
import json
import os
import subprocess
import unittest

from cliutil import CATALOG, NBX, SOURCE_DIR, CliTestCase

SHIPPED = [os.path.join(SOURCE_DIR, "policies", name)
           for name in ("margin_per_session.lua", "retention.lua")]

NIL_COMPARE = """return { name = "nilcmp",
  eligible = function(o, c) return c.attrs.age < c.attrs.limit end,
  score = function(o) return o.margin end }
"""

# Fails only for stored customers with a country attribute of DE.
ONLY_DE = """return { name = "only_de", score = function(o, c)
  if c.attrs.country == "DE" then return o.margin + c.attrs.nope end
  return o.margin end }
"""


class PolicyCheck(CliTestCase):

    def profiles(self, n=60):
        rows = []
        for i in range(n):
            country = "DE" if i % 3 == 0 else "FR"
            rows.append(json.dumps({"id": "c%03d" % i, "attrs": {"country": country},
                                    "consent": {"personalization": True}}))
        self.write("p.jsonl", "\n".join(rows) + "\n")
        self.ok("import", "profiles", self.path("p.jsonl"), "--store", self.store)

    def test_shipped_policies_pass(self):
        for path in SHIPPED:
            r = self.ok("policy", "check", path, "--catalog", CATALOG)
            self.assertIn("fallbacks: 0 of", r.stdout)
            self.assertRegex(r.stdout, r"tried:\s+\d+ synthetic customers")

    def test_a_policy_failing_for_customers_without_an_attribute_fails(self):
        path = self.write("nil.lua", NIL_COMPARE)
        r = self.nbx("policy", "check", path, "--catalog", CATALOG)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("FAILED", r.stdout)
        self.assertIn("nil.lua:2: attempt to compare two nil values", r.stdout)
        self.assertIn("trial: anonymous visitor", r.stdout)
        # without --catalog it only loads, as before
        self.ok("policy", "check", path)

    def test_print_and_string_scores_fail(self):
        for name, src, needle in (
                ("p.lua", 'return { name = "p", score = function(o) print(o.id) return 1 end }',
                 "p.lua:1: attempt to call global 'print'"),
                ("s.lua", 'return { name = "s", score = function(o) return "high" end }',
                 "must return a finite number")):
            r = self.nbx("policy", "check", self.write(name, src), "--catalog", CATALOG)
            self.assertEqual(r.returncode, 1, r)
            self.assertIn(needle, r.stdout)

    def test_stored_customers_are_tried_with_a_sample(self):
        self.profiles()
        path = self.write("de.lua", ONLY_DE)
        r = self.nbx("policy", "check", path, "--catalog", CATALOG, "--store", self.store,
                     "--sample", "60", "--json")
        self.assertEqual(r.returncode, 1, r)
        got = json.loads(r.stdout)
        self.assertEqual(got["sampled"], 60)
        self.assertEqual(got["fallbacks"], 20, "every DE customer, no one else")
        self.assertEqual(len(got["reasons"]), 1)
        self.assertEqual(got["reasons"][0]["count"], 20)
        for customer in got["reasons"][0]["customers"]:
            self.assertEqual(int(customer[1:]) % 3, 0, customer)
        # the sample is the same every run
        again = json.loads(self.nbx("policy", "check", path, "--catalog", CATALOG, "--store",
                                    self.store, "--sample", "10", "--json").stdout)
        third = json.loads(self.nbx("policy", "check", path, "--catalog", CATALOG, "--store",
                                    self.store, "--sample", "10", "--json").stdout)
        self.assertEqual(again, third)

    def test_stored_customers_from_a_file(self):
        self.profiles()
        ids = self.write("ids.txt", "c001\nc003\n\nc004\n")
        r = self.nbx("policy", "check", self.write("de.lua", ONLY_DE), "--catalog", CATALOG,
                     "--store", self.store, "--customers", ids)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("3 from", r.stdout, "the three ids of the file")
        self.assertIn("c003", r.stdout)
        self.assertNotIn("c001", r.stdout)

    def test_usage_errors(self):
        path = SHIPPED[0]
        self.fails(2, "policy", "check", path, "--store", self.store)
        self.fails(2, "policy", "check", path, "--catalog", CATALOG, "--sample", "5")
        self.fails(2, "policy", "check", path, "--catalog", CATALOG, "--store", self.store,
                   "--sample", "5", "--customers", self.path("x"))

    def test_policy_text_reaches_the_terminal_escaped(self):
        path = self.write("esc.lua", 'return { name = "esc", score = function(o)\n'
                                     '  error("\\27[31mred\\rover") end }\n')
        # bytes: text mode would turn a raw CR into a line break
        r = subprocess.run([NBX, "policy", "check", path, "--catalog", CATALOG],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 1, r)
        self.assertNotIn(b"\x1b", r.stdout + r.stderr)
        self.assertNotIn(b"\r", r.stdout + r.stderr)
        self.assertIn(b"\\x1b[31mred\\x0dover", r.stdout)


if __name__ == "__main__":
    unittest.main()
