"""Data you can trust (issue 9): no event can reset a customer's caps,
imports lose nothing, erasure lasts. The real nbx binary on real stores.
Run by ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_data`.
"""
import datetime
import json
import os

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


# ===========================================================================
# 2. Imports lose nothing
# ===========================================================================

class T02Imports(CliTestCase):

    def nightly(self, profiles, events, as_of):
        self.ok("import", "profiles", profiles, "--store", self.store)
        self.ok("ingest", events, "--store", self.store)
        self.ok("rfm", "rebuild", "--store", self.store, "--as-of", as_of)
        return self.export()

    def test_01_the_nightly_sequence_twice_is_the_sequence_once(self):
        """import profiles -> ingest events -> rfm rebuild, run twice with the
        same files (profiles carrying rfm), leaves the export byte for byte as
        after once, and events advanced the CRM's aggregates."""
        profiles, events = self.path("profiles.jsonl"), self.path("events.jsonl")
        self.ok("gen", "profiles", "--count", "400", "--seed", "3", "--as-of",
                "2025-12-01T00:00:00Z", "--out", profiles)
        self.ok("gen", "events", "--customers", "400", "--count", "4000", "--seed", "3",
                "--start", "2026-01-01T00:00:00Z", "--days", "30", "--out", events)
        once = self.nightly(profiles, events, "2026-02-01T00:00:00Z")
        twice = self.nightly(profiles, events, "2026-02-01T00:00:00Z")
        self.assertEqual(twice, once)
        with open(profiles, encoding="utf-8") as f:
            crm = {p["id"]: p for p in map(json.loads, f)}
        advanced = 0
        for line in once.splitlines():
            p = json.loads(line)
            given = crm.get(p["id"], {}).get("rfm")
            if given and p["rfm"]["orders"] > given["orders"]:
                advanced += 1
                self.assertGreater(p["rfm"]["last_purchase"], given["last_purchase"])
        self.assertGreater(advanced, 10, "events advanced few of the CRM's customers")

    def test_02_importing_the_same_file_twice_is_harmless(self):
        path = self.write_jsonl("p.jsonl", [{"id": f"p{i}", "attrs": {"n": i}} for i in range(5)])
        self.ok("import", "profiles", path, "--store", self.store)
        once = self.export()
        self.ok("import", "profiles", path, "--store", self.store)
        self.assertEqual(self.export(), once, "updated_at moved on an import that changed nothing")

    def test_03_every_line_rejected_is_a_failure(self):
        """--skip-invalid is for the odd bad line, not for the wrong file."""
        bad = self.write("bad.jsonl", "not json\n{\"id\": 7}\n")
        rejects = self.path("rejects.jsonl")
        r = self.fails(1, "import", "profiles", bad, "--skip-invalid", rejects, "--store",
                       self.store)
        self.assertIn("every line was rejected", r.stderr)
        self.assertIn("2 lines, 0 applied, 0 duplicates, 2 rejected", r.stdout)
        good = self.write("mixed.jsonl", "not json\n{\"id\": \"p1\"}\n")
        self.ok("import", "profiles", good, "--skip-invalid", rejects, "--store", self.store)
        r = self.fails(1, "ingest", bad, "--skip-invalid", rejects, "--store", self.store)
        self.assertIn("every line was rejected", r.stderr)

    def test_04_ingest_with_a_catalog_refuses_unknown_offers(self):
        catalog = self.path("catalog.json")
        self.ok("gen", "catalog", "--offers", "5", "--out", catalog)
        path = self.write_jsonl("ev.jsonl", [
            exposure("a", "c1", "click", "o001", "2026-01-02T00:00:00Z"),
            exposure("b", "c1", "click", "NOPE", "2026-01-02T00:00:00Z")])
        r = self.fails(1, "ingest", path, "--catalog", catalog, "--store", self.store)
        self.assertIn(f"{path}:2: field 'offer': 'NOPE'", r.stderr)
        self.assertEqual(self.stats()["events_seen"], 0)
        r = self.fails(1, "ingest", path, "--catalog", self.path("missing.json"), "--store",
                       self.store)
        self.assertIn("missing.json", r.stderr)
        self.ok("ingest", path, "--store", self.store)


# ===========================================================================
# 3. Erasure lasts
# ===========================================================================

