"""nbx kill / nbx unkill / nbx kill --list on a real store with the real
binary: a killed offer is excluded as `killed` from the next decision (each
`nbx decide` is a process of its own: the kill reaches it through the
store), unkilling restores it, every change is kept in the history, and bad
input names the field and writes nothing."""
import json
import unittest

from cliutil import CATALOG, POLICY, CliTestCase

AS_OF = "2026-03-10T12:00:00Z"


class Kill(CliTestCase):

    def setUp(self):
        super().setUp()
        self.write_jsonl("p.jsonl", [{"id": "alice", "consent": {"personalization": True}}])
        self.ok("import", "profiles", self.path("p.jsonl"), "--store", self.store)

    def decide(self):
        r = self.ok("decide", "--store", self.store, "--catalog", CATALOG, "--policy", POLICY,
                    "--customer", "alice", "--as-of", AS_OF, "--explain")
        return json.loads(r.stdout)

    @staticmethod
    def served(d):
        return {a["offer"] for a in d["actions"]}

    def kills(self, *flags):
        return json.loads(self.ok("kill", "--list", "--json", *flags, "--store", self.store).stdout)

    def test_kill_excludes_the_offer_from_the_next_decision_and_unkill_restores_it(self):
        before = self.decide()
        offer = before["actions"][0]["offer"]
        r = self.ok("kill", "offer", offer, "--store", self.store,
                    "--reason", "legal: wrong price \x1b[2J")
        self.assertIn(f"killed offer {offer}", r.stdout)

        after = self.decide()
        self.assertNotIn(offer, self.served(after), after)
        killed = [c for c in after["candidates"] if c["offer"] == offer]
        self.assertTrue(killed, after)
        for c in killed:
            self.assertEqual(c["excluded"], "killed", c)
            self.assertEqual(c["reason"], "killed: legal: wrong price \\x1b[2J", c)

        # the list says what, why, when and by whom; the terminal gets no escape
        text = self.ok("kill", "--list", "--store", self.store).stdout
        self.assertIn(f"offer  {offer}", text)
        self.assertIn("by cli: legal: wrong price \\x1b[2J", text)
        self.assertNotIn("\x1b", text)
        [k] = self.kills()
        self.assertEqual((k["kind"], k["name"], k["by"]), ("offer", offer, "cli"), k)
        self.assertEqual(k["reason"], "legal: wrong price \x1b[2J")

        self.ok("unkill", "offer", offer, "--store", self.store, "--reason", "fixed")
        self.assertIn(offer, self.served(self.decide()))
        self.assertEqual(self.kills(), [])
        self.assertIn("nothing is killed", self.ok("kill", "--list", "--store", self.store).stdout)

        history = self.kills("--history")
        self.assertEqual([(h["seq"], h["change"], h["name"], h["reason"]) for h in history],
                         [(1, "kill", offer, "legal: wrong price \x1b[2J"),
                          (2, "unkill", offer, "fixed")])
        text = self.ok("kill", "--list", "--history", "--store", self.store).stdout
        self.assertEqual(len(text.splitlines()), 2, text)

    def test_a_killed_fallback_is_not_served(self):
        failing = self.write("failing.lua",
                             "return { name = 'failing', score = function(o) error('boom') end }\n")

        def decide():
            r = self.ok("decide", "--store", self.store, "--catalog", CATALOG, "--policy", failing,
                        "--customer", "alice", "--as-of", AS_OF)
            d = json.loads(r.stdout)
            self.assertIs(d["fallback"], True, d)
            return self.served(d)

        self.assertIn("brand_banner", decide())
        self.ok("kill", "offer", "brand_banner", "--store", self.store, "--reason", "old artwork")
        self.assertNotIn("brand_banner", decide())

    def test_bad_input_names_the_field_and_writes_nothing(self):
        cases = [
            (1, ("kill", "arm", "chal/lenger", "--reason", "r"), "field 'arm'"),
            (1, ("kill", "arm", "holdout", "--reason", "r"), "field 'arm'"),
            (1, ("kill", "arm", "q4.holdout", "--reason", "r"), "field 'arm'"),
            (1, ("kill", "policy", "not-a-version", "--reason", "r"), "field 'policy'"),
            (1, ("kill", "offer", "x" * 129, "--reason", "r"), "field 'offer'"),
            (2, ("kill", "offer", "o1", "--reason", ""), "--reason"),
            (1, ("kill", "offer", "o1", "--reason", "r" * 1025), "field 'reason'"),
            (1, ("unkill", "offer", "o1"), "field 'offer': 'o1' is not killed"),
            (2, ("kill", "offer", "o1"), "--reason"),
            (2, ("kill", "thing", "o1", "--reason", "r"), "kind 'thing'"),
            (2, ("kill", "offer", "--reason", "r"), "offer ID"),
            (2, ("kill", "offer", "o1", "--reason", "r", "--json"), "--list"),
            (2, ("kill", "--list", "offer", "o1"), "--list"),
        ]
        for code, args, message in cases:
            with self.subTest(args=args[:3]):
                r = self.fails(code, *args, "--store", self.store)
                self.assertIn(message, r.stderr)
        self.assertEqual(self.kills(), [])
        self.assertEqual(self.kills("--history"), [], "a refused change reached the history")

    def test_a_missing_store_is_not_created(self):
        missing = self.path("nowhere")
        self.fails(1, "kill", "offer", "o1", "--reason", "r", "--store", missing)
        self.fails(1, "kill", "--list", "--store", missing)


if __name__ == "__main__":
    unittest.main()
