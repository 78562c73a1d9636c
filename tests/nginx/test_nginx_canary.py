"""The canary abort through a real nginx (issue 13): a challenger whose
policy fails for 5 % of the customers is served by two workers until it
passes min_decisions; a worker's flush of its per-arm counts judges the
rules and kills the arm. The abort is then in `nbx kill --list` (by
`abort`, with the rule and its figures), in nbx_metrics, and the
challenger's customers are served by the first arm from then on, without a
reload. No timing is asserted: requests go on until the kill shows, within
a generous bound."""

import json
import re
import time

import nbxnginx as nx
from nbxnginx import request
from test_nginx_metrics import parse

HTTP = """
    server {
        listen 127.0.0.1:%%(port)s reuseport;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_deployment %(deployment)s;
        location = /decide {
            nbx_customer $arg_customer;
            add_header X-Arm $nbx_arm;
            nbx_decide;
        }
        # a location that writes makes the workers open the store
        # read-write: only such an engine counts and can abort
        location = /event {
            nbx_event;
        }
        location = /metrics {
            nbx_metrics;
        }
    }
"""

CHAMPION = """\
return {name = "by_price",
  score = function(o) return o.price, o.margin end}
"""

# fails for the customers whose profile says so: 5 % of them
FLAKY = """\
return {name = "flaky",
  score = function(o, c)
    if c.attrs.flaky then error("flaky customer") end
    return o.price, o.margin
  end}
"""

MIN_DECISIONS = 100
CUSTOMERS = ["k%04d" % i for i in range(1000)]
FLAKY_CUSTOMERS = set(CUSTOMERS[::20])
# far more than the challenger needs to pass min_decisions and be flushed
DEADLINE_SEC = 180
REASON = re.compile(r"^max_fallback_rate: fallback rate ([0-9.]+) \((\d+) fallbacks of "
                    r"(\d+) decisions\) is above 0\.01$")


class CanaryAbortTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        nx.write(self.path("by_price.lua"), CHAMPION)
        nx.write(self.path("flaky.lua"), FLAKY)
        self.deployment = nx.write_json(self.path("q4.json"), {
            "name": "q4", "salt": "q4-2026", "holdout": {"percent": 10},
            "arms": [{"name": "champion", "policy": "by_price.lua", "percent": 50},
                     {"name": "challenger", "policy": "flaky.lua", "percent": 50,
                      "abort": {"min_decisions": MIN_DECISIONS,
                                "max_fallback_rate": 0.01}}]})
        profiles = []
        for c in CUSTOMERS:
            p = nx.profile(c)
            p["attrs"]["flaky"] = c in FLAKY_CUSTOMERS
            profiles.append(p)
        self.store = nx.make_store(self.path("store"), profiles)
        nx.give_to_workers(self.store)
        self.server = self.nginx(HTTP % dict(store=self.store, catalog=self.catalog,
                                             deployment=self.deployment))

    def decide(self, customer):
        r = request(self.server.url("/decide?customer=" + customer))
        self.assertStatus(r, 200, "decide " + customer)
        d = r.json()
        self.assertEqual(r.headers.get("X-Arm"), d["arm"], "$nbx_arm and the result's arm")
        return d

    def kills(self):
        return json.loads(nx.nbx("kill", "--list", "--json", "--store", self.store).stdout)

    def metrics(self):
        r = request(self.server.url("/metrics"))
        self.assertStatus(r, 200, "metrics")
        return parse(r.body)[0]

    def test_a_challenger_failing_for_five_percent_is_aborted_through_nginx(self):
        served = {"champion": 0, "challenger": 0, "holdout": 0}
        challenger_customers = set()
        deadline = time.time() + DEADLINE_SEC
        kills, i = [], 0
        while not kills:
            self.assertLess(time.time(), deadline,
                            "no abort after %r decisions by arm: %s" % (served, self.kills()))
            for _ in range(100):  # the customers in turn, 5 % of them flaky
                c = CUSTOMERS[i % len(CUSTOMERS)]
                i += 1
                d = self.decide(c)
                served[d["arm"]] += 1
                if d.get("assigned", d["arm"]) == "challenger":
                    challenger_customers.add(c)
                    if d["arm"] == "challenger":
                        self.assertEqual(d["fallback"], c in FLAKY_CUSTOMERS, (c, d))
            kills = self.kills()

        # the abort, as `nbx kill --list` shows it
        self.assertEqual([(k["kind"], k["name"], k["by"]) for k in kills],
                         [("arm", "q4.challenger", "abort")], kills)
        m = REASON.match(kills[0]["reason"])
        self.assertTrue(m, "the rule and its figures: %r" % kills[0]["reason"])
        rate, fallbacks, decisions = float(m.group(1)), int(m.group(2)), int(m.group(3))
        self.assertGreaterEqual(decisions, MIN_DECISIONS, "judged only past min_decisions")
        self.assertGreater(fallbacks / decisions, 0.01)
        # the reason prints the rate with %.4f; compare what it printed with
        # the same rounding (places=4 fails on a half-way rate: 27/480 = 0.05625)
        self.assertEqual(m.group(1), "%.4f" % (fallbacks / decisions), kills[0]["reason"])
        self.assertAlmostEqual(rate, fallbacks / decisions, delta=0.00005 + 1e-12)
        text = nx.nbx("kill", "--list", "--store", self.store).stdout
        self.assertIn("arm    q4.challenger", text)
        self.assertIn("by abort: max_fallback_rate: fallback rate", text)

        # from now on the challenger's customers get the first arm, from
        # either worker, without a reload
        workers = self.server.worker_pids()
        self.assertTrue(challenger_customers)
        for _ in range(3):
            for c in sorted(challenger_customers):
                d = self.decide(c)
                self.assertEqual((d["assigned"], d["arm"]), ("challenger", "champion"), c)
                self.assertFalse(d["fallback"], "the champion does not fail: %s" % c)
        self.assertEqual(self.server.worker_pids(), workers, "the workers changed: a reload?")

        # and the metrics show it, whichever worker answers
        store = ("store", self.store)
        for _ in range(6):
            samples = self.metrics()
            self.assertEqual(samples[("nbx_aborts_total", (store, ("deployment", "q4"),
                                                           ("arm", "challenger")))], 1)
            self.assertEqual(samples[("nbx_aborts_total", (store, ("deployment", "q4"),
                                                           ("arm", "champion")))], 0)
            self.assertEqual(samples[("nbx_killed", (store, ("kind", "arm")))], 1)
            self.assertEqual(samples[("nbx_kill_changes_total",
                                      (store, ("kind", "arm"), ("change", "kill")))], 1)
            self.assertGreater(samples[("nbx_fallbacks_total", (("kind", "runtime"),))], 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
