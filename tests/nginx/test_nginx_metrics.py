"""nbx_metrics: Prometheus' text exposition format from a shared memory zone,
summed over two workers: decisions by arm and policy, fallbacks and errors
by kind, exclusions by reason (checked against the audit log), the
decision time histogram; label values escaped; counts kept across a
reload; kill switches read from the store at each scrape. A real nginx, parsed as a scraper would."""

import json
import os
import re
import time

import nbxnginx as nx
from nbxnginx import request

SERVER = """
    log_format nbx_audit escape=none '$nbx_decision';

    server {
        listen 127.0.0.1:%%(port)s reuseport;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_policy %(policy)s;
        add_header X-Pid $pid;

        location = /decide {
            nbx_customer $arg_customer;
            access_log %(prefix)s/audit.log nbx_audit if=$nbx_decision;
            nbx_decide;
        }
        location = /broken {
            nbx_policy %(raising)s;
            nbx_customer $arg_customer;
            nbx_session mode $arg_mode;
            access_log %(prefix)s/audit.log nbx_audit if=$nbx_decision;
            nbx_decide;
        }
        location = /metrics {
            nbx_metrics;
        }
    }
"""

RAISING_POLICY = """\
return {
  name = "raising",
  score = function(o, c, s)
    if s.mode == "hostile" then error("nbx-test-metrics-failure") end
    return 1
  end,
}
"""

