"""Scale-out on loopback (docs/scaling.md): two nbx nodes with copies of the
same store behind a third nginx balancing on `hash $cookie_uid consistent`.
A customer's frequency cap holds through the balancer; with one node
stopped, every customer still gets decisions."""

import shutil
import time
import unittest

import nbxnginx as nx
from nbxnginx import request

NODE = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_policy %(policy)s;
        add_header X-Nbx-Node %(name)s always;
        location = /decide {
            nbx_customer $cookie_uid;
            nbx_explain on;
            nbx_decide;
        }
        location = /event {
            nbx_event;
        }
    }
"""

BALANCER = """
    upstream nbx {
        hash $cookie_uid consistent;
        server 127.0.0.1:%(a)d max_fails=1 fail_timeout=30s;
        server 127.0.0.1:%(b)d max_fails=1 fail_timeout=30s;
        keepalive 8;
    }
    server {
        listen 127.0.0.1:%%(port)s;
        location / {
            proxy_pass http://nbx;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_503;
            proxy_connect_timeout 2s;
        }
    }
"""

CUSTOMERS = ["c%02d" % i for i in range(1, 31)]


def excluded(decision, offer, placement):
    for c in decision.get("candidates", []):
        if c["offer"] == offer and c["placement"] == placement:
            return c.get("excluded")
    raise AssertionError("no candidate %s/%s: %s" % (offer, placement, decision))


class ScaleOutTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        policy = nx.write(self.path("policy.lua"),
                          nx.SIMPLE_POLICY % dict(name="scale", score="1.0"))
        # one store built by "the batch pipeline", copied to each node
        built = nx.make_store(self.path("built"), [nx.profile(c) for c in CUSTOMERS])
        self.nodes = {}
        for name in ("A", "B"):
            store = self.path("store-" + name)
            shutil.copytree(built, store)
            nx.give_to_workers(store)
            self.nodes[name] = self.nginx(NODE % dict(store=store, catalog=catalog,
                                                      policy=policy, name=name),
                                          name="node-" + name)
        self.balancer = self.nginx(BALANCER % dict(a=self.nodes["A"].port,
                                                   b=self.nodes["B"].port),
                                   name="balancer")

    def decide(self, customer, server=None):
        server = server or self.balancer
        r = request(server.url("/decide"), headers={"Cookie": "uid=" + customer})
        self.assertStatus(r, 200, "decide for %s via %s" % (customer, server.prefix))
        d = r.json()
        self.assertEqual(d["customer"], customer)
        self.assertIs(d["fallback"], False, d)
        return r.headers.get("X-Nbx-Node"), d

    def event(self, customer, body):
        r = request(self.balancer.url("/event"), data=body, method="POST",
                    headers={"Cookie": "uid=" + customer})
        self.assertStatus(r, 204, "event for %s" % customer)
        return r.headers.get("X-Nbx-Node")

    def test_caps_hold_through_the_balancer_and_a_node_may_fail(self):
        # every customer sticks to one node, and both nodes get customers
        home = {}
        for c in CUSTOMERS:
            nodes = {self.decide(c)[0] for _ in range(4)}
            self.assertEqual(len(nodes), 1, "%s went to nodes %s" % (c, nodes))
            home[c] = nodes.pop()
        self.assertEqual(set(home.values()), {"A", "B"}, "one node got every customer")

        # cap one customer on each node through the balancer
        capped = [next(c for c in CUSTOMERS if home[c] == n) for n in ("A", "B")]
        now = time.time()
        for c in capped:
            for i in range(3):
                node = self.event(c, nx.impression("%s-imp-%d" % (c, i), c,
                                                   "free_shipping", "hero", now - 30 + i))
                self.assertEqual(node, home[c], "the event went to another node")
            for _ in range(3):
                node, d = self.decide(c)
                self.assertEqual(excluded(d, "free_shipping", "hero"), "frequency", d)
                self.assertNotIn("free_shipping", [a["offer"] for a in d["actions"]])
            # the counters live on the home node only: the other node, asked
            # directly, has never seen them
            other = self.nodes["B" if home[c] == "A" else "A"]
            _, d = self.decide(c, server=other)
            self.assertIsNone(excluded(d, "free_shipping", "hero"))

        # node B fails: every customer still gets a decision, from A
        self.nodes["B"].stop()
        for c in CUSTOMERS:
            node, d = self.decide(c)
            self.assertEqual(node, "A")
            self.assertTrue(d["actions"], d)
        # A's customers kept their counters; B's moved customer starts fresh
        a_capped, b_capped = capped
        self.assertEqual(excluded(self.decide(a_capped)[1], "free_shipping", "hero"),
                         "frequency")
        self.assertIsNone(excluded(self.decide(b_capped)[1], "free_shipping", "hero"))


if __name__ == "__main__":
    unittest.main()
