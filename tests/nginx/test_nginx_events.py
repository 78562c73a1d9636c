"""ngx_http_nbx_module's event endpoint and the data it must not let a
client corrupt (issue 9): the server's clock dates events by default, a
client's clock is checked against a skew, an offer must be the catalog's,
an erased customer's events are refused. A real nginx, a real store."""

import json
import time

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
            nbx_decide;
        }
        location = /event {
            nbx_event;
        }
        location = /event/client {
            nbx_event_time client;
            nbx_event;
        }
        location = /event/client/hour {
            nbx_event_time client;
            nbx_event_max_skew 1h;
            nbx_event;
        }
    }
"""


def click(event_id, customer, offer, t):
    return {"event_id": event_id, "customer": customer, "type": "click", "offer": offer,
            "ts": nx.iso(t)}


class EventTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        catalog = nx.demo_catalog()
        catalog["guardrails"]["max_contacts"] = {"max": 5, "window_days": 7}
        self.catalog = nx.write_json(self.path("catalog.json"), catalog)
        self.policy = nx.write(self.path("policy.lua"), nx.SIMPLE_POLICY
                               % dict(name="tests", score="1.0"))
        self.store = nx.make_store(self.path("store"), [nx.profile("u1"), nx.profile("u2")])
        nx.give_to_workers(self.store)
        self.server = self.nginx(SERVER % dict(store=self.store, catalog=self.catalog,
                                               policy=self.policy))

    def event(self, body, path="/event"):
        return request(self.server.url(path), data=body, method="POST",
                       headers={"Content-Type": "application/json"})

    def actions(self, customer):
        r = request(self.server.url("/decide?customer=" + customer))
        self.assertStatus(r, 200, "decide")
        return [a["offer"] for a in r.json()["actions"]]

    def at_the_contact_cap(self, customer):
        self.assertTrue(self.actions(customer), "no actions before any impression")
        now = time.time()
        offers = ["free_shipping", "ten_off", "socks", "gift_card", "ten_off"]
        for i, offer in enumerate(offers):
            ev = nx.impression("imp-%d" % i, customer, offer, "recs", now - 600 + i)
            r = self.event(ev)
            self.assertStatus(r, 204, "impression %d" % i)
            self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")
        self.assertEqual(self.actions(customer), [], "5 impressions did not reach the cap")

    def assertError(self, r, status, field):
        self.assertStatus(r, status, field)
        body = r.json()
        self.assertIn("field '%s'" % field, body.get("error", ""), body)

    def test_01_a_client_cannot_reset_its_caps_with_a_future_ts(self):
        """The report: POST /event with a 2028 ts returned 204 and a customer
        at the contact cap got 5 actions back."""
        self.at_the_contact_cap("u1")
        future = time.time() + 2 * 365 * 86400
        # default: the server's clock dates the event, its ts is not trusted
        r = self.event(click("c-2028", "u1", "free_shipping", future))
        self.assertStatus(r, 204, "server time")
        self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")
        self.assertEqual(self.actions("u1"), [])
        # nbx_event_time client: the ts is checked against the skew
        r = self.event(click("c-2028b", "u1", "free_shipping", future), path="/event/client")
        self.assertError(r, 400, "ts")
        self.assertEqual(self.actions("u1"), [])

    def test_02_a_client_clock_within_the_skew_is_taken(self):
        now = time.time()
        r = self.event(click("soon", "u2", "socks", now + 60), path="/event/client")
        self.assertStatus(r, 204, "a minute ahead")
        r = self.event(click("later", "u2", "socks", now + 1800), path="/event/client")
        self.assertError(r, 400, "ts")
        r = self.event(click("later", "u2", "socks", now + 1800), path="/event/client/hour")
        self.assertStatus(r, 204, "half an hour ahead, skew 1h")
        r = self.event(click("old", "u2", "socks", now - 30 * 86400), path="/event/client")
        self.assertStatus(r, 204, "a backfill")

    def test_03_server_time_needs_no_ts(self):
        ev = click("no-ts", "u2", "socks", time.time())
        del ev["ts"]
        self.assertStatus(self.event(ev), 204, "no ts, server time")
        self.assertError(self.event(ev, path="/event/client"), 400, "ts")


    def test_04_an_offer_not_in_the_catalog_is_400(self):
        for path in ("/event", "/event/client"):
            with self.subTest(path=path):
                r = self.event(click("nope-" + path, "u2", "NOPE", time.time()), path=path)
                self.assertError(r, 400, "offer")
        purchase = {"event_id": "p1", "customer": "u2", "type": "purchase", "amount": 5,
                    "ts": nx.iso(time.time())}
        self.assertStatus(self.event(purchase), 204, "a purchase names no offer")


    def test_05_an_erased_customer_s_events_are_not_applied(self):
        """Erasure lasts: 204 with X-Nbx-Applied: 0, nothing stored."""
        r = self.event(click("e1", "u2", "socks", time.time()))
        self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")
        p = nx.nbx("profile", "delete", "u2", "--store", self.store)
        self.assertEqual(json.loads(p.stdout)["id"], "u2")
        for event_id in ("e1", "e2"):
            r = self.event(click(event_id, "u2", "socks", time.time()))
            self.assertStatus(r, 204, event_id)
            self.assertEqual(r.headers.get("X-Nbx-Applied"), "0", event_id)
        r = request(self.server.url("/decide?customer=u2"))
        self.assertIs(r.json()["anonymous"], True)
        stats = json.loads(nx.nbx("stats", "--json", "--store", self.store).stdout)
        self.assertEqual(stats["events_seen"], 0)


class EventConfigTest(nx.NginxTestCase):

    def test_directives_are_checked(self):
        catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        policy = nx.write(self.path("policy.lua"), nx.SIMPLE_POLICY
                          % dict(name="tests", score="1.0"))
        store = self.path("store")
        for directive, expect in (("nbx_event_time browser;", "invalid value \"browser\""),
                                  ("nbx_event_max_skew 0;", "nbx_event_max_skew"),
                                  ("nbx_event_max_skew 2d;", "nbx_event_max_skew")):
            with self.subTest(directive=directive):
                http = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %s;
        nbx_catalog %s;
        nbx_policy %s;
        location = /event { %s nbx_event; }
    }
""" % (store, catalog, policy, directive)
                n = self.nginx(http, name="bad%d" % len(self.servers), start=False)
                ok, out = n.test_conf()
                self.assertFalse(ok, out)
                self.assertIn(expect, out)
