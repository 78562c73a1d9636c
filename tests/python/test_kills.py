"""Kill switches through the Python binding (nbx.kill, nbx.unkill,
nbx.kills and the Engine's methods) on a real store with the real libnbx:
a killed offer is excluded as `killed` by the next decision, an unkill
brings it back, the history keeps every change as `nbx kill --list` shows
it, a killed arm sends its customers to the first arm, and bad input is
refused naming what is wrong, writing nothing."""
import json
import os
import unittest

import nbx
from pyutil import AS_OF, CATALOG, SOURCE_DIR, TempDirCase, consenting_store, run_nbx

POLICY = os.path.join(SOURCE_DIR, "policies", "margin_per_session.lua")
CUSTOMERS = [f"u{i}" for i in range(1, 41)]


class KillCase(TempDirCase):

    def setUp(self):
        super().setUp()
        self.store = consenting_store(self.path("store"), CUSTOMERS, {"winback_20": 0.3})

    def engine(self, **kw):
        kw.setdefault("store", self.store)
        kw.setdefault("catalog", CATALOG)
        if "deployment" not in kw:
            kw.setdefault("policy", POLICY)
        e = nbx.Engine(**kw)
        self.addCleanup(e.close)
        return e

    def cli_list(self, *flags):
        return json.loads(run_nbx("kill", "--list", "--json", *flags,
                                  "--store", self.store).stdout)


