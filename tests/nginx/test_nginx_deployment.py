"""nbx_deployment FILE: a real nginx serves each customer by their arm (the
same arm as the nbx CLI gives), the holdout gets the catalog's fallback
actions, shadow policies decide beside; a reload picks up a new deployment
and a broken one is refused while the old workers keep serving."""

import json
import os
import unittest

import nbxnginx as nx
from nbxnginx import request

HTTP = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_deployment %(deployment)s;
        location = /decide {
            nbx_customer $arg_customer;
            nbx_decide;
        }
        location = /plain {
            nbx_policy %(policy)s;
            nbx_customer $arg_customer;
            nbx_decide;
        }
    }
"""

CUSTOMERS = ["c%d" % i for i in range(1, 41)]


class DeploymentTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        for name, score in (("champion", "1.0"), ("challenger", "2.0"), ("shadow", "3.0")):
            nx.write(self.path(name + ".lua"), nx.SIMPLE_POLICY % dict(name=name, score=score))
        self.deployment = self.path("q4.json")
        self.write_deployment()
        self.store = nx.make_store(self.path("store"), [nx.profile(c) for c in CUSTOMERS])
        nx.give_to_workers(self.store)
        self.server = self.nginx(HTTP % dict(store=self.store, catalog=self.catalog,
                                             deployment=self.deployment,
                                             policy=self.path("champion.lua")))

    def write_deployment(self, salt="q4-2026", shadow=("shadow.lua",), holdout=20):
        # policy paths relative to the deployment file
        nx.write_json(self.deployment, {
            "name": "q4", "salt": salt, "holdout": {"percent": holdout},
            "arms": [{"name": "champion", "policy": "champion.lua", "percent": 50},
                     {"name": "challenger", "policy": "challenger.lua", "percent": 50}],
            "shadow": list(shadow)})

    def decide(self, customer, where="/decide"):
        r = request(self.server.url("%s?customer=%s" % (where, customer)))
        self.assertEqual(r.status, 200, r)
        return r.json()

    def cli_arm(self, customer):
        p = nx.nbx("decide", "--store", self.store, "--catalog", self.catalog,
                   "--deployment", self.deployment, "--customer", customer)
        return json.loads(p.stdout)["arm"]

    def test_each_customer_gets_the_arm_the_cli_gives(self):
        seen = set()
        for c in CUSTOMERS:
            d = self.decide(c)
            self.assertEqual(d["arm"], self.cli_arm(c), c)
            self.assertEqual(d["deployment"]["name"], "q4")
            self.assertTrue(d["decision_id"].endswith(".q4." + d["arm"]), d["decision_id"])
            if d["arm"] == "holdout":
                self.assertIsNone(d["policy"])
                self.assertEqual([a["offer"] for a in d["actions"]],
                                 ["brand_banner", "bestsellers"])
            else:
                self.assertEqual(d["policy"]["name"], d["arm"])
            self.assertEqual([s["policy"]["name"] for s in d["shadow"]], ["shadow"])
            self.assertIs(d["fallback"], False, d)
            seen.add(d["arm"])
        self.assertEqual(seen, {"holdout", "champion", "challenger"})
        # again: the same arm, on whichever worker
        for c in CUSTOMERS[:10]:
            self.assertEqual(self.decide(c)["arm"], self.cli_arm(c))
        # a location that names a policy serves it alone
        d = self.decide("c1", "/plain")
        self.assertIsNone(d["arm"])
        self.assertNotIn("deployment", d)

    def test_a_failing_shadow_leaves_the_served_decision_as_it_was(self):
        before = {c: self.decide(c)["actions"] for c in CUSTOMERS[:10]}
        nx.write(self.path("failing.lua"),
                 "return {name = 'failing', score = function(o) error('boom') end}\n")
        self.write_deployment(shadow=("failing.lua",))
        self.server.reload()
        for c in CUSTOMERS[:10]:
            d = self.decide(c)
            self.assertEqual(d["actions"], before[c], c)
            self.assertIs(d["fallback"], False, d)
            shadow = d["shadow"][0]
            self.assertEqual(shadow["policy"]["name"], "failing")
            self.assertIs(shadow["fallback"], True)
            # clients see the kind of a failure only, as for the served policy
            self.assertEqual(shadow["error"], {"kind": "runtime"})

    def test_a_new_deployment_is_picked_up_by_a_reload(self):
        self.write_deployment(holdout=100)
        self.server.reload()
        for c in CUSTOMERS[:10]:
            self.assertEqual(self.decide(c)["arm"], "holdout")

    def test_a_broken_deployment_is_refused_and_the_old_one_serves(self):
        arms = {c: self.decide(c)["arm"] for c in CUSTOMERS}
        version = self.decide("c1")["deployment"]["version"]
        nx.write(self.deployment, '{"name": "q4", "salt": "x", "arms": []}')
        old, now, log = self.server.reload_expect_failure("invalid nbx deployment")
        self.assertEqual(old, now, "the workers were replaced by a refused reload")
        self.assertIn("q4.json", log)
        for c in CUSTOMERS:
            d = self.decide(c)
            self.assertEqual(d["arm"], arms[c], c)
            self.assertEqual(d["deployment"]["version"], version)
        # an arm whose policy is missing is refused the same way
        nx.write_json(self.deployment, {
            "name": "q4", "salt": "x",
            "arms": [{"name": "a", "policy": "gone.lua", "percent": 100}]})
        old, now, log = self.server.reload_expect_failure("gone.lua")
        self.assertEqual(old, now)
        self.assertEqual(self.decide("c1")["deployment"]["version"], version)

    def test_policy_and_deployment_at_one_level_is_a_configuration_error(self):
        bad = self.nginx("""
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        location = /decide {
            nbx_policy %(policy)s;
            nbx_deployment %(deployment)s;
            nbx_customer $arg_customer;
            nbx_decide;
        }
    }
""" % dict(store=self.store, catalog=self.catalog, deployment=self.deployment,
           policy=self.path("champion.lua")), name="bad", start=False)
        ok, out = bad.test_conf()
        self.assertFalse(ok, out)
        self.assertIn("nbx_policy and nbx_deployment both given", out)


if __name__ == "__main__":
    unittest.main()