# a name with what label values must escape (a policy's name has no line
# breaks: the sandbox refuses control characters)
POLICY_NAME = 'q"4\\x'

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse(text):
    """The exposition text as {(name, ((label, value), ...)): float}, with
    the # TYPE of each family; fails on any line a scraper would refuse."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels, rest = [], m.group(3) or ""
        while rest:
            lm = LABEL.match(rest)
            if not lm:
                raise AssertionError("bad labels in %r" % line)
            value = re.sub(r'\\(.)', lambda e: {"n": "\n"}.get(e.group(1), e.group(1)),
                           lm.group(2))
            labels.append((lm.group(1), value))
            rest = rest[lm.end():]
        key = (m.group(1), tuple(labels))
        if key in samples:
            raise AssertionError("duplicate sample %r" % (key,))
        samples[key] = float(m.group(4))
    return samples, types


class MetricsTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = nx.write(self.path("policy.lua"), nx.SIMPLE_POLICY % dict(
            name=POLICY_NAME.replace("\\", "\\\\").replace('"', '\\"'), score="1.0"))
        self.raising = nx.write(self.path("raising.lua"), RAISING_POLICY)
        self.store = nx.make_store(self.path("store"), [
            nx.profile("c1", free_shipping=0.9, ten_off=0.1), nx.profile("c2")])
        nx.give_to_workers(self.store)
        self.prefix = self.path("nginx")
        self.server = self.nginx(SERVER % dict(
            store=self.store, catalog=self.catalog, policy=self.policy,
            raising=self.raising, prefix=self.prefix), workers=2)

    def get(self, path, **kw):
        return request(self.server.url(path), **kw)

    def scrape(self):
        r = self.get("/metrics")
        self.assertStatus(r, 200, "metrics")
        self.assertEqual(r.headers.get("Content-Type"),
                         "text/plain; version=0.0.4; charset=utf-8")
        samples, types = parse(r.body)
        return samples, types, r

    def audit_lines(self, count, timeout=10):
        path = os.path.join(self.prefix, "audit.log")
        deadline = time.time() + timeout
        while True:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            if len(lines) >= count or time.time() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)

    def test_01_counts_summed_over_workers(self):
        pids = set()
        for i in range(60):
            r = self.get("/decide?customer=%s" % ("c1", "c2", "stranger")[i % 3])
            self.assertStatus(r, 200, "decide")
            pids.add(r.headers.get("X-Pid"))
        for i in range(5):
            r = self.get("/broken?customer=c1&mode=hostile")
            self.assertIs(r.json()["fallback"], True)
        for i in range(3):
            self.assertStatus(self.get("/decide"), 400, "no customer")
        self.assertStatus(self.get("/decide?customer=c1", data=b"x", method="POST"), 405,
                          "POST")
        # reuseport spreads 60 connections over both workers
        self.assertEqual(len(pids), 2, "one worker served every decision: %s" % pids)

        versions = {self.get("/decide?customer=c1").json()["policy"]["version"],
                    self.get("/broken?customer=c1").json()["policy"]["version"]}
        decisions = 60 + 5 + 2
        logged = self.audit_lines(decisions)
        self.assertEqual(len(logged), decisions)
        excluded = {}
        for entry in logged:
            for reason, n in entry["exclusions"].items():
                excluded[reason] = excluded.get(reason, 0) + n

        served = set()
        for _ in range(20):  # whichever worker answers, the same figures
            samples, types, r = self.scrape()
            served.add(r.headers.get("X-Pid"))
            by_policy = {dict(k[1])["policy"]: (dict(k[1]), v) for k, v in samples.items()
                         if k[0] == "nbx_decisions_total"}
            self.assertEqual(set(by_policy), {POLICY_NAME, "raising"}, by_policy)
            labels, n = by_policy[POLICY_NAME]
            self.assertEqual(n, 61)
            self.assertEqual(labels["arm"], "")
            self.assertIn(labels["policy_version"], versions)
            self.assertEqual(by_policy["raising"][1], 6)
            self.assertEqual(samples[("nbx_fallbacks_total", (("kind", "runtime"),))], 5)
            self.assertEqual(samples[("nbx_errors_total", (("kind", "request"),))], 3)
            self.assertEqual(samples[("nbx_errors_total", (("kind", "method"),))], 1)
            for reason, n in excluded.items():
                self.assertEqual(samples[("nbx_exclusions_total", (("reason", reason),))], n,
                                 reason)
            self.assertEqual(sum(v for k, v in samples.items()
                                 if k[0] == "nbx_exclusions_total"), sum(excluded.values()))
            # the histogram: cumulative buckets ending in +Inf = count
            buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                              if k[0] == "nbx_decision_seconds_bucket"))
            counts = [v for _, v in buckets]
            self.assertEqual(counts, sorted(counts))
            self.assertEqual(buckets[-1], (float("inf"), decisions))
            self.assertEqual(samples[("nbx_decision_seconds_count", ())], decisions)
            total = samples[("nbx_decision_seconds_sum", ())]
            self.assertGreater(total, 0)
            self.assertLess(total, decisions * 10)
            self.assertEqual(types["nbx_decision_seconds"], "histogram")
            self.assertEqual(types["nbx_decisions_total"], "counter")
        self.assertTrue(served)
        # the name as the format escapes it
        self.assertIn('policy="q\\"4\\\\x"', r.body)

    def test_02_a_reload_keeps_the_counts(self):
        for i in range(4):
            self.assertStatus(self.get("/decide?customer=c1"), 200, "decide")
        self.server.reload()
        self.assertStatus(self.get("/decide?customer=c1"), 200, "decide")
        samples, _, _ = self.scrape()
        self.assertEqual(samples[("nbx_decision_seconds_count", ())], 5)

    def kill_series(self, samples):
        """The kill and abort series of this test's store, without the
        store label: {(name, ((label, value), ...)): value}."""
        out = {}
        for (name, labels), v in samples.items():
            labels = dict(labels)
            if name in ("nbx_killed", "nbx_kill_changes_total", "nbx_aborts_total"):
                self.assertEqual(labels.pop("store"), self.store, (name, labels))
                out[(name, tuple(sorted(labels.items())))] = v
        return out

    def test_03_kills_are_read_from_the_store_at_each_scrape(self):
        samples, types, _ = self.scrape()
        series = self.kill_series(samples)
        self.assertEqual(types["nbx_killed"], "gauge")
        self.assertEqual(types["nbx_kill_changes_total"], "counter")
        self.assertEqual(types["nbx_aborts_total"], "counter")
        for kind in ("offer", "arm", "policy"):
            self.assertEqual(series[("nbx_killed", (("kind", kind),))], 0, kind)
            for change in ("kill", "unkill"):
                self.assertEqual(series[("nbx_kill_changes_total",
                                         (("change", change), ("kind", kind)))], 0)
        self.assertFalse([k for k in series if k[0] == "nbx_aborts_total"],
                         "no deployment served, nothing aborted: no arm series")

        offer = self.get("/decide?customer=c1").json()["actions"][0]["offer"]
        nx.nbx("kill", "offer", offer, "--store", self.store, "--reason", "legal hold")
        nx.nbx("kill", "policy", "0123456789abcdef", "--store", self.store, "--reason", "x")
        nx.nbx("kill", "offer", offer, "--store", self.store, "--reason", "still held")
        for _ in range(6):  # whichever worker answers, without a reload
            series = self.kill_series(self.scrape()[0])
            self.assertEqual(series[("nbx_killed", (("kind", "offer"),))], 1, series)
            self.assertEqual(series[("nbx_killed", (("kind", "policy"),))], 1, series)
            self.assertEqual(series[("nbx_killed", (("kind", "arm"),))], 0, series)
            self.assertEqual(series[("nbx_kill_changes_total",
                                     (("change", "kill"), ("kind", "offer")))], 2, series)
        # the killed offer's exclusions, counted by the workers' zone
        for _ in range(4):
            d = self.get("/decide?customer=c1").json()
            self.assertNotIn(offer, [a["offer"] for a in d["actions"]], d)
        samples = self.scrape()[0]
        self.assertGreaterEqual(samples[("nbx_exclusions_total", (("reason", "killed"),))], 4)

        nx.nbx("unkill", "offer", offer, "--store", self.store)
        series = self.kill_series(self.scrape()[0])
        self.assertEqual(series[("nbx_killed", (("kind", "offer"),))], 0, series)
        self.assertEqual(series[("nbx_kill_changes_total",
                                 (("change", "unkill"), ("kind", "offer")))], 1, series)
        self.assertEqual(series[("nbx_kill_changes_total",
                                 (("change", "kill"), ("kind", "offer")))], 2, series)

    def test_04_only_get_and_head(self):
        self.assertStatus(self.get("/metrics", data=b"x", method="POST"), 405, "POST")
        r = self.get("/metrics", method="HEAD")
        self.assertStatus(r, 200, "HEAD")
        self.assertEqual(r.body, "")


class ConfigTest(nx.NginxTestCase):

    def test_nbx_metrics_takes_the_location(self):
        catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        policy = nx.write(self.path("policy.lua"), nx.SIMPLE_POLICY
                          % dict(name="tests", score="1.0"))
        n = self.nginx("""
    server {
        listen 127.0.0.1:%%(port)s;
        location = /m {
            nbx_store %s; nbx_catalog %s; nbx_policy %s;
            nbx_customer $arg_customer;
            nbx_decide;
            nbx_metrics;
        }
    }
""" % (self.path("store"), catalog, policy), start=False)
        ok, out = n.test_conf()
        self.assertFalse(ok, out)
        self.assertIn("nbx_metrics", out)
