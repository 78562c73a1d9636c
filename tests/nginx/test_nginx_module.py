"""ngx_http_nbx_module: decisions, events, frequency caps and every error
status, against a real nginx with the module loaded and a real store."""

import json
import os
import socket
import time
import unittest

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
            nbx_session channel $arg_channel;
            nbx_session device $http_x_device;
            nbx_decide;
        }
        location = /decide/cookie {
            nbx_customer $cookie_uid;
            nbx_decide;
        }
        location = /explain {
            nbx_customer $arg_customer;
            nbx_explain on;
            nbx_decide;
        }
        location = /event {
            nbx_event_max_body 2k;
            nbx_event;
        }
        location = /decide/if {
            nbx_customer $arg_customer;
            nbx_decide;
            if ($arg_debug) {
                add_header X-Debug 1;
            }
        }
        location = /event/if {
            nbx_event;
            if ($arg_debug) {
                add_header X-Debug 1;
            }
        }
        location = /event/limited {
            nbx_event;
            limit_except GET {
                allow 127.0.0.1;
                deny all;
            }
        }
        location = /decide/record {
            nbx_policy %(prefer_fs)s;
            nbx_customer $arg_customer;
            nbx_record on;
            nbx_decide;
        }
        location = /decide/record-old {
            nbx_policy %(prefer_fs)s;
            nbx_customer $arg_customer;
            nbx_record_impressions on;
            nbx_decide;
        }
        location = /missing {
            nbx_store %(tmp)s/no-such-store;
            nbx_customer $arg_customer;
            nbx_decide;
        }
        location = /missing/event {
            nbx_store %(tmp)s/no-such-store;
            nbx_event;
        }
        location = /broken {
            nbx_policy %(raising)s;
            nbx_customer $arg_customer;
            nbx_session mode $arg_mode;
            nbx_decide;
        }
    }
