"""nbx policy test: a policy's test cases, read as data (never run), each a
customer, a session and what the decision must show; one line per case, ok
or not ok with what differed in words; JUnit XML for CI; a malformed test
file is an error naming FILE:LINE."""
import os
import unittest
import xml.dom.minidom

from cliutil import SOURCE_DIR, CliTestCase

POLICIES = os.path.join(SOURCE_DIR, "policies")
CATALOG = os.path.join(POLICIES, "tests", "catalog.json")
MARGIN = os.path.join(POLICIES, "margin_per_session.lua")
RETENTION = os.path.join(POLICIES, "retention.lua")

AS_OF = '"2026-03-10T12:00:00Z"'

PICKY = r"""return { name = "picky",
  eligible = function(o, c, s)
    if o.id == "socks" then return false, "no socks in \27[31mMarch" end
    return true
  end,
  score = function(o, c, s)
    nbx.log("scoring", o.id, "\r\27[2K")
    if o.id == "jacket" and c.attrs.tier == "gold" then return c.attrs.nope + 1 end
    local m = nbx.expected_margin(c, o)
    return m, m
  end }
"""


class PolicyTest(CliTestCase):

    def run_tests(self, text, policy=None, *extra, name="cases_test.lua"):
        path = self.write(name, text)
        return self.nbx("policy", "test", policy or self.write("picky.lua", PICKY),
                        "--catalog", CATALOG, path, *extra), path

    def test_the_shipped_policies_pass_their_tests(self):
        for policy in ("margin_per_session", "retention"):
            r = self.ok("policy", "test", os.path.join(POLICIES, policy + ".lua"), "--catalog",
                        CATALOG, os.path.join(POLICIES, "tests", policy + "_test.lua"))
            self.assertRegex(r.stdout, r"\n(\d+) cases: \1 passed, 0 failed\n")
            self.assertNotIn("not ok", r.stdout)

    def test_a_policy_that_does_not_do_what_its_tests_say_fails_in_words(self):
        # the retention tests against the policy without the boost
        r = self.nbx("policy", "test", MARGIN, "--catalog", CATALOG,
                     os.path.join(POLICIES, "tests", "retention_test.lua"))
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("not ok 1 - an at-risk customer sees the winback offer", r.stdout)
        self.assertIn("retention_test.lua:11)", r.stdout)
        self.assertIn("    top of hero is jacket, expected winback_20", r.stdout)
        self.assertIn("    score of winback_20 at hero is 4.78, expected between 1000004.77 and "
                      "1000004.79", r.stdout)
        self.assertIn("ok 3 - a champion", r.stdout)
        self.assertIn("5 cases: 3 passed, 2 failed", r.stdout)

    def test_every_expectation_says_what_differed(self):
        r, path = self.run_tests("""
local gold = { consent = { personalization = true }, attrs = { tier = "silver" } }
return {
  { name = "all wrong", customer = gold, as_of = %s,
    expect = {
      top = { hero = "brand_banner", recs = false },
      shown = { "deep_discount" },
      not_shown = { "jacket" },
      excluded = { socks = "guardrail", jacket = "frequency", free_shipping = false,
                   deep_discount = "ineligible: no socks in March" },
      score_between = { jacket = { 100, 200 }, socks = { 0, 1 } },
      fallback = true,
    } },
  { name = "all right", customer = gold, as_of = %s,
    expect = {
      top = { hero = "jacket" },
      shown = { "jacket" },
      not_shown = { "deep_discount", "socks" },
      excluded = { socks = "ineligible: no socks in \\27[31mMarch", deep_discount = "guardrail",
                   jacket = false },
      score_between = { jacket = { 2.37, 2.39 } },
      fallback = false,
    } },
}
""" % (AS_OF, AS_OF))
        self.assertEqual(r.returncode, 1, r)
        out = r.stdout
        self.assertIn("not ok 1 - all wrong (%s:4)" % path, out)
        for line in (
                "the decision did not fall back, expected the fallback decision",
                "top of hero is jacket, expected brand_banner",
                "top of recs is free_shipping, expected nothing shown",
                "deep_discount was not shown: deep_discount at recs was excluded as guardrail "
                "(a discount of 45% is above the 30% limit)",
                "jacket was shown at hero (score 2.38), expected not shown",
                "socks at recs was excluded as ineligible (the policy's eligible() said no: no "
                "socks in \\x1b[31mMarch), expected excluded as guardrail",
                "jacket at hero was shown (score 2.38), expected excluded as frequency",
                "deep_discount at recs was excluded as guardrail (a discount of 45% is above the "
                "30% limit), expected excluded as ineligible: no socks in March",
                "score of jacket at hero is 2.38, expected between 100 and 200",
                "socks at recs was not scored (excluded as ineligible), expected a score between "
                "0 and 1"):
            self.assertIn("    " + line + "\n", out)
        self.assertIn("ok 2 - all right\n", out)
        # the policy's log of a failed case, escaped
        self.assertIn("    log: picky.lua:7: scoring jacket \\x0d\\x1b[2K", out)
        self.assertNotIn("\x1b", out)
        self.assertNotIn("\r", out)

    def test_an_unexpected_fallback_fails_the_case_and_an_expected_one_passes(self):
        r, _ = self.run_tests("""return {
  { name = "gold breaks it", as_of = %s,
    customer = { consent = { personalization = true }, attrs = { tier = "gold" } },
    expect = { top = { hero = "brand_banner" } } },
  { name = "and we know", as_of = %s,
    customer = { consent = { personalization = true }, attrs = { tier = "gold" } },
    expect = { fallback = true, top = { hero = "brand_banner" } } },
}""" % (AS_OF, AS_OF))
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("not ok 1 - gold breaks it", r.stdout)
        self.assertIn("the policy failed and the fallback decision was served: picky.lua:8: "
                      "attempt to perform arithmetic on field 'nope' (a nil value)", r.stdout)
        self.assertIn("ok 2 - and we know", r.stdout)

    def test_exposures_and_a_session_build_the_customer(self):
        r, _ = self.run_tests("""return {
  { name = "capped", as_of = %s, placements = { "hero" }, session = { channel = "web", day = 3 },
    customer = { id = "c42", consent = { personalization = true },
                 propensity = { free_shipping = 0.9 },
                 exposures = { free_shipping = { impressions = 3, last_impression = 1773100000 } } },
    expect = { excluded = { free_shipping = "frequency" }, top = { hero = "jacket" } } },
}""" % AS_OF)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_the_default_clock_is_as_of(self):
        # free_shipping: valid for everyone, but the winback module below is not
        with open(CATALOG, encoding="utf-8") as f:
            text = f.read()
        catalog = self.write("cat.json", text.replace(
            '"purpose": "none", "base_propensity": 0.0}',
            '"purpose": "none", "base_propensity": 0.0, "valid_to": "2026-01-01T00:00:00Z"}'))
        cases = self.write("t_test.lua", 'return { { name = "banner", expect = { top = { hero = '
                                         '"brand_banner" } } } }')
        self.ok("policy", "test", MARGIN, "--catalog", catalog, cases, "--as-of",
                "2025-12-01T00:00:00Z")
        r = self.nbx("policy", "test", MARGIN, "--catalog", catalog, cases, "--as-of",
                     "2026-02-01T00:00:00Z")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("nothing shown at hero, expected brand_banner", r.stdout)

    def test_lua_spellings_of_data(self):
        r, _ = self.run_tests("""#!/usr/bin/env lua
-- a comment
--[==[ a long
comment ]==]
local when = '2026-03-10T12:00:00Z';
local c = { consent = { ["personalization"] = true; }, attrs = { note = [[
two
lines]], esc = "tab\\there \\u{e9}\\65\\x41\\z
           end", n = -1.5e1, h = 0x10 } }
return {
  { name = "spelt", customer = c, as_of = when, expect = { top = { hero = "jacket" } } },
  { name = 'copies stay copies', customer = c, as_of = when, expect = { fallback = false } };
}
""")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_malformed_files_name_file_and_line(self):
        cases = {
            "syntax.lua": ("return {\n  { name = 'x', expect = { top = { hero = 'jacket' } }\n"
                           "  { name = 'y' },\n}\n", ":3: expected ',' or '}'"),
            "code.lua": ("return {\n  { name = 'x', expect = { fallback = os.execute('touch "
                         "pwned') } },\n}\n", ":2: found 'os': a test file holds data only"),
            "function.lua": ("return { { name = 'f', expect = { fallback = function() end } } }\n",
                             ":1: found 'function'"),
            "unclosed.lua": ("return {\n  { name = 'never closes },\n}\n",
                             ":2: a string never closes"),
            "nothing.lua": ("-- only a comment\n", ":2: a test file is 'return {'"),
            "empty.lua": ("return {}\n", ":1: a test file returns a list of cases"),
            "trailing.lua": ("return { { expect = {} } } x = 1\n",
                             ":1: found 'x' after the returned value"),
            "binary.lua": ("return { { name = '\\255' } }\n", "not UTF-8 text"),
            "twice.lua": ("return { { name = 'a',\n name = 'b', expect = {} } }\n",
                          ":2: 'name' is given twice"),
        }
        for name, (text, want) in cases.items():
            with self.subTest(name):
                r, path = self.run_tests(text, MARGIN, name=name)
                self.assertEqual(r.returncode, 1, r)
                self.assertIn(path, r.stdout)
                self.assertIn(want, r.stdout)
                self.assertIn("1 test file could not be read", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "pwned")))
        self.assertFalse(os.path.exists("pwned"))

    def test_cases_that_make_no_sense_name_their_line(self):
        r, path = self.run_tests("""return {
  { name = "typo in a case", as_of = %s, expected = { top = { hero = "jacket" } } },
  { name = "typo in expect", as_of = %s, expect = { tops = { hero = "jacket" } } },
  { name = "no such placement", as_of = %s, expect = { top = { heor = "jacket" } } },
  { name = "no such offer", as_of = %s, expect = { not_shown = { "jackte" } } },
  { name = "no such reason", as_of = %s, expect = { excluded = { jacket = "capped" } } },
  { name = "bad range", as_of = %s, expect = { score_between = { jacket = { 2, 1 } } } },
  { name = "bad clock", as_of = "yesterday", expect = { fallback = false } },
  { name = "mixed", customer = { attrs = { 1, a = 2 } }, expect = { fallback = false } },
  { name = "bad profile", customer = { propensity = { jacket = 1.5 } }, as_of = %s,
    expect = { fallback = false } },
  { name = "bad exposures", customer = { exposures = { jacket = { shown = 1 } } }, as_of = %s,
    expect = { fallback = false } },
  { name = "fine", as_of = %s, expect = { fallback = false } },
}""" % ((AS_OF,) * 9), MARGIN)
        self.assertEqual(r.returncode, 1, r)
        out = r.stdout
        for line in (
                ":2: case.expected: unknown field (known: name, customer",
                ":3: expect.tops: unknown field (known: top, shown",
                ":4: expect.top: 'heor' is not a placement of the catalog",
                ":5: expect.not_shown: 'jackte' is not an offer of the catalog",
                ":6: expect.excluded.jacket: must be false or a reason",
                ":7: expect.score_between.jacket: must be {LOW, HIGH}",
                ":8: as_of: must be an RFC 3339 time",
                ":9: customer: a table mixes a list and named fields",
                ":10: the case's request was refused: field 'profile_json': field "
                "'propensity.jacket': 1.5 is outside [0, 1]",
                ":12: the case's request was refused: field 'exposures.jacket.shown': unknown"):
            self.assertIn(path + line, out)
        self.assertIn("ok 11 - fine", out)
        self.assertIn("11 cases: 1 passed, 10 failed", out)

    def test_junit_xml_for_ci(self):
        junit = self.path("results.xml")
        r, path = self.run_tests("""return {
  { name = "passes <&> \\27[31m", as_of = %s, expect = { top = { hero = "brand_banner" } } },
  { name = "fails \\"quoted\\"", as_of = %s, expect = { top = { hero = "socks" } } },
}""" % (AS_OF, AS_OF), MARGIN, "--junit", junit)
        self.assertEqual(r.returncode, 1, r)
        bad = self.write("bad_test.lua", "return {")
        r2 = self.nbx("policy", "test", MARGIN, "--catalog", CATALOG, path, bad, "--junit", junit)
        self.assertEqual(r2.returncode, 1)
        doc = xml.dom.minidom.parse(junit)
        root = doc.documentElement
        self.assertEqual(root.tagName, "testsuites")
        self.assertEqual((root.getAttribute("tests"), root.getAttribute("failures"),
                          root.getAttribute("errors")), ("3", "1", "1"))
        suites = doc.getElementsByTagName("testsuite")
        self.assertEqual([s.getAttribute("name") for s in suites], [path, bad])
        cases = suites[0].getElementsByTagName("testcase")
        self.assertEqual(cases[0].getAttribute("name"), "passes <&> \\x1b[31m")
        self.assertEqual(cases[1].getAttribute("name"), 'fails "quoted"')
        self.assertEqual(cases[1].getAttribute("line"), "3")
        failure = cases[1].getElementsByTagName("failure")[0]
        self.assertEqual(failure.getAttribute("message"),
                         "top of hero is brand_banner, expected socks")
        self.assertIn("top of hero is brand_banner, expected socks", failure.firstChild.data)
        error = suites[1].getElementsByTagName("error")[0]
        self.assertIn(bad + ":1:", error.getAttribute("message"))
        with open(junit, encoding="utf-8") as f:
            self.assertNotIn("\x1b", f.read())
        self.assertFalse(os.path.exists(junit + ".tmp"))

    def test_usage_and_load_errors(self):
        self.fails(2, "policy", "test", MARGIN, "--catalog", CATALOG)  # no test file
        self.fails(2, "policy", "test", MARGIN, os.path.join(POLICIES, "tests",
                                                             "margin_per_session_test.lua"))
        broken = self.write("broken.lua", "return { name = 'b', score = function( end }")
        r = self.fails(1, "policy", "test", broken, "--catalog", CATALOG,
                       os.path.join(POLICIES, "tests", "margin_per_session_test.lua"))
        self.assertIn("broken.lua:1:", r.stderr)
        r = self.nbx("policy", "test", MARGIN, "--catalog", CATALOG, self.path("missing.lua"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.lua: No such file or directory", r.stdout)


if __name__ == "__main__":
    unittest.main()