class T03Erasure(CliTestCase):
    """A store of generated customers, each with an attribute value of its
    own, and their events."""

    COUNT = 3000

    def setUp(self):
        super().setUp()
        generated = self.gen("profiles", "--count", str(self.COUNT), "--seed", "9")
        profiles = []
        for line in generated.splitlines():
            p = json.loads(line)
            p["attrs"]["secret"] = "SECRET-" + p["id"] + "-X"
            profiles.append(p)
        self.profiles = self.write_jsonl("profiles.jsonl", profiles)
        self.events = self.path("events.jsonl")
        self.ok("gen", "events", "--customers", str(self.COUNT), "--count", "20000", "--seed",
                "9", "--out", self.events)
        self.ok("import", "profiles", self.profiles, "--store", self.store)
        self.ok("ingest", self.events, "--store", self.store)

    def erase(self, *args, input=None):
        r = self.ok("profile", "delete", "--store", self.store, *args, input=input)
        return {d["id"]: d["records"] for d in map(json.loads, r.stdout.splitlines())}

    def test_01_a_replay_does_not_bring_an_erased_customer_back(self):
        """The report: after `nbx profile delete c0000002`, ingesting the old
        events file again brought the profile back (orders: 1)."""
        lost = self.erase("c0000002", "c0000003")
        self.assertGreater(lost["c0000002"], 1)
        self.assertGreater(lost["c0000003"], 1)
        r = self.ok("ingest", self.events, "--store", self.store)
        self.assertRegex(r.stdout, r", [1-9]\d* suppressed in ")
        r = self.ok("import", "profiles", self.profiles, "--store", self.store)
        self.assertRegex(r.stdout, r", 2 suppressed in ")
        self.fails(1, "profile", "get", "c0000002", "--store", self.store)
        r = self.fails(1, "profile", "put", '{"id": "c0000002", "ltv": 1}', "--store", self.store)
        self.assertIn("erased", r.stderr)
        # renewed consent
        self.ok("profile", "restore", "c0000002", "--store", self.store)
        r = self.fails(1, "profile", "restore", "c0000002", "--store", self.store)
        self.assertIn("not an erased customer", r.stderr)
        self.ok("import", "profiles", self.profiles, "--store", self.store)
        self.assertEqual(self.profile("c0000002")["id"], "c0000002")
        self.fails(1, "profile", "get", "c0000003", "--store", self.store)

    def test_02_many_ids_from_arguments_a_file_and_stdin(self):
        ids = [f"c{n:07d}" for n in range(1, self.COUNT + 1, 7)]
        path = self.write("ids.txt", "\n".join(ids[10:]) + "\n\n")
        stdin = "\n".join(ids[2:10]) + "\n"
        lost = self.erase(ids[0], ids[1], "-", "--ids", path, input=stdin)
        self.assertEqual(sorted(lost), sorted(ids))
        self.assertTrue(all(n > 0 for n in lost.values()), lost)
        self.assertEqual(self.stats()["profiles"], self.COUNT - len(ids))
        again = self.erase("--ids", path)
        self.assertEqual(set(again.values()), {0}, "erased twice")
        self.assertEqual(self.erase("nobody"), {"nobody": 0})
        r = self.ok("profile", "delete", "--store", self.store, "nobody", "c0000002")
        self.assertIn("2 ids erased (1 of them held records)", r.stderr)
        r = self.fails(2, "profile", "delete", "--store", self.store)
        self.assertIn("no ids", r.stderr)
        bad = self.write("bad.txt", "c1\n" + "x" * 300 + "\n")
        r = self.fails(1, "profile", "delete", "--ids", bad, "--store", self.store)
        self.assertIn("bad.txt:2", r.stderr)

    def test_03_erasure_and_compaction_leave_no_byte_of_the_customer(self):
        ids = [f"c{n:07d}" for n in range(1, self.COUNT + 1, 7)]
        self.erase("--ids", self.write("ids.txt", "\n".join(ids) + "\n"))
        copy = self.path("compacted")
        r = self.ok("store", "compact", "--store", self.store, "--out", copy)
        with open(os.path.join(copy, "data.mdb"), "rb") as f:
            compacted = f.read()
        with open(os.path.join(self.store, "data.mdb"), "rb") as f:
            original = f.read()
        left = [i for i in ids if i.encode() in compacted or
                ("SECRET-" + i).encode() in compacted]
        self.assertEqual(left, [], "the compacted file holds erased customers")
        # the store's own file may still hold them in freed pages (it does
        # here): what compaction is for
        in_original = sum(("SECRET-" + i).encode() in original for i in ids)
        self.assertGreater(in_original, 0, "expected freed pages to keep some erased bytes")
        # the copy is a store: the same export, the erasures kept
        self.assertEqual(self.export(copy), self.export())
        with open(self.profiles, encoding="utf-8") as f:
            path = self.write_jsonl("one.jsonl", [json.loads(f.readline())])
        r = self.ok("import", "profiles", path, "--store", copy)
        self.assertIn("1 suppressed", r.stdout)
        # refusals
        r = self.fails(2, "store", "compact", "--store", self.store, "--out", copy)
        self.assertIn("not empty", r.stderr)
        r = self.fails(2, "store", "compact", "--store", self.store, "--out", self.store)
        self.assertIn("the store itself", r.stderr)
        self.fails(2, "store", "compact", "--store", self.store)

    def test_04_upgrade_of_a_current_store_changes_nothing(self):
        r = self.ok("store", "upgrade", "--store", self.store)
        self.assertIn("format 3, nothing to do", r.stdout)


# ===========================================================================
# 4. Damaged and odd inputs
# ===========================================================================

class T04OddInputs(CliTestCase):

    def test_01_a_fifo_as_catalog_or_policy_is_refused_at_once(self):
        """A FIFO blocked nbx (and nginx -t) in open() before the
        regular-file check."""
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        self.ok("profile", "put", '{"id": "c1"}', "--store", self.store)
        for args in (["catalog", "check", fifo], ["policy", "check", fifo],
                     ["decide", "--store", self.store, "--catalog", fifo, "--policy", POLICY,
                      "--customer", "c1"]):
            with self.subTest(command=args[0]):
                r = self.fails(1, *args, timeout=30)
                self.assertIn("not a regular file (a FIFO)", r.stderr)
