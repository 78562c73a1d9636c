"""The audit log from Python (bindings/python/nbx/audit.py): log= of
Engine.decide() and Engine.batch() writes the library's audit lines to a
path or a file object, in input order; a log that cannot be written raises;
Engine.replay() makes a logged decision again."""
import io
import json
import os
import unittest

from pyutil import AS_OF, CATALOG, POLICY, TempDirCase, nbx, run_nbx


class AuditLogCase(TempDirCase):

    def setUp(self):
        super().setUp()
        self.store = self.path("store")
        for i in range(1, 7):
            run_nbx("profile", "put", json.dumps({
                "id": f"u{i}", "consent": {"personalization": True},
                "propensity": {"winback_20": i / 10}}), "--store", self.store)
        self.engine = nbx.Engine(store=self.store, catalog=CATALOG, policy=POLICY)
        self.addCleanup(self.engine.close)

    def lines(self, path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def test_01_decide_appends_one_line_per_decision_to_a_path(self):
        log = self.path("audit.jsonl")
        a = self.engine.decide("u1", session={"channel": "web"}, as_of=AS_OF, log=log)
        b = self.engine.decide("u2", placements=["hero"], as_of=AS_OF, log=log)
        got = self.lines(log)
        self.assertEqual([x["decision_id"] for x in got], [a["decision_id"], b["decision_id"]])
        self.assertEqual(got[0]["session"], {"channel": "web"})
        self.assertEqual(got[1]["placements"], ["hero"])
        self.assertEqual([(x["offer"], x["placement"]) for x in got[0]["actions"]],
                         [(x["offer"], x["placement"]) for x in a["actions"]])
        self.assertEqual(got[0]["as_of"], AS_OF)
        self.assertNotIn("audit", a, "the result itself is unchanged")

    def test_02_batch_writes_in_input_order_to_a_file_object(self):
        ids = [f"u{i}" for i in (3, 1, 6, 2, 5, 4)] * 5 + ["stranger"]
        for mode in ("text", "binary"):
            with self.subTest(mode=mode):
                out = io.StringIO() if mode == "text" else io.BytesIO()
                results = list(self.engine.batch(ids, threads=2, as_of=AS_OF, log=out))
                text = out.getvalue()
                text = text if isinstance(text, str) else text.decode()
                got = [json.loads(line) for line in text.splitlines()]
                self.assertEqual([x["customer"] for x in got], ids)
                self.assertEqual([x["decision_id"] for x in got],
                                 [r["decision_id"] for r in results])

    def test_03_an_audit_log_object_stays_open_across_calls(self):
        path = self.path("kept.jsonl")
        with nbx.AuditLog(path) as log:
            for i in range(1, 4):
                self.engine.decide(f"u{i}", as_of=AS_OF, log=log)
            list(self.engine.batch(["u4", "u5"], as_of=AS_OF, log=log))
        self.assertEqual([x["customer"] for x in self.lines(path)],
                         ["u1", "u2", "u3", "u4", "u5"])

    @unittest.skipUnless(os.path.exists("/dev/full"), "needs /dev/full")
    def test_04_a_log_that_cannot_be_written_raises(self):
        with self.assertRaises(nbx.IOFailure) as cm:
            self.engine.decide("u1", as_of=AS_OF, log="/dev/full")
        self.assertIn("/dev/full", cm.exception.message)
        with self.assertRaises(nbx.IOFailure) as cm:
            self.engine.decide("u1", as_of=AS_OF, log=self.path("no/such/dir/log"))
        self.assertIn("no/such/dir/log", cm.exception.message)
        with self.assertRaises(nbx.IOFailure):
            list(self.engine.batch(["u1", "u2"], as_of=AS_OF, log="/dev/full"))
        with self.assertRaises(nbx.InvalidArgument):
            self.engine.decide("u1", log=42)

    def test_05_replay_of_a_logged_decision(self):
        log = self.path("audit.jsonl")
        self.engine.decide("u3", as_of=AS_OF, log=log)
        with open(log) as f:
            line = f.readline()
        report = self.engine.replay(line)
        self.assertTrue(report["identical"], report)
        self.assertEqual(report["reasons"], [])
        self.engine.record({"event_id": "x1", "customer": "u3", "type": "impression",
                            "offer": "winback_20", "ts": AS_OF})
        report = self.engine.replay(line.encode())
        self.assertIn("events_since", [r["reason"] for r in report["reasons"]], report)
        with self.assertRaises(nbx.ParseError):
            self.engine.replay("{}")


if __name__ == "__main__":
    unittest.main()
