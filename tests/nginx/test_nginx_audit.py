"""The audit log through nginx's own access log: $nbx_decision (the audit
line, for a log_format with escape=none), $nbx_decision_id, $nbx_arm,
$nbx_policy_version and $nbx_catalog_version; and `nbx audit replay` on
that log: identical while nothing changed, then naming what did (events,
an updated profile, a new catalog, a new policy). A real nginx with two
workers, the real nbx CLI, a real store."""

import json
import os
import socket
import time

import nbxnginx as nx
from nbxnginx import request

SERVER = """
    log_format nbx_audit escape=none '$nbx_decision';
    log_format nbx_fields escape=none
        '$status $nbx_decision_id $nbx_arm $nbx_policy_version '
        '$nbx_catalog_version $nbx_decision';

    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_policy %(policy)s;

        location = /decide {
            nbx_customer $arg_customer;
            nbx_session channel $arg_channel;
            nbx_session device $http_x_device;
            add_header X-Nbx-Decision-Id $nbx_decision_id;
            access_log %(prefix)s/audit.log nbx_audit if=$nbx_decision;
            access_log %(prefix)s/fields.log nbx_fields;
            nbx_decide;
        }
        location = /broken {
            nbx_policy %(raising)s;
            nbx_customer $arg_customer;
            nbx_session mode $arg_mode;
            access_log %(prefix)s/audit.log nbx_audit if=$nbx_decision;
            nbx_decide;
        }
    }
"""

RAISING_POLICY = """\
return {
  name = "raising",
  score = function(o, c, s)
    if s.mode == "hostile" then error("nbx-test-audit-failure") end
    return 1
  end,
}
"""


class AuditLogTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = nx.write(self.path("policy.lua"), nx.SIMPLE_POLICY
                               % dict(name="tests", score="1.0"))
        self.raising = nx.write(self.path("raising.lua"), RAISING_POLICY)
        self.store = nx.make_store(self.path("store"), [
            nx.profile("c1", free_shipping=0.9, ten_off=0.1),
            nx.profile("c2", free_shipping=0.2),
            nx.profile("c3"),
        ])
        nx.give_to_workers(self.store)
        self.prefix = self.path("nginx")
        self.server = self.nginx(SERVER % dict(
            store=self.store, catalog=self.catalog, policy=self.policy,
            raising=self.raising, prefix=self.prefix))

    def get(self, path, **kw):
        return request(self.server.url(path), **kw)

    def raw_get(self, path, headers):
        """A GET with header bytes urllib would not send (not UTF-8)."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: x\r\n" + headers + b"\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0], data[:300])
        return json.loads(body)

    def log_lines(self, name, count, timeout=10):
        """The log's lines once it has count of them: nginx writes the
        access log after the response, so the client may read first."""
        path = os.path.join(self.prefix, name)
        deadline = time.time() + timeout
        while True:
            try:
                with open(path, "rb") as f:
                    lines = f.read().split(b"\n")
            except FileNotFoundError:
                lines = [b""]
            self.assertEqual(lines[-1], b"", "the log ends in the middle of a line")
            if len(lines) - 1 >= count or time.time() > deadline:
                return lines[:-1]
            time.sleep(0.05)

    def decide_some(self):
        responses = [self.get("/decide?customer=c1&placement=hero&placement=recs"
                              "&channel=web", headers={"X-Device": "mobile"}),
                     self.get("/decide?customer=c2&placement=recs"),
                     self.get("/decide?customer=stranger")]
        for r in responses:
            self.assertStatus(r, 200, "decide")
        return [r.json() for r in responses], responses

    def replay(self, log, *extra, policy=None, catalog=None):
        return nx.nbx("audit", "replay", os.path.join(self.prefix, log), "--store", self.store,
                      "--catalog", catalog or self.catalog, "--policy", policy or self.policy,
                      "--json", *extra, check=False)

    def reports(self, p):
        docs = [json.loads(line) for line in p.stdout.splitlines()]
        self.assertIn("summary", docs[-1], p.stdout)
        return docs[:-1], docs[-1]["summary"]

    # -- the variables -----------------------------------------------------

    def test_01_one_json_line_per_decision_with_the_id_the_response_carries(self):
        decisions, responses = self.decide_some()
        lines = self.log_lines("audit.log", len(decisions))
        self.assertEqual(len(lines), len(decisions), lines)
        logged = {}
        for line in lines:
            entry = json.loads(line)  # the whole line is one JSON object
            logged[entry["decision_id"]] = entry
        for d, r in zip(decisions, responses):
            self.assertEqual(r.headers.get("X-Nbx-Decision-Id"), d["decision_id"])
            entry = logged[d["decision_id"]]
            self.assertEqual(entry["customer"], d["customer"])
            self.assertEqual(entry["policy"], d["policy"])
            self.assertEqual(entry["catalog_version"], d["catalog_version"])
            self.assertEqual(entry["as_of"], d["as_of"])
            self.assertEqual([(a["offer"], a["placement"]) for a in entry["actions"]],
                             [(a["offer"], a["placement"]) for a in d["actions"]])
            self.assertIsNone(entry["arm"])
        first = logged[decisions[0]["decision_id"]]
        self.assertEqual(first["session"], {"channel": "web", "device": "mobile"})
        self.assertEqual(first["placements"], ["hero", "recs"])

    def test_02_the_other_variables(self):
        decisions, _ = self.decide_some()
        lines = self.log_lines("fields.log", len(decisions))
        by_id = {}
        for line in lines:
            status, did, arm, pv, cv, rest = line.decode().split(" ", 5)
            self.assertEqual(status, "200")
            # escape=none writes an absent value as nothing
            self.assertEqual(arm, "", "no deployment: no arm")
            self.assertEqual(json.loads(rest)["decision_id"], did)
            by_id[did] = (pv, cv)
        for d in decisions:
            self.assertEqual(by_id[d["decision_id"]],
                             (d["policy"]["version"], d["catalog_version"]))

    def test_03_no_decision_no_audit_line(self):
        self.assertStatus(self.get("/decide"), 400, "no customer")
        self.assertStatus(self.get("/decide?customer=c1&placement=nowhere"), 400, "placement")
        self.assertStatus(self.get("/decide?customer=c1"), 200, "decide")
        fields = self.log_lines("fields.log", 3)
        self.assertEqual(len(fields), 3)
        self.assertEqual(sum(1 for l in fields if l == b"400     "), 2, fields)
        # if=$nbx_decision: only the decision made its way to the audit log
        self.assertEqual(len(self.log_lines("audit.log", 1, timeout=1)), 1)

    def test_04_hostile_text_stays_inside_its_json_string(self):
        device = b'a"b\\c\x1b[31m\xff\xfe\x7f end'
        d = self.raw_get(b"/decide?customer=c3&channel=%0Aweb%22",
                         b"X-Device: " + device + b"\r\n")
        (line,) = self.log_lines("audit.log", 1)
        for byte in range(0x20):
            self.assertNotIn(bytes([byte]), line)
        self.assertNotIn(b"\x7f", line)
        entry = json.loads(line)
        self.assertEqual(entry["decision_id"], d["decision_id"])
        # nginx passes $arg_ undecoded; the header's bytes are not UTF-8,
        # so their exact bytes travel in hex for the replay
        self.assertEqual(entry["session"]["channel"], "%0Aweb%22")
        pairs = [[bytes.fromhex(k), bytes.fromhex(v)] for k, v in entry["hex"]["session"]]
        self.assertIn([b"device", device], pairs)

    def test_05_a_fallback_logs_the_whole_error_the_client_does_not_see(self):
        r = self.get("/broken?customer=c1&mode=hostile")
        self.assertStatus(r, 200, "fallback")
        d = r.json()
        self.assertIs(d["fallback"], True)
        self.assertNotIn("nbx-test-audit-failure", r.body)
        (line,) = self.log_lines("audit.log", 1)
        entry = json.loads(line)
        self.assertEqual(entry["decision_id"], d["decision_id"])
        self.assertIs(entry["fallback"], True)
        self.assertIn("nbx-test-audit-failure", json.dumps(entry["error"]))

    # -- replay of nginx's log ---------------------------------------------

    def test_10_replay_of_an_unchanged_store_and_files_is_identical(self):
        decisions, _ = self.decide_some()
        self.get("/decide")  # a 400: a line without a decision in fields.log
        self.log_lines("fields.log", len(decisions) + 1)
        for log in ("audit.log", "fields.log"):
            p = self.replay(log)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            reports, summary = self.reports(p)
            self.assertEqual(sorted(x["decision_id"] for x in reports),
                             sorted(d["decision_id"] for d in decisions), log)
            for x in reports:
                self.assertIs(x["identical"], True, x)
                self.assertEqual(x["reasons"], [], x)
            self.assertEqual(summary["identical"], len(decisions), log)
            self.assertEqual(summary["unreadable"], 0, log)
        self.assertEqual(summary["skipped"], 1, "the 400's line in fields.log")

    def test_11_replay_names_what_changed(self):
        decisions, _ = self.decide_some()
        self.log_lines("audit.log", len(decisions))
        # c1: impressions since the decision; c2: a new profile
        later = time.time() + 60
        nx.write_jsonl(self.path("ev.jsonl"), [
            nx.impression("late-%d" % i, "c1", "free_shipping", "hero", later)
            for i in range(3)])
        nx.nbx("import", "events", self.path("ev.jsonl"), "--store", self.store)
        nx.write_jsonl(self.path("p2.jsonl"), [nx.profile("c2", socks=0.9)])
        nx.nbx("import", "profiles", self.path("p2.jsonl"), "--store", self.store)
        p = self.replay("audit.log")
        reports, _ = self.reports(p)
        by_customer = {x["customer"]: x for x in reports}
        reasons = {c: [r["reason"] for r in x["reasons"]] for c, x in by_customer.items()}
        self.assertIn("events_since", reasons["c1"], by_customer["c1"])
        self.assertIn("profile_updated", reasons["c2"], by_customer["c2"])
        self.assertEqual(reasons["stranger"], [], by_customer["stranger"])
        self.assertIs(by_customer["stranger"]["identical"], True)
        self.assertIs(by_customer["c2"]["identical"], False, by_customer["c2"])

        # new files: every decision names the version that changed
        catalog = nx.demo_catalog()
        catalog["offers"][2]["price"] = 13.0
        new_catalog = nx.write_json(self.path("catalog2.json"), catalog)
        new_policy = nx.write(self.path("policy2.lua"), nx.SIMPLE_POLICY
                              % dict(name="tests", score="2.0"))
        for kw, reason in ((dict(catalog=new_catalog), "catalog_changed"),
                           (dict(policy=new_policy), "policy_changed")):
            p = self.replay("audit.log", **kw)
            self.assertEqual(p.returncode, 4, p.stderr)
            reports, _ = self.reports(p)
            for x in reports:
                self.assertIn(reason, [r["reason"] for r in x["reasons"]], x)


DEPLOYMENT_SERVER = """
    log_format nbx_audit escape=none '$nbx_arm $nbx_decision';

    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_deployment %(deployment)s;

        location = /decide {
            nbx_customer $arg_customer;
            access_log %(prefix)s/audit.log nbx_audit if=$nbx_decision;
            nbx_decide;
        }
        location = /metrics {
            nbx_metrics;
        }
    }
