"""Data you can trust (issue 9): no event can reset a customer's caps,
imports lose nothing, erasure lasts. The real nbx binary on real stores.
Run by ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_data`.
"""
import datetime
import json

from cliutil import POLICY, CliTestCase, exposure

DAY = datetime.timedelta(days=1)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


# ===========================================================================
# 1. Clocks: no event can reset a customer's caps
# ===========================================================================

class T01Clock(CliTestCase):
    """A generated catalog (contacts capped at 5 per 7 days) and u1, who
    consents to everything."""

    def setUp(self):
        super().setUp()
        self.now = utcnow()
        self.catalog = self.path("catalog.json")
        self.ok("gen", "catalog", "--offers", "50", "--start", iso(self.now - 10 * DAY),
                "--out", self.catalog)
        self.ok("profile", "put", "--store", self.store,
                json.dumps({"id": "u1", "consent": {"personalization": True, "email": True}}))

    def decide(self, as_of, *extra):
        r = self.ok("decide", "--store", self.store, "--catalog", self.catalog, "--policy",
                    POLICY, "--customer", "u1", "--as-of", iso(as_of), *extra)
        return [a["offer"] for a in json.loads(r.stdout)["actions"]]

    def at_the_contact_cap(self):
        """5 impressions an hour ago: the contact policy's 5 per 7 days."""
        self.assertTrue(self.decide(self.now), "u1 gets no actions before any impression")
        events = [exposure(f"imp{i}", "u1", "impression", f"o00{i + 1}",
                           iso(self.now - datetime.timedelta(minutes=60 - i)))
                  for i in range(5)]
        self.ok("ingest", self.write_jsonl("impressions.jsonl", events), "--store", self.store)
        self.assertEqual(self.decide(self.now), [], "5 impressions did not reach the cap")

    def test_01_a_click_dated_ahead_cannot_give_actions_back(self):
        """The report: after a click dated 2027-06-01 the same decision (same
        --as-of) returned 5 actions. The click is refused, naming FILE:LINE
        and ts, and the customer stays at the cap."""
        self.at_the_contact_cap()
        dates = [self.now + 365 * DAY]
        report = datetime.datetime(2027, 6, 1, tzinfo=datetime.timezone.utc)
        if report > self.now + DAY:
            dates.insert(0, report)
        for when in dates:
            with self.subTest(ts=iso(when)):
                path = self.write_jsonl("click.jsonl",
                                        [exposure("f1", "u1", "click", "o001", iso(when))])
                r = self.fails(1, "ingest", path, "--store", self.store)
                self.assertIn(f"{path}:1: field 'ts'", r.stderr)
                self.assertEqual(self.decide(self.now), [])
        stats = self.stats()
        self.assertEqual(stats["events_seen"], 5, "a refused click was recorded")

    def test_02_the_skew_is_a_flag(self):
        ahead = self.now + datetime.timedelta(minutes=10)
        path = self.write_jsonl("soon.jsonl", [exposure("s1", "u1", "click", "o001", iso(ahead))])
        r = self.fails(1, "ingest", path, "--store", self.store)
        self.assertIn("field 'ts'", r.stderr)
        self.ok("ingest", path, "--store", self.store, "--max-skew", "3600")
        self.assertEqual(self.stats()["events_seen"], 1)
        for bad in ("0", "86401", "5m"):
            with self.subTest(value=bad):
                r = self.fails(2, "ingest", path, "--store", self.store, "--max-skew", bad)
                self.assertIn("--max-skew", r.stderr)
        # a backfill is always fine
        old = self.write_jsonl("old.jsonl", [exposure("o1", "u1", "click", "o001",
                                                      "2020-01-01T00:00:00Z")])
        self.ok("ingest", old, "--store", self.store)

    def test_03_a_decision_recorded_with_a_future_clock_keeps_the_cap(self):
        """Impressions a decision records are dated by its clock (--as-of),
        which the skew check does not see: counters are still pruned by the
        writer's clock, so a year ahead does not erase today's."""
        self.at_the_contact_cap()
        later = self.decide(self.now + 400 * DAY, "--record")
        self.assertTrue(later, "nothing recorded a year ahead")
        self.assertEqual(self.decide(self.now), [])
