"""nbx decide --explain --format text: a decision in words for a reader who
does not read JSON: per candidate the offer and its catalog name, the
placement, P(accept) and where it came from, unit margin, score, expected
margin, and why it was not chosen; the policy's nbx.log lines. Text from the
catalog and the policy reaches the terminal escaped."""
import json
import unittest

from cliutil import CliTestCase

CATALOG = {
    "placements": [{"id": "hero", "slots": 1}, {"id": "recs", "slots": 2}],
    "offers": [
        {"id": "free_shipping", "name": "Free shipping over 49", "placements": ["hero", "recs"],
         "price": 49.0, "unit_cost": 30.0, "discount": 4.9, "serving_cost": 0.01,
         "purpose": "personalization", "category": "shipping", "base_propensity": 0.03,
         "caps": {"impressions": {"max": 3, "window_days": 7}}},
        {"id": "winback_20", "name": "Winback \u001b[31m20", "placements": ["hero"],
         "price": 80.0, "unit_cost": 40.0, "discount": 16.0, "serving_cost": 0.02,
         "purpose": "personalization", "category": "retention", "base_propensity": 0.05,
         "segment_propensity": {"at_risk": 0.2}},
        {"id": "jacket", "placements": ["recs"], "price": 100.0, "unit_cost": 50.0,
         "purpose": "personalization", "category": "apparel", "base_propensity": 0.01},
        {"id": "socks", "placements": ["recs"], "price": 10.0, "unit_cost": 5.0,
         "purpose": "personalization", "category": "accessories", "base_propensity": 0.04},
        {"id": "carousel_new", "kind": "module", "placements": ["recs"], "price": 30.0,
         "unit_cost": 15.0, "purpose": "none", "base_propensity": 0.08},
        {"id": "deep_discount", "placements": ["recs"], "price": 100.0, "unit_cost": 50.0,
         "discount": 45.0, "purpose": "personalization", "base_propensity": 0.5},
    ],
    "guardrails": {"max_discount_pct": 30, "min_margin": 0.0},
}

PROFILE = {"id": "c1", "consent": {"personalization": True},
           "propensity": {"free_shipping": 0.2, "apparel": 0.1},
           "rfm": {"orders": 4, "revenue": 400, "r": 2, "f": 4, "m": 4, "segment": "at_risk",
                   "first_purchase": "2024-01-01T00:00:00Z",
                   "last_purchase": "2025-10-01T00:00:00Z"}}

POLICY = r"""return { name = "words",
  eligible = function(o, c, s)
    if o.id == "carousel_new" then return false, "modules only on \27[31mthe home page" end
    return true
  end,
  score = function(o, c, s)
    nbx.log("scoring", o.id, c.rfm.segment, "\r\27[2K")
    local m = nbx.expected_margin(c, o)
    return m, m
  end }
"""

AS_OF = "2026-03-04T00:00:00Z"


