"""The audit log of the CLI and its replay (bindings/cli/audit.c): `nbx
decide --log`, `nbx batch --log` (input order, resumed with the output),
failures to write that are loud, and `nbx audit replay` on a batch log:
identical while nothing changed, then naming a new policy or new events,
with its exit statuses. The real binary on real stores."""
import json
import os
import signal
import subprocess
import time
import unittest

from cliutil import CATALOG, NBX, POLICY, SOURCE_DIR, CliTestCase, generated_store

AS_OF = "2026-03-10T12:00:00Z"

ORDER_POLICY = """
return { name = "by_cost", score = function(offer) return offer.unit_cost end }
"""


class AuditCase(CliTestCase):

    def setUp(self):
        super().setUp()
        people = [{"id": f"p{i}", "consent": {"personalization": True},
                   "propensity": {"winback_20": i / 20}} for i in range(1, 13)]
        self.write_jsonl("p.jsonl", people)
        self.ok("import", "profiles", self.path("p.jsonl"), "--store", self.store)
        self.ids = [p["id"] for p in people]

    def engine_args(self, policy=POLICY):
        return ["--store", self.store, "--catalog", CATALOG, "--policy", policy]

    def read_log(self, name="audit.jsonl"):
        with open(self.path(name), encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def batch_log(self, *extra):
        customers = self.write("customers.txt", "\n".join(
            self.ids + ["nobody", '{"id":"p3","channel":"web"}']) + "\n")
        self.ok("batch", *self.engine_args(), "--customers", customers, "--as-of", AS_OF,
                "--threads", "2", "--out", self.path("out.jsonl"), "--log",
                self.path("audit.jsonl"), *extra)
        return self.read_log()


class DecideLog(AuditCase):

    def test_01_each_decision_appends_its_line(self):
        results = []
        for customer in ("p1", "p2", "stranger"):
            r = self.ok("decide", *self.engine_args(), "--customer", customer, "--as-of", AS_OF,
                        "--session", "channel=web", "--placement", "hero",
                        "--log", self.path("audit.jsonl"))
            results.append(json.loads(r.stdout))
        log = self.read_log()
        self.assertEqual([x["decision_id"] for x in log], [r["decision_id"] for r in results])
        for line, result in zip(log, results):
            self.assertEqual(line["customer"], result["customer"])
            self.assertEqual(line["session"], {"channel": "web"})
            self.assertEqual(line["placements"], ["hero"])
            self.assertEqual(line["as_of"], AS_OF)
            self.assertEqual([(a["offer"], a["score"]) for a in line["actions"]],
                             [(a["offer"], a["score"]) for a in result["actions"]])

    def test_02_a_log_that_cannot_be_written_fails_the_command(self):
        for path in (self.path("no/such/dir/audit.jsonl"), "/dev/full"):
            if path == "/dev/full" and not os.path.exists(path):
                continue
            r = self.fails(1, "decide", *self.engine_args(), "--customer", "p1",
                           "--as-of", AS_OF, "--log", path)
            self.assertIn(path, r.stderr)
            self.assertEqual(r.stdout, "", "no result without its audit line")


class BatchLog(AuditCase):

    def test_01_lines_in_input_order_whatever_the_threads(self):
        log = self.batch_log()
        with open(self.path("out.jsonl"), encoding="utf-8") as f:
            out = [json.loads(line) for line in f]
        self.assertEqual([x["customer"] for x in log], self.ids + ["nobody", "p3"])
        self.assertEqual([x["decision_id"] for x in log], [x["decision_id"] for x in out])
        self.assertEqual(log[-1]["session"], {"channel": "web"})

    def test_02_appends_to_what_the_file_holds(self):
        self.write("audit.jsonl", '{"earlier":true}\n')
        with open(self.path("audit.jsonl"), encoding="utf-8") as f:
            self.assertEqual(len(f.readlines()), 1)
        log = self.batch_log()
        self.assertEqual(log[0], {"earlier": True})
        self.assertEqual(len(log), 1 + len(self.ids) + 2)

    @unittest.skipUnless(os.path.exists("/dev/full"), "needs /dev/full")
    def test_03_a_log_that_cannot_be_written_fails_the_run(self):
        customers = self.write("c.txt", "p1\np2\n")
        r = self.fails(1, "batch", *self.engine_args(), "--customers", customers,
                       "--as-of", AS_OF, "--log", "/dev/full", "--out", self.path("o.jsonl"))
        self.assertIn("--log /dev/full", r.stderr)

    def test_04_the_log_is_not_the_output(self):
        customers = self.write("c.txt", "p1\n")
        r = self.fails(2, "batch", *self.engine_args(), "--customers", customers,
                       "--out", self.path("same"), "--log", self.path("same"))
        self.assertIn("--log", r.stderr)


class BatchLogResume(CliTestCase):
    """A run killed anywhere and resumed leaves one line per customer in the
    log, as in the output."""

    PROFILES = 3000

    def test_01_killed_and_resumed(self, every="100"):
        store, catalog = generated_store(self.tmp, self.PROFILES)
        out, log, ckpt = self.path("out.jsonl"), self.path("audit.jsonl"), self.path("run.ckpt")
        command = [NBX, "batch", "--store", store, "--catalog", catalog, "--policy", POLICY,
                   "--as-of", AS_OF, "--all", "--threads", "2", "--out", out, "--log", log,
                   "--checkpoint", ckpt, "--checkpoint-every", every]
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        started = time.monotonic()
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=600)
        seconds = time.monotonic() - started
        for fraction in (0.2, 0.5, 0.8):
            for f in (out, log, ckpt):
                if os.path.exists(f):
                    os.unlink(f)
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env)
            time.sleep(fraction * seconds)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out, encoding="utf-8") as f:
                decided = [json.loads(line)["decision_id"] for line in f]
            with open(log, encoding="utf-8") as f:
                logged = [json.loads(line)["decision_id"] for line in f]
            self.assertEqual(len(decided), self.PROFILES, f"killed after {fraction}")
            self.assertEqual(logged, decided, f"killed after {fraction}: one line per customer")

    def test_02_killed_before_its_first_checkpoint(self):
        # the lines of a run killed before it committed anything are cut
        # off as well: its checkpoint records where the log began
        self.test_01_killed_and_resumed(every="1000000000")