"""

CUSTOMERS = ["d%d" % i for i in range(1, 31)]


class DeploymentAuditTest(nx.NginxTestCase):
    """Under a deployment: the arm in $nbx_arm, the audit line and the
    metrics; the holdout's line has no policy; shadow results are logged;
    the log replays identical with the same deployment and names the arm
    and the deployment when they change."""

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        for name, score in (("champion", "1.0"), ("challenger", "2.0"), ("shadow", "3.0")):
            nx.write(self.path(name + ".lua"), nx.SIMPLE_POLICY % dict(name=name, score=score))
        self.deployment = self.write_deployment("q4.json", "q4-2026")
        self.store = nx.make_store(self.path("store"), [nx.profile(c) for c in CUSTOMERS])
        nx.give_to_workers(self.store)
        self.prefix = self.path("nginx")
        self.server = self.nginx(DEPLOYMENT_SERVER % dict(
            store=self.store, catalog=self.catalog, deployment=self.deployment,
            prefix=self.prefix))

    def write_deployment(self, name, salt):
        return nx.write_json(self.path(name), {
            "name": "q4", "salt": salt, "holdout": {"percent": 20},
            "arms": [{"name": "champion", "policy": "champion.lua", "percent": 50},
                     {"name": "challenger", "policy": "challenger.lua", "percent": 50}],
            "shadow": ["shadow.lua"]})

    def test_01_the_arm_in_the_variables_the_line_and_the_metrics(self):
        decisions = {}
        for c in CUSTOMERS:
            r = request(self.server.url("/decide?customer=" + c))
            self.assertEqual(r.status, 200, r)
            d = r.json()
            decisions[d["decision_id"]] = d
        arms = {d["arm"] for d in decisions.values()}
        self.assertEqual(arms, {"holdout", "champion", "challenger"})
        path = os.path.join(self.prefix, "audit.log")
        deadline = time.time() + 10
        while time.time() < deadline:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            if len(lines) >= len(decisions):
                break
            time.sleep(0.05)
        self.assertEqual(len(lines), len(decisions))
        for line in lines:
            arm, text = line.split(" ", 1)
            entry = json.loads(text)
            d = decisions[entry["decision_id"]]
            self.assertEqual(arm, d["arm"])
            self.assertEqual(entry["arm"], d["arm"])
            self.assertEqual(entry["deployment"], d["deployment"])
            self.assertEqual(entry["policy"], d["policy"])
            self.assertEqual([a["probability"] for a in entry["actions"]],
                             [a["probability"] for a in d["actions"]])
            self.assertTrue(all(a["probability"] == 1 for a in entry["actions"]), entry)
            if d["arm"] == "holdout":
                self.assertIsNone(entry["policy"], "the control treatment ran no policy")
            self.assertEqual([s["policy"]["name"] for s in entry["shadow"]], ["shadow"])
            self.assertEqual(entry["shadow"], d["shadow"])

        text = request(self.server.url("/metrics")).body
        for arm in ("champion", "challenger"):
            n = sum(1 for d in decisions.values() if d["arm"] == arm)
            self.assertRegex(text, r'nbx_decisions_total\{arm="%s",policy="%s",'
                             r'policy_version="[0-9a-f]{16}"\} %d\n' % (arm, arm, n))
        n = sum(1 for d in decisions.values() if d["arm"] == "holdout")
        self.assertIn('nbx_decisions_total{arm="holdout",policy="",policy_version=""} %d\n'
                      % n, text)

        # the same deployment: identical; another salt: arms move
        replay = ["audit", "replay", path, "--store", self.store, "--catalog", self.catalog,
                  "--json", "--deployment"]
        p = nx.nbx(*replay, self.deployment, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        moved = nx.nbx(*replay, self.write_deployment("q4b.json", "another-salt"),
                       check=False)
        self.assertEqual(moved.returncode, 4, moved.stderr)
        reports = [json.loads(l) for l in moved.stdout.splitlines()][:-1]
        self.assertEqual(len(reports), len(decisions))
        changed = 0
        for x in reports:
            reasons = [r["reason"] for r in x["reasons"]]
            self.assertIn("deployment_changed", reasons, x)
            if x["replayed"]["arm"] != decisions[x["decision_id"]]["arm"]:
                changed += 1
                self.assertIn("arm_changed", reasons, x)
                self.assertIn("arm", x["differences"], x)
        self.assertGreater(changed, 0, "no customer changed arm with another salt")
