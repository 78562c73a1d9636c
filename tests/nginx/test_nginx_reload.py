"""nginx -s reload: a new policy or catalog is picked up while requests run
and none fails; a broken one is refused and the old workers keep serving."""

import json
import os
import signal
import threading
import time
import unittest

import nbxnginx as nx
from nbxnginx import request

HTTP = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s;
        nbx_catalog %(catalog)s;
        nbx_policy %(policy)s;
        location = /decide {
            nbx_customer $arg_customer;
            nbx_decide;
        }
    }
"""


class Load(threading.Thread):
    """Decisions in a loop on fresh connections; records (policy version,
    catalog version) in order, and every failure."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.seen = []
        self.failures = []

    def run(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                r = request(self.url + "/decide?customer=c%d" % (i % 3 + 1), timeout=10)
                if r.status != 200:
                    self.failures.append(repr(r))
                    continue
                d = json.loads(r.body)
                if d.get("fallback"):
                    self.failures.append("fallback: " + r.body[:500])
                self.seen.append((d["policy"]["version"], d["catalog_version"]))
            except Exception as e:  # a refused or reset connection is a failure
                self.failures.append("%s: %s" % (type(e).__name__, e))


class ReloadTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = self.path("policy.lua")
        nx.write(self.policy, nx.SIMPLE_POLICY % dict(name="v1", score="1.0"))
        self.store = nx.make_store(self.path("store"),
                                   [nx.profile("c1"), nx.profile("c2"), nx.profile("c3")])
        nx.give_to_workers(self.store)
        self.server = self.nginx(HTTP % dict(store=self.store, catalog=self.catalog,
                                             policy=self.policy))
        self.first = request(self.server.url("/decide?customer=c1")).json()
        self.assertIs(self.first["fallback"], False, self.first)

    def load(self):
        load = Load(self.server.url(""))
        load.start()
        self.addCleanup(load.stop.set)
        time.sleep(0.5)
        return load

    def finish(self, load):
        time.sleep(0.5)
        load.stop.set()
        load.join(15)
        self.assertEqual(load.failures, [], "requests failed during the reload")
        self.assertGreater(len(load.seen), 20, "too few requests ran")
        return load.seen

    def assertSwitched(self, seen, reloaded_at, old, new):
        """Versions go from old to new. While the master replaces the
        workers both sets accept for a moment; once the old ones are gone
        (reloaded_at: requests done by then; one may have been in flight),
        only the new version serves."""
        self.assertEqual(seen[0], old)
        self.assertLessEqual(set(seen), {old, new}, "unexpected versions")
        self.assertEqual(set(seen[reloaded_at + 1:]), {new},
                         "the old version served after its workers were gone")

    def test_new_policy_is_picked_up_without_failed_requests(self):
        old = (self.first["policy"]["version"], self.first["catalog_version"])
        load = self.load()
        nx.write(self.policy, nx.SIMPLE_POLICY % dict(name="v2", score="2.0"))
        old_pids = self.server.worker_pids()
        new_pids = self.server.reload()
        reloaded_at = len(load.seen)
        self.assertFalse(old_pids & new_pids)
        seen = self.finish(load)
        d = request(self.server.url("/decide?customer=c1")).json()
        self.assertEqual(d["policy"]["name"], "v2")
        new = (d["policy"]["version"], d["catalog_version"])
        self.assertNotEqual(new[0], old[0], "the policy version did not change")
        self.assertEqual(new[1], old[1])
        self.assertSwitched(seen, reloaded_at, old, new)

    def test_new_catalog_is_picked_up(self):
        old = self.first["catalog_version"]
        catalog = nx.demo_catalog()
        catalog["offers"][1]["price"] = 90.0
        nx.write_json(self.catalog, catalog)
        load = self.load()
        self.server.reload()
        reloaded_at = len(load.seen)
        seen = self.finish(load)
        d = request(self.server.url("/decide?customer=c1")).json()
        self.assertNotEqual(d["catalog_version"], old)
        self.assertSwitched(seen, reloaded_at, (self.first["policy"]["version"], old),
                                (d["policy"]["version"], d["catalog_version"]))

    def test_broken_policy_is_refused_and_the_old_one_serves(self):
        load = self.load()
        nx.write(self.policy, "return { name = 'broken', score = function( }\n")
        old, now, log = self.server.reload_expect_failure("invalid nbx policy")
        self.assertEqual(old, now, "the workers were replaced by a refused reload")
        self.assertIn("policy.lua", log)
        seen = self.finish(load)
        expected = (self.first["policy"]["version"], self.first["catalog_version"])
        self.assertEqual(set(seen), {expected})
        # fixed, the next reload goes through
        nx.write(self.policy, nx.SIMPLE_POLICY % dict(name="v3", score="3.0"))
        self.server.reload()
        d = request(self.server.url("/decide?customer=c2")).json()
        self.assertEqual(d["policy"]["name"], "v3")

    def test_a_worker_started_after_a_refused_reload_serves_the_old_policy(self):
        # the master keeps what it read: a worker it starts later (after a
        # crash, here a SIGKILL) serves the same version, whatever the file
        # holds by then
        expected = (self.first["policy"]["version"], self.first["catalog_version"])
        nx.write(self.policy, "return { name = 'broken', score = function( }\n")
        old, now, log = self.server.reload_expect_failure("invalid nbx policy")
        self.assertEqual(old, now)
        victim = sorted(now)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 30
        while time.time() < deadline:
            pids = self.server.worker_pids()
            if len(pids) == len(now) and victim not in pids:
                break
            time.sleep(0.05)
        else:
            self.fail("the master did not replace the killed worker")
        # fresh connections reach both workers
        for i in range(40):
            r = request(self.server.url("/decide?customer=c%d" % (i % 3 + 1)))
            self.assertEqual(r.status, 200, r)
            d = r.json()
            self.assertIs(d["fallback"], False, d)
            self.assertEqual((d["policy"]["version"], d["catalog_version"]), expected)
        # a valid but different file is not picked up without a reload either
        nx.write(self.policy, nx.SIMPLE_POLICY % dict(name="v9", score="9.0"))
        os.kill(sorted(self.server.worker_pids())[0], signal.SIGKILL)
        time.sleep(0.5)
        for i in range(20):
            d = request(self.server.url("/decide?customer=c1")).json()
            self.assertEqual(d["policy"]["name"], "v1", d)

    def test_broken_catalog_is_refused_and_the_old_one_serves(self):
        load = self.load()
        catalog = nx.demo_catalog()
        catalog["offers"][0]["placements"] = ["nowhere"]
        nx.write_json(self.catalog, catalog)
        old, now, log = self.server.reload_expect_failure("invalid nbx catalog")
        self.assertEqual(old, now, "the workers were replaced by a refused reload")
        self.assertIn("free_shipping", log)
        seen = self.finish(load)
        expected = (self.first["policy"]["version"], self.first["catalog_version"])
        self.assertEqual(set(seen), {expected})


    def test_profiles_imported_while_serving_are_seen_without_reload(self):
        d = request(self.server.url("/decide?customer=late1")).json()
        self.assertIs(d["anonymous"], True, d)
        load = self.load()
        # a batch import into the live store (LMDB: readers never wait)
        rows = [nx.profile("late%d" % i) for i in range(1, 2001)]
        src = nx.write_jsonl(self.path("late.jsonl"), rows)
        nx.nbx("import", "profiles", src, "--store", self.store)
        seen = self.finish(load)
        self.assertEqual(len(set(seen)), 1)
        for c in ("late1", "late2000"):
            d = request(self.server.url("/decide?customer=" + c)).json()
            self.assertIs(d["anonymous"], False, d)


if __name__ == "__main__":
    unittest.main()