"""

RAISING_POLICY = """\
-- raises on every score when asked (mode=hostile): decisions must fall back;
-- nginx -t tries it without a session, where it works
return {
  name = "raising",
  score = function(o, c, s)
    if s.mode == "hostile" then error("nbx-test-policy-failure") end
    return 1
  end,
}
"""


def actions(decision):
    return [(a["offer"], a["placement"]) for a in decision.get("actions", [])]


def candidate(decision, offer, placement):
    for c in decision.get("candidates", []):
        if c.get("offer") == offer and c.get("placement") == placement:
            return c
    raise AssertionError("no candidate %s/%s in %s" % (offer, placement,
                                                        json.dumps(decision)[:2000]))


class ModuleTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = nx.write(self.path("policy.lua"), nx.SIMPLE_POLICY
                               % dict(name="tests", score="1.0"))
        self.raising = nx.write(self.path("raising.lua"), RAISING_POLICY)
        # free_shipping first in hero: its impression cap (3) shows records
        self.prefer_fs = nx.write(self.path("prefer_fs.lua"), nx.SIMPLE_POLICY % dict(
            name="prefer_fs", score="(...).id == 'free_shipping' and 2 or 1"))
        self.store = nx.make_store(self.path("store"), [
            nx.profile("c1", free_shipping=0.9, ten_off=0.1),
            nx.profile("c2", free_shipping=0.2),
            nx.profile("c3"),
            nx.profile("c5"),
        ])
        nx.give_to_workers(self.store)
        self.server = self.nginx(SERVER % dict(store=self.store, catalog=self.catalog,
                                               policy=self.policy, tmp=self.tmp,
                                               raising=self.raising,
                                               prefer_fs=self.prefer_fs))
        self.pids = self.server.worker_pids()

    def tearDown(self):
        # no request may have cost a worker its life
        self.assertEqual(self.server.worker_pids(), self.pids,
                         "worker pids changed: a worker died")

    def get(self, path, **kw):
        return request(self.server.url(path), **kw)

    def event(self, body, path="/event"):
        return request(self.server.url(path), data=body, method="POST",
                       headers={"Content-Type": "application/json"})

    # -- decisions ---------------------------------------------------------

    def test_01_decide_returns_the_decision_json(self):
        r = self.get("/decide?customer=c1&placement=hero&placement=recs"
                     "&channel=web", headers={"X-Device": "mobile"})
        self.assertStatus(r, 200, "decide")
        self.assertEqual(r.headers.get("Content-Type"), "application/json")
        self.assertEqual(r.headers.get("Cache-Control"), "no-store")
        d = r.json()
        self.assertEqual(d["customer"], "c1")
        self.assertIs(d["fallback"], False, d)
        self.assertEqual(d["policy"]["name"], "tests")
        self.assertRegex(d["policy"]["version"], "^[0-9a-f]{16}$")
        self.assertTrue(d["decision_id"])
        self.assertTrue(d["actions"], "no actions: %s" % d)
        placements = {a["placement"] for a in d["actions"]}
        self.assertLessEqual(placements, {"hero", "recs"})
        self.assertNotIn("candidates", d, "explain is off")

    def test_02_placement_arguments_select_placements(self):
        d = self.get("/decide?customer=c1&placement=recs").json()
        self.assertTrue(d["actions"], d)
        self.assertEqual({a["placement"] for a in d["actions"]}, {"recs"})
        # percent-encoded placement ids are decoded
        d = self.get("/decide?customer=c1&placement=%68ero").json()
        self.assertEqual({a["placement"] for a in d["actions"]}, {"hero"})

    def test_03_customer_from_a_cookie(self):
        r = self.get("/decide/cookie?placement=hero", headers={"Cookie": "uid=c2"})
        self.assertStatus(r, 200, "cookie customer")
        self.assertEqual(r.json()["customer"], "c2")

    def test_04_unknown_customer_is_anonymous(self):
        r = self.get("/decide?customer=nobody-knows-me")
        self.assertStatus(r, 200, "anonymous")
        self.assertEqual(r.json()["customer"], "nobody-knows-me")

    def test_05_head_sends_headers_only(self):
        r = self.get("/decide?customer=c1", method="HEAD")
        self.assertStatus(r, 200, "HEAD")
        self.assertEqual(r.body, "")
        self.assertGreater(int(r.headers["Content-Length"]), 0)

    def test_06_if_and_limit_except_blocks_keep_the_handler(self):
        # an "if" that matches runs the handler with the if block's own
        # configuration; "limit_except" runs the block's own handler
        r = self.get("/decide/if?customer=c1&placement=hero&debug=1")
        self.assertStatus(r, 200, "decide in a matching if")
        self.assertEqual(r.headers.get("X-Debug"), "1")
        self.assertEqual(r.json()["customer"], "c1")
        r = self.get("/decide/if?customer=c1&placement=hero")
        self.assertStatus(r, 200, "decide, if not matching")
        r = self.event(nx.impression("if-1", "c3", "ten_off", "recs"), path="/event/if?debug=1")
        self.assertStatus(r, 204, "event in a matching if")
        self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")
        r = self.event(nx.impression("lim-1", "c3", "ten_off", "recs"), path="/event/limited")
        self.assertStatus(r, 204, "event through limit_except")
        self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")

    def excluded(self, customer):
        d = self.get("/explain?customer=%s&placement=hero" % customer).json()
        return sorted(c["offer"] for c in d["candidates"] if c.get("excluded"))

    def test_07_head_records_no_impression(self):
        self.assertEqual(self.excluded("c3"), [])
        for _ in range(4):  # more than free_shipping's cap of 3
            r = self.get("/decide/record?customer=c3&placement=hero", method="HEAD")
            self.assertStatus(r, 200, "HEAD")
        self.assertEqual(self.excluded("c3"), [], "a HEAD spent a cap")
        for _ in range(4):
            r = self.get("/decide/record?customer=c3&placement=hero")
            self.assertStatus(r, 200, "GET")
        self.assertEqual(self.excluded("c3"), ["free_shipping"],
                         "3 GETs with nbx_record reach the cap")

    def test_08_nbx_record_impressions_is_the_old_spelling_of_nbx_record(self):
        self.assertEqual(self.excluded("c5"), [])
        for _ in range(3):
            r = self.get("/decide/record-old?customer=c5&placement=hero")
            self.assertStatus(r, 200, "GET")
            self.assertEqual(actions(r.json())[0], ("free_shipping", "hero"), r.json())
        self.assertEqual(self.excluded("c5"), ["free_shipping"],
                         "3 GETs with nbx_record_impressions reach the cap")

    # -- events and caps ---------------------------------------------------

    def test_10_impressions_reach_the_frequency_cap(self):
        def free_shipping_state():
            d = self.get("/explain?customer=c1&placement=hero").json()
            self.assertIs(d["fallback"], False, d)
            return d, candidate(d, "free_shipping", "hero")

        d, c = free_shipping_state()
        self.assertFalse(c.get("excluded"), "excluded before any impression: %s" % c)

        now = time.time()
        for i in range(3):  # caps.impressions.max is 3
            d, c = free_shipping_state()
            self.assertFalse(c.get("excluded"), "excluded after %d impressions: %s" % (i, c))
            r = self.event(nx.impression("imp-%d" % i, "c1", "free_shipping", "hero",
                                         now - 60 + i))
            self.assertStatus(r, 204, "impression %d" % i)
            self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")
            self.assertEqual(r.body, "")

        d, c = free_shipping_state()
        self.assertEqual(c.get("excluded"), "frequency", c)
        self.assertNotIn(("free_shipping", "hero"), actions(d))
        # the other customers keep theirs
        d = self.get("/explain?customer=c2&placement=hero").json()
        self.assertFalse(candidate(d, "free_shipping", "hero").get("excluded"))

    def test_11_a_replayed_event_is_accepted_and_skipped(self):
        ev = nx.impression("dup-1", "c3", "free_shipping", "hero")
        r = self.event(ev)
        self.assertStatus(r, 204, "first")
        self.assertEqual(r.headers.get("X-Nbx-Applied"), "1")
        r = self.event(ev)
        self.assertStatus(r, 204, "replay")
        self.assertEqual(r.headers.get("X-Nbx-Applied"), "0")

    def test_12_chunked_event_body(self):
        body = json.dumps(nx.impression("chunked-1", "c3", "ten_off", "recs")).encode()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=5) as s:
            s.sendall(b"POST /event HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 10):
                part = body[i:i + 10]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            s.sendall(b"0\r\n\r\n")
            reply = b""
            while True:
                data = s.recv(4096)
                if not data:
                    break
                reply += data
        self.assertTrue(reply.startswith(b"HTTP/1.1 204"), reply)

    # -- errors --------------------------------------------------------------

    def assertJsonError(self, r, status, what, contains=None):
        self.assertStatus(r, status, what)
        self.assertEqual(r.headers.get("Content-Type"), "application/json", what)
        body = r.json()
        self.assertEqual(body.get("status"), status, body)
        self.assertTrue(body.get("error"), body)
        if contains:
            self.assertIn(contains, body["error"], "%s: %s" % (what, body))
        return body

    def test_20_no_customer_is_400(self):
        self.assertJsonError(self.get("/decide?placement=hero"), 400,
                             "no customer", "customer")
        self.assertJsonError(self.get("/decide/cookie"), 400, "no cookie", "customer")
        self.assertJsonError(self.get("/decide?customer=" + "x" * 300), 400,
                             "id too long", "customer")

    def test_21_malformed_event_is_400_naming_the_problem(self):
        self.assertJsonError(self.event("{not json"), 400, "not JSON")
        ev = nx.impression("bad-1", "c1", "free_shipping", "hero")
        del ev["type"]
        body = self.assertJsonError(self.event(ev), 400, "no type")
        self.assertIn("type", body["error"])
        ev = nx.impression("bad-2", "c1", "free_shipping", "hero")
        ev["ts"] = "yesterday"
        body = self.assertJsonError(self.event(ev), 400, "bad ts")
        self.assertIn("ts", body["error"])
        self.assertJsonError(self.event(""), 400, "empty body", "empty")

    def test_22_event_body_is_bounded(self):
        ev = nx.impression("big-1", "c1", "free_shipping", "hero")
        ev["padding"] = "x" * 4096  # nbx_event_max_body 2k
        self.assertJsonError(self.event(ev), 413, "oversized body", "too large")

    def test_23_other_methods_are_405(self):
        for method, path, allow in [("PUT", "/decide?customer=c1", "GET"),
                                    ("POST", "/decide?customer=c1", "GET"),
                                    ("DELETE", "/decide?customer=c1", "GET"),
                                    ("GET", "/event", "POST"),
                                    ("PUT", "/event", "POST")]:
            r = request(self.server.url(path), method=method,
                        data=b"{}" if method in ("PUT", "POST") else None)
            self.assertJsonError(r, 405, "%s %s" % (method, path))
            self.assertIn(allow, r.headers.get("Allow", ""), "%s %s" % (method, path))

    def test_24_missing_store_is_503(self):
        self.assertJsonError(self.get("/missing?customer=c1"), 503, "missing store")
        self.assertJsonError(self.event(nx.impression("m-1", "c1", "free_shipping", "hero"),
                                        path="/missing/event"), 503, "missing store event")

    def test_25_too_many_placements_is_400(self):
        q = "&".join(["placement=hero"] * 65)
        self.assertJsonError(self.get("/decide?customer=c1&" + q), 400, "65 placements")

    def test_25b_unknown_placement_is_400(self):
        self.assertJsonError(self.get("/decide?customer=c1&placement=nowhere"), 400,
                             "unknown placement", "nowhere")
        self.assertJsonError(self.get("/decide?customer=c1&placement="), 400,
                             "empty placement", "placement")

    def test_26_policy_failure_falls_back_with_a_rate_limited_log(self):
        before = self.server.log_size()
        started = time.monotonic()
        for i in range(40):
            r = self.get("/broken?customer=c%d&placement=hero&placement=recs&mode=hostile"
                         % (i % 3 + 1))
            self.assertStatus(r, 200, "fallback")
            d = r.json()
            self.assertIs(d["fallback"], True, d)
            self.assertTrue(d.get("error"), d)
            self.assertEqual(sorted(actions(d)), [("bestsellers", "recs"),
                                                  ("brand_banner", "hero")], d)
        elapsed = time.monotonic() - started
        time.sleep(0.2)
        log = self.server.log_since(before)
        lines = [l for l in log.splitlines()
                 if "[error]" in l and "nbx: policy raising" in l and "fallback" in l]
        self.assertTrue(lines, "no error-log line for the policy failure:\n" + log)
        # the promise: at most one line a second per worker, however long
        # the 40 requests took on this machine
        most = self.server.workers * (int(elapsed) + 2)
        self.assertLessEqual(len(lines), most, "the log is not rate-limited: %d lines in "
                             "%.1f s from %d workers" % (len(lines), elapsed,
                                                         self.server.workers))
        # the other locations still serve the good policy
        self.assertIs(self.get("/decide?customer=c1").json()["fallback"], False)


class StoreLaterTest(nx.NginxTestCase):
    """A store that is missing at start gets served once it appears, without
    a reload."""

    def test_store_appears(self):
        catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        policy = nx.write(self.path("policy.lua"),
                          nx.SIMPLE_POLICY % dict(name="later", score="1.0"))
        store = self.path("store")
        server = self.nginx("""
            server {
                listen 127.0.0.1:%%(port)s;
                location = /decide {
                    nbx_store %s; nbx_catalog %s; nbx_policy %s;
                    nbx_customer $arg_customer;
                    nbx_decide;
                }
            }""" % (store, catalog, policy))
        r = request(server.url("/decide?customer=c1"))
        self.assertStatus(r, 503, "before the store exists")
        self.assertIn("unavailable", server.log_since(0))
        nx.make_store(store, [nx.profile("c1")])
        nx.give_to_workers(store)
        # workers retry once a second; a slow machine gets room
        deadline = time.time() + 30
        while time.time() < deadline:
            r = request(server.url("/decide?customer=c1"))
            if r.status == 200:
                break
            time.sleep(0.2)
        self.assertStatus(r, 200, "after the store appeared")


class ConfigTest(nx.NginxTestCase):
    """`nginx -t` refuses broken policies and catalogs and incomplete
    configurations, naming the problem."""

    def conf(self, body):
        return self.nginx("server { listen 127.0.0.1:%%(port)s; %s }" % body,
                          start=False)

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = nx.write(self.path("policy.lua"),
                               nx.SIMPLE_POLICY % dict(name="ok", score="1.0"))

    def assertRefused(self, body, *needles):
        ok, out = self.conf(body).test_conf()
        self.assertFalse(ok, "nginx -t accepted:\n" + body)
        for n in needles:
            self.assertIn(n, out)

    def test_good_configuration(self):
        ok, out = self.conf("""location / { nbx_store %s/s; nbx_catalog %s;
            nbx_policy %s; nbx_customer $arg_c; nbx_decide; }"""
                            % (self.tmp, self.catalog, self.policy)).test_conf()
        self.assertTrue(ok, out)

    def test_broken_policy(self):
        bad = nx.write(self.path("bad.lua"), "return {name = 'x', score = function(\n")
        self.assertRefused("""location / { nbx_store %s/s; nbx_catalog %s;
            nbx_policy %s; nbx_customer $arg_c; nbx_decide; }"""
                           % (self.tmp, self.catalog, bad), "invalid nbx policy", "bad.lua")

    def test_missing_policy(self):
        self.assertRefused("nbx_policy %s/none.lua;" % self.tmp, "none.lua")

    def test_policy_failing_for_some_customers(self):
        # issue 10: a policy comparing an attribute some customers lack
        # passed nginx -t, then fell back for them; the trial over synthetic
        # customers refuses it, naming the line and the reason
        nil = nx.write(self.path("nilcmp.lua"),
                       "return { name = 'nilcmp',\n"
                       "  eligible = function(o, c) return c.attrs.tier > 2 end,\n"
                       "  score = function(o) return 1 end }\n")
        self.assertRefused("""location / { nbx_store %s/s; nbx_catalog %s;
            nbx_policy %s; nbx_customer $arg_c; nbx_decide; }"""
                           % (self.tmp, self.catalog, nil), "nilcmp.lua:2",
                           "attempt to compare")

    def test_fifo_as_policy_or_catalog(self):
        # issue 10: a FIFO blocked nginx -t in open() before the
        # regular-file check (test_conf gives up after 60 s)
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        for body in ("nbx_policy %s;" % fifo, "nbx_catalog %s;" % fifo):
            with self.subTest(body=body):
                self.assertRefused(body, "not a regular file (a FIFO)")

    def test_broken_catalog(self):
        cat = nx.demo_catalog()
        del cat["offers"][0]["price"]
        bad = nx.write_json(self.path("bad.json"), cat)
        self.assertRefused("nbx_catalog %s;" % bad, "invalid nbx catalog", "price",
                           "free_shipping")

    def test_handler_needs_store_catalog_policy(self):
        self.assertRefused("location / { nbx_catalog %s; nbx_customer $arg_c; nbx_decide; }"
                           % self.catalog, "nbx_decide needs nbx_store")

    def test_decide_needs_customer(self):
        self.assertRefused("""location / { nbx_store %s/s; nbx_catalog %s;
            nbx_policy %s; nbx_decide; }""" % (self.tmp, self.catalog, self.policy),
                           "nbx_customer")

    def test_policy_over_its_memory_limit(self):
        # loads within the default 32 MiB, not within the location's 256k
        heavy = nx.write(self.path("heavy.lua"),
                         "local t = {}\nfor i = 1, 100000 do t[i] = i end\n"
                         "return { name = 'heavy', score = function() return #t end }\n")
        loc = ("location / { nbx_store %s/s; nbx_catalog %s; nbx_policy %s; "
               "nbx_customer $arg_c; %s nbx_decide; }")
        ok, out = self.conf(loc % (self.tmp, self.catalog, heavy, "")).test_conf()
        self.assertTrue(ok, out)
        self.assertRefused(loc % (self.tmp, self.catalog, heavy, "nbx_memory_limit 256k;"),
                           "heavy.lua", "memory limit (256 KiB)")

    def test_record_twice_is_refused(self):
        # nbx_record_impressions is nbx_record's old name: one switch
        self.assertRefused("nbx_record on; nbx_record_impressions off;",
                           '"nbx_record_impressions" directive is duplicate')

    def test_bad_time_limit(self):
        self.assertRefused("nbx_time_limit 0ms;", "nbx_time_limit")
        self.assertRefused("nbx_time_limit 1h;", "nbx_time_limit")


if __name__ == "__main__":
    unittest.main()