class Replay(AuditCase):

    def replay(self, *extra, policy=POLICY):
        return self.nbx("audit", "replay", self.path("audit.jsonl"), *self.engine_args(policy),
                        *extra)

    def test_01_a_batch_log_replays_identical(self):
        log = self.batch_log()
        r = self.replay()
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), len(log))
        for line, entry in zip(lines, log):
            self.assertTrue(line.startswith(entry["decision_id"]), line)
            self.assertTrue(line.endswith("identical"), line)
        self.assertIn(f"{len(log)} decisions: {len(log)} identical, 0 different", r.stderr)

    def test_02_json_reports_and_a_summary(self):
        log = self.batch_log()
        r = self.replay("--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        docs = [json.loads(line) for line in r.stdout.splitlines()]
        reports, summary = docs[:-1], docs[-1]["summary"]
        self.assertEqual([x["decision_id"] for x in reports], [x["decision_id"] for x in log])
        self.assertTrue(all(x["identical"] for x in reports))
        self.assertEqual(summary["decisions"], len(log))
        self.assertEqual(summary["identical"], len(log))

    def test_03_a_new_policy_is_named_and_the_exit_status_says_so(self):
        log = self.batch_log()
        policy = self.write("by_cost.lua", ORDER_POLICY)
        r = self.replay(policy=policy)
        self.assertEqual(r.returncode, 4, r.stderr)
        for line in r.stdout.splitlines():
            self.assertIn("different", line)
            self.assertIn("policy_changed", line)
        self.assertIn(f"policy_changed {len(log)}", r.stderr)
        r = self.replay("--allow-different", policy=policy)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_04_new_events_are_named(self):
        self.batch_log()
        events = [{"event_id": f"e{i}", "customer": "p5", "type": "impression",
                   "offer": "winback_20", "ts": "2026-03-10T13:00:00Z"} for i in range(3)]
        self.write_jsonl("ev.jsonl", events)
        self.ok("import", "events", self.path("ev.jsonl"), "--store", self.store)
        r = self.replay("--json")
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        reports = [json.loads(line) for line in r.stdout.splitlines()][:-1]
        for rep in reports:
            reasons = [x["reason"] for x in rep["reasons"]]
            if rep["customer"] == "p5":
                self.assertFalse(rep["identical"], rep)
                self.assertIn("events_since", reasons, rep)
            else:
                self.assertTrue(rep["identical"], rep)
                self.assertEqual(reasons, [], rep)

    def test_04b_a_new_catalog_and_an_updated_profile_are_named(self):
        log = self.batch_log()
        with open(CATALOG, encoding="utf-8") as f:
            catalog = json.load(f)
        catalog["offers"][0]["price"] = catalog["offers"][0]["price"] + 1
        new_catalog = self.write("catalog2.json", json.dumps(catalog))
        r = self.nbx("audit", "replay", self.path("audit.jsonl"), "--store", self.store,
                     "--catalog", new_catalog, "--policy", POLICY, "--json")
        reports = [json.loads(line) for line in r.stdout.splitlines()][:-1]
        self.assertEqual(len(reports), len(log))
        for rep in reports:
            self.assertIn("catalog_changed", [x["reason"] for x in rep["reasons"]], rep)
        # p4 again, with another propensity: only p4's decisions name it
        self.write_jsonl("p4.jsonl", [{"id": "p4", "consent": {"personalization": True},
                                       "propensity": {"winback_20": 0.9}}])
        self.ok("import", "profiles", self.path("p4.jsonl"), "--store", self.store)
        r = self.replay("--json")
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        for rep in [json.loads(line) for line in r.stdout.splitlines()][:-1]:
            reasons = [x["reason"] for x in rep["reasons"]]
            if rep["customer"] == "p4":
                self.assertFalse(rep["identical"], rep)
                self.assertEqual(reasons, ["profile_updated"], rep)
            else:
                self.assertTrue(rep["identical"], rep)
                self.assertEqual(reasons, [], rep)

    def test_05_lines_without_a_decision_and_unreadable_lines(self):
        self.batch_log()
        with open(self.path("audit.jsonl"), "a", encoding="utf-8") as f:
            f.write("-\n\n{\"audit\": 1}\nnot json\n")
        r = self.replay()
        self.assertEqual(r.returncode, 1, r.stderr)
        n = len(self.ids) + 2
        self.assertIn(f"audit.jsonl:{n + 3}: field 'decision_id'", r.stderr)
        self.assertIn(f"audit.jsonl:{n + 4}: not an audit line", r.stderr)
        self.assertIn("2 lines without a decision, 2 unreadable", r.stderr)

    def test_06_usage(self):
        self.fails(2, "audit", "replay", "--store", self.store, "--catalog", CATALOG,
                   "--policy", POLICY)
        self.fails(2, "audit", "replay", self.path("x"), "--store", self.store,
                   "--policy", POLICY)
        r = self.fails(1, "audit", "replay", self.path("missing.jsonl"), *self.engine_args())
        self.assertIn("missing.jsonl", r.stderr)
        r = self.ok("help", "audit", "replay")
        self.assertIn("--allow-different", r.stdout)


class DeploymentLog(AuditCase):
    """Under a deployment the audit line carries the arm, the deployment,
    each action's probability and the shadow results, and the log replays
    with --deployment."""

    def deployment(self, name, salt):
        policies = os.path.join(SOURCE_DIR, "policies")
        return self.write(name, json.dumps({
            "name": "q4", "salt": salt, "holdout": {"percent": 20},
            "arms": [{"name": "champion", "percent": 60,
                      "policy": os.path.join(policies, "margin_per_session.lua")},
                     {"name": "challenger", "percent": 40,
                      "policy": os.path.join(policies, "retention.lua")}],
            "shadow": [os.path.join(policies, "retention.lua")]}))

    def test_01_batch_log_and_replay(self):
        q4 = self.deployment("q4.json", "q4-2026")
        customers = self.write("customers.txt", "\n".join(self.ids) + "\n")
        self.ok("batch", "--store", self.store, "--catalog", CATALOG, "--deployment", q4,
                "--customers", customers, "--as-of", AS_OF, "--out", self.path("out.jsonl"),
                "--log", self.path("audit.jsonl"))
        with open(self.path("out.jsonl"), encoding="utf-8") as f:
            results = {d["decision_id"]: d for d in map(json.loads, f)}
        log = self.read_log()
        self.assertEqual(len(log), len(self.ids))
        for entry in log:
            d = results[entry["decision_id"]]
            self.assertEqual(entry["arm"], d["arm"])
            self.assertTrue(entry["decision_id"].endswith(".q4." + d["arm"]))
            self.assertEqual(entry["deployment"], d["deployment"])
            self.assertRegex(entry["deployment"]["version"], "^[0-9a-f]{16}$")
            self.assertEqual(entry["policy"], d["policy"])
            if d["arm"] == "holdout":
                self.assertIsNone(entry["policy"])
            self.assertEqual(entry["actions"], d["actions"])
            for a in entry["actions"]:
                self.assertEqual(a["probability"], 1)
            self.assertEqual(len(entry["shadow"]), 1, entry)
            self.assertIn("actions", entry["shadow"][0])
        r = self.nbx("audit", "replay", self.path("audit.jsonl"), "--store", self.store,
                     "--catalog", CATALOG, "--deployment", q4)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        other = self.deployment("q4b.json", "another-salt")
        r = self.nbx("audit", "replay", self.path("audit.jsonl"), "--store", self.store,
                     "--catalog", CATALOG, "--deployment", other, "--json")
        reports = [json.loads(line) for line in r.stdout.splitlines()][:-1]
        self.assertEqual(len(reports), len(log))
        for rep in reports:
            reasons = [x["reason"] for x in rep["reasons"]]
            self.assertIn("deployment_changed", reasons, rep)
        r = self.nbx("audit", "replay", self.path("audit.jsonl"), "--store", self.store,
                     "--catalog", CATALOG, "--deployment", q4, "--policy", POLICY)
        self.assertEqual(r.returncode, 2, r.stderr)


if __name__ == "__main__":
    unittest.main()