class ExplainText(CliTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = self.write("catalog.json", json.dumps(CATALOG))
        self.policy = self.write("words.lua", POLICY)
        self.ok("profile", "put", json.dumps(PROFILE), "--store", self.store)
        # three impressions in the seven days before the clock: the cap is 3
        self.ok("ingest", self.write_jsonl("ev.jsonl", [
            {"event_id": "e%d" % i, "customer": "c1", "type": "impression",
             "offer": "free_shipping", "ts": "2026-03-0%dT10:00:00Z" % i} for i in (1, 2, 3)]),
            "--store", self.store)

    def decide(self, *extra, customer="c1"):
        return self.ok("decide", "--store", self.store, "--catalog", self.catalog, "--policy",
                       self.policy, "--customer", customer, "--as-of", AS_OF, *extra).stdout

    def candidate_block(self, text, offer, placement):
        """The two lines of one candidate under its placement."""
        lines = text.splitlines()
        at = lines.index("  " + placement)
        for i in range(at + 1, len(lines)):
            if not lines[i].startswith("    "):
                break
            if lines[i].startswith("    " + offer):
                return lines[i] + "\n" + lines[i + 1]
        self.fail(f"no candidate {offer} under {placement} in:\n{text}")

    def test_every_candidate_in_words(self):
        text = self.decide("--explain", "--format", "text")
        self.assertIn("for customer c1", text)
        self.assertIn("RFM segment at_risk", text)
        # each source of P(accept), in words, with the arithmetic
        self.assertIn("P(accept) 0.2 (segment prior (at_risk)) x unit margin 24 - serving cost "
                      "0.02 = expected margin 4.78; score 4.78",
                      self.candidate_block(text, "winback_20", "hero"))
        self.assertIn("P(accept) 0.1 (profile propensity for its category) x unit margin 50",
                      self.candidate_block(text, "jacket", "recs"))
        self.assertIn("(base propensity)", self.candidate_block(text, "socks", "recs"))
        shipping = self.candidate_block(text, "free_shipping", "hero")
        self.assertIn("free_shipping \"Free shipping over 49\": excluded (frequency): shown 3 "
                      "times in the last 7 days; the cap is 3", shipping)
        self.assertIn("(profile propensity for this offer)", shipping)
        self.assertIn("excluded (guardrail): a discount of 45% is above the 30% limit",
                      self.candidate_block(text, "deep_discount", "recs"))
        self.assertIn("winback_20 \"Winback \\x1b[31m20\": chosen",
                      self.candidate_block(text, "winback_20", "hero"))
        # the policy's own reason, escaped
        self.assertIn("excluded (ineligible): the policy's eligible() said no: modules only on "
                      "\\x1b[31mthe home page", self.candidate_block(text, "carousel_new", "recs"))
        # the log, escaped, with file:line
        self.assertIn("Policy log (nbx.log)", text)
        self.assertIn("words.lua:7: scoring jacket at_risk \\x0d\\x1b[2K", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\r", text)

    def test_chosen_candidates_come_first_and_the_rest_say_why_not(self):
        text = self.decide("--explain", "--format", "text")
        recs = text.split("\n  recs\n")[1]
        offers = [line.split()[0].rstrip(":") for line in recs.splitlines() if line.startswith("    ") and
                  not line.startswith("        ")]
        self.assertEqual(offers[:2], ["jacket", "socks"], text)
        self.assertIn("1. recs: jacket, score 5, expected margin 5", text)

    def test_a_policy_s_own_expected_margin_is_said_to_be_its_own(self):
        self.policy = self.write("own.lua", 'return { name = "own", score = function(o, c)\n'
                                 '  return 1, 123.5 end }\n')
        text = self.decide("--explain", "--format", "text")
        self.assertIn("expected margin 123.5 (the policy's own figure); score 1", text)

    def test_an_offer_shown_in_another_placement_says_so(self):
        # free_shipping is not capped for c2 (no impressions), and ranks first in
        # both placements: shown in hero, so not again in recs
        self.ok("profile", "put", json.dumps(dict(PROFILE, id="c2", propensity={
            "free_shipping": 0.9})), "--store", self.store)
        text = self.decide("--explain", "--format", "text", customer="c2")
        self.assertIn("free_shipping \"Free shipping over 49\": shown in hero instead",
                      self.candidate_block(text, "free_shipping", "recs"))

    def test_an_anonymous_visitor_and_a_fallback(self):
        self.policy = self.write("bad.lua", 'return { name = "bad", score = function(o, c)\n'
                                 '  return c.attrs.age + 1 end }\n')
        text = self.decide("--explain", "--format", "text", customer="nobody")
        self.assertIn("an anonymous visitor", text)
        self.assertIn("The policy failed, so the catalog's fallback actions were served (runtime) "
                      "at bad.lua:2", text)
        self.assertIn("excluded (policy_error): the policy failed", text)

    def test_text_without_explain_lists_the_actions(self):
        text = self.decide("--format", "text")
        self.assertIn("Actions\n  1. recs: jacket", text)
        self.assertNotIn("Candidates", text)

    def test_json_stays_the_default_and_a_bad_format_is_a_usage_error(self):
        got = json.loads(self.decide("--explain"))
        self.assertEqual(got["segment"], "at_risk")
        self.fails(2, "decide", "--store", self.store, "--catalog", self.catalog, "--policy",
                   self.policy, "--customer", "c1", "--format", "yaml")


if __name__ == "__main__":
    unittest.main()