class T01Offer(KillCase):

    def test_01_a_killed_offer_is_excluded_by_the_next_decision(self):
        e = self.engine()
        offer = e.decide("u1", as_of=AS_OF)["actions"][0]["offer"]
        nbx.kill(self.store, "offer", offer, reason="legal hold")
        r = e.decide("u1", as_of=AS_OF, explain=True)
        self.assertNotIn(offer, [a["offer"] for a in r["actions"]])
        killed = [c for c in r["candidates"] if c["offer"] == offer]
        self.assertTrue(killed, r["candidates"])
        for c in killed:
            self.assertEqual((c["excluded"], c["reason"]), ("killed", "killed: legal hold"))
        now = nbx.kills(self.store)
        self.assertEqual(len(now), 1, now)
        self.assertEqual({k: now[0][k] for k in ("kind", "name", "reason", "by")},
                         {"kind": "offer", "name": offer, "reason": "legal hold",
                          "by": "python"})
        self.assertRegex(now[0]["at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
        self.assertEqual(now, self.cli_list(), "the same list as the CLI's")

        nbx.unkill(self.store, "offer", offer, reason="cleared")
        self.assertIn(offer, [a["offer"] for a in e.decide("u1", as_of=AS_OF)["actions"]])
        self.assertEqual(nbx.kills(self.store), [])

    def test_02_the_history_keeps_every_change_in_order(self):
        nbx.kill(self.store, "offer", "winback_20", "first", by="crm-job")
        nbx.kill(self.store, "offer", "winback_20", "again, reason changed")
        nbx.kill(self.store, "policy", "0123456789abcdef", "bad release")
        nbx.unkill(self.store, "offer", "winback_20")
        history = nbx.kills(self.store, history=True)
        self.assertEqual([(h["seq"], h["change"], h["kind"], h["name"], h["reason"], h["by"])
                          for h in history],
                         [(1, "kill", "offer", "winback_20", "first", "crm-job"),
                          (2, "kill", "offer", "winback_20", "again, reason changed", "python"),
                          (3, "kill", "policy", "0123456789abcdef", "bad release", "python"),
                          (4, "unkill", "offer", "winback_20", "", "python")])
        self.assertEqual(history, self.cli_list("--history"))
        self.assertEqual([(k["kind"], k["name"]) for k in nbx.kills(self.store)],
                         [("policy", "0123456789abcdef")])

    def test_03_unkill_of_what_is_not_killed_is_not_found(self):
        with self.assertRaises(nbx.NotFound) as cm:
            nbx.unkill(self.store, "offer", "winback_20")
        self.assertIn("'winback_20' is not killed", cm.exception.message)
        self.assertEqual(nbx.kills(self.store, history=True), [])

    def test_04_through_an_engine_of_this_process(self):
        # one LMDB environment per directory and process: a path naming the
        # directory of an open engine goes through that engine's store
        e = self.engine()
        e.kill("offer", "winback_20", "from the engine")
        nbx.kill(self.store + "/.", "offer", "free_gift", "a path spelled otherwise")
        self.assertEqual([k["name"] for k in e.kills()], ["free_gift", "winback_20"])
        r = e.decide("u1", as_of=AS_OF, explain=True)
        self.assertIn("winback_20", [c["offer"] for c in r["candidates"]
                                     if c.get("excluded") == "killed"])
        e.unkill("offer", "winback_20")
        self.assertEqual([k["name"] for k in nbx.kills(self.store)], ["free_gift"])

    def test_05_not_through_an_engine_opened_read_only(self):
        nbx.kill(self.store, "offer", "free_gift", "before the engine")
        ro = self.engine(readonly=True)
        for change in (lambda: ro.kill("offer", "x", "no"),
                       lambda: nbx.kill(self.store, "offer", "x", "no"),
                       lambda: nbx.unkill(self.store, "offer", "free_gift")):
            with self.assertRaises(nbx.ReadOnly) as cm:
                change()
            self.assertIn("readonly=True", cm.exception.message)
        self.assertEqual([k["name"] for k in ro.kills()], ["free_gift"], "reading is fine")
        self.assertEqual(len(nbx.kills(self.store, history=True)), 1, "nothing written")


class T02Arm(KillCase):

    def test_01_a_killed_arm_sends_its_customers_to_the_first_arm(self):
        deployment = self.path("q4.json")
        with open(deployment, "w") as f:
            json.dump({"name": "q4", "salt": "q4-2026", "holdout": {"percent": 0},
                       "arms": [{"name": "champion", "percent": 50, "policy": POLICY},
                                {"name": "challenger", "percent": 50, "policy": POLICY}]}, f)
        e = self.engine(deployment=deployment)
        mine = [c for c in CUSTOMERS if e.arm_of(c) == "challenger"]
        self.assertTrue(mine)
        nbx.kill(e, "arm", "q4.challenger", "canary looks wrong")
        for c in mine:
            r = e.decide(c, as_of=AS_OF)
            self.assertEqual((r["arm"], r["assigned"]), ("champion", "challenger"), c)
        e.unkill("arm", "q4.challenger")
        self.assertEqual(e.decide(mine[0], as_of=AS_OF)["arm"], "challenger")
        # by its name alone: the challenger of every deployment
        nbx.kill(e, "arm", "challenger", "every challenger off")
        self.assertEqual(e.decide(mine[0], as_of=AS_OF)["arm"], "champion")
        e.unkill("arm", "challenger")
        self.assertEqual(e.decide(mine[0], as_of=AS_OF)["arm"], "challenger")


class T03BadInput(KillCase):

    def refused(self, error, words, *args, **kw):
        with self.assertRaises(error) as cm:
            nbx.kill(*args, **kw)
        for w in words:
            self.assertIn(w, cm.exception.message)
        return cm.exception

    def test_01_each_mistake_is_named_and_nothing_is_written(self):
        s = self.store
        self.refused(nbx.InvalidArgument, ["kind", "'offers'"], s, "offers", "x", "r")
        self.refused(nbx.InvalidArgument, ["kind", "None"], s, None, "x", "r")
        self.refused(nbx.InvalidArgument, ["kind", "1"], s, 1, "x", "r")
        self.refused(nbx.InvalidArgument, ["name", "NoneType"], s, "offer", None, "r")
        self.refused(nbx.InvalidArgument, ["name", "NUL"], s, "offer", "a\0b", "r")
        self.refused(nbx.InvalidArgument, ["field 'reason'", "needs a reason"],
                     s, "offer", "x", None)
        self.refused(nbx.InvalidArgument, ["field 'reason'"], s, "offer", "x", "")
        self.refused(nbx.InvalidArgument, ["field 'reason'", "1024"], s, "offer", "x",
                     "r" * 1025)
        self.refused(nbx.InvalidArgument, ["field 'offer'"], s, "offer", "", "r")
        self.refused(nbx.InvalidArgument, ["field 'arm'", "DEPLOYMENT.ARM"],
                     s, "arm", "chal lenger", "r")
        self.refused(nbx.InvalidArgument, ["field 'arm'", "holdout"], s, "arm", "holdout", "r")
        self.refused(nbx.InvalidArgument, ["field 'arm'", "holdout"], s, "arm", "q4.holdout",
                     "r")
        self.refused(nbx.InvalidArgument, ["field 'policy'", "16 lowercase hex"],
                     s, "policy", "ABC", "r")
        self.refused(nbx.InvalidArgument, ["field 'by'"], s, "offer", "x", "r", by="a b")
        self.refused(nbx.InvalidArgument, ["store", "int"], 42, "offer", "x", "r")
        self.refused(nbx.NotFound, [self.path("nowhere")], self.path("nowhere"),
                     "offer", "x", "r")
        with self.assertRaises(nbx.InvalidArgument):
            nbx.unkill(s, "policies", "0123456789abcdef")
        self.assertFalse(os.path.exists(self.path("nowhere")), "no store created")
        self.assertEqual(nbx.kills(s, history=True), [], "nothing written")
        with self.assertRaises(nbx.NotFound):
            nbx.kills(self.path("nowhere"))


if __name__ == "__main__":
    unittest.main()
