"""Kill switches through a real nginx (issue 13): nginx serves an offer,
`nbx kill offer` (another process) writes the kill into the store, and the
next request excludes it as `killed` in every worker, without a reload (the
same worker processes answer); `nbx unkill` brings it back the same way."""

import nbxnginx as nx
from nbxnginx import request

SERVER = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_policy %(policy)s;
        location = /decide {
            nbx_customer $arg_customer;
            nbx_explain on;
            nbx_decide;
        }
    }
"""

# every request opens a new connection: the workers take turns as the
# kernel hands them out; enough requests reach each of the two
REQUESTS = 24


class KillTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = nx.write(self.path("policy.lua"),
                               nx.SIMPLE_POLICY % dict(name="p", score="1.0"))
        self.store = nx.make_store(self.path("store"), [nx.profile("c1")])
        nx.give_to_workers(self.store)
        self.server = self.nginx(SERVER % dict(store=self.store, catalog=self.catalog,
                                               policy=self.policy))

    def decisions(self):
        out = []
        for _ in range(REQUESTS):
            r = request(self.server.url("/decide?customer=c1"))
            self.assertStatus(r, 200, "decide")
            out.append(r.json())
        return out

    def test_a_kill_reaches_every_worker_on_the_next_request_without_a_reload(self):
        before = self.decisions()
        offer = before[0]["actions"][0]["offer"]
        for d in before:
            self.assertIn(offer, [a["offer"] for a in d["actions"]], d)
        workers = self.server.worker_pids()
        self.assertEqual(len(workers), 2, workers)

        nx.nbx("kill", "offer", offer, "--store", self.store, "--reason", "legal hold")
        for d in self.decisions():
            self.assertNotIn(offer, [a["offer"] for a in d["actions"]], d)
            killed = [c for c in d["candidates"] if c["offer"] == offer]
            self.assertTrue(killed, d)
            for c in killed:
                self.assertEqual(c["excluded"], "killed", c)
                self.assertEqual(c["reason"], "killed: legal hold", c)
        self.assertEqual(self.server.worker_pids(), workers, "the workers changed: a reload?")

        nx.nbx("unkill", "offer", offer, "--store", self.store)
        for d in self.decisions():
            self.assertIn(offer, [a["offer"] for a in d["actions"]], d)
        self.assertEqual(self.server.worker_pids(), workers)


if __name__ == "__main__":
    import unittest
    unittest.main()
