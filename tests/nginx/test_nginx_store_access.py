"""`nginx -t`, start and reload open every nbx store the way the workers
will: as the workers' user (the `user` directive wherever it stands, or
nginx's default), read-write where a location writes to the store
(nbx_event, nbx_record_impressions), read-only elsewhere, with the
environment the workers get. A store the workers cannot open is a
configuration error naming the store, the user, the access and the reason,
not a 503 on every request.

Switching to the workers' user needs root: those tests are skipped
otherwise (the master then checks as itself, as its workers run)."""

import os
import pwd
import stat
import unittest

import nbxnginx as nx
from nbxnginx import request

ROOT = os.geteuid() == 0
needs_root = unittest.skipUnless(ROOT, "checking as the workers' user needs root")

DECIDE = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s; nbx_catalog %(catalog)s; nbx_policy %(policy)s;
        location = /decide { nbx_customer $arg_customer; %(decide)s nbx_decide; }
        %(more)s
    }"""

EVENT = "location = /event { nbx_event; }"


class StoreAccessTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.policy = nx.write(self.path("policy.lua"),
                               nx.SIMPLE_POLICY % dict(name="p", score="1.0"))
        # created by root (the tests' user), as by an import run as root
        self.store = nx.make_store(self.path("store"), [nx.profile("c1")])

    def conf(self, decide="", more="", name="nginx"):
        return self.nginx(DECIDE % dict(store=self.store, catalog=self.catalog,
                                        policy=self.policy, decide=decide, more=more),
                          name=name, start=False)

    def readable_not_writable(self):
        """data.mdb readable by all, writable by root only; lock.mdb (which
        LMDB writes to read) writable by all."""
        os.chmod(self.store, 0o755)
        os.chmod(os.path.join(self.store, "data.mdb"), 0o644)
        os.chmod(os.path.join(self.store, "lock.mdb"), 0o666)

    def assertRefused(self, server, *needles):
        ok, out = server.test_conf()
        self.assertFalse(ok, "nginx -t accepted a store the workers cannot open:\n" + out)
        for n in (self.store,) + needles:
            self.assertIn(n, out)
        return out

    @needs_root
    def test_root_only_store_fails_nginx_t(self):
        os.chmod(self.store, 0o700)
        server = self.conf()
        self.assertRefused(server, 'user "nobody"', "read-only",
                           "cannot enter the store directory")
        # and nginx does not start on it
        with self.assertRaises(AssertionError):
            server.start(server.port, timeout=10)

    @needs_root
    def test_events_need_read_and_write(self):
        self.readable_not_writable()
        self.assertRefused(self.conf(more=EVENT, name="event"), 'user "nobody"',
                           "read-write", "data.mdb needs read and write access")
        self.assertRefused(self.conf(decide="nbx_record_impressions on;", name="record"),
                           "read-write", "data.mdb needs read and write access")

    @needs_root
    def test_decisions_only_open_the_store_read_only(self):
        self.readable_not_writable()
        server = self.conf()
        ok, out = server.test_conf()
        self.assertTrue(ok, out)
        server.start(server.port)
        r = request(server.url("/decide?customer=c1"))
        self.assertStatus(r, 200, "a store the workers may only read")
        self.assertIs(r.json()["fallback"], False, r)

    @needs_root
    def test_user_directive_after_the_http_block_counts(self):
        try:
            pwd.getpwnam("daemon")
        except KeyError:
            self.skipTest("no user 'daemon' on this machine")
        nx.give_to_workers(self.store)  # nobody's, and nobody else's
        os.chmod(self.store, 0o700)
        server = self.conf()
        ok, out = server.test_conf()
        self.assertTrue(ok, "nobody's own store: " + out)
        with open(server.conf) as f:
            text = f.read()
        # the workers run as daemon: the directive comes after http {}
        text = text.replace("user nobody nogroup;\n", "") + "user daemon;\n"
        nx.write(server.conf, text)
        self.assertRefused(server, 'user "daemon"', "cannot enter the store directory")

    def test_the_workers_environment_counts(self):
        if ROOT:
            nx.give_to_workers(self.store)
        server = self.conf()
        # nginx's own environment does not reach the workers: no effect
        env_before = os.environ.get("NBX_MAP_SIZE")
        os.environ["NBX_MAP_SIZE"] = "lots"
        try:
            ok, out = server.test_conf()
        finally:
            if env_before is None:
                del os.environ["NBX_MAP_SIZE"]
            else:
                os.environ["NBX_MAP_SIZE"] = env_before
        self.assertTrue(ok, out)
        # `env` passes it on: the workers would fail, so does the check
        with open(server.conf) as f:
            text = f.read()
        nx.write(server.conf, "env NBX_MAP_SIZE=lots;\n" + text)
        self.assertRefused(server, "NBX_MAP_SIZE")

    def test_missing_store_is_a_warning(self):
        self.store = self.path("later")
        ok, out = self.conf().test_conf()
        self.assertTrue(ok, out)
        self.assertIn("is not there yet", out)

    @needs_root
    def test_reload_onto_a_store_the_workers_cannot_open_is_refused(self):
        nx.give_to_workers(self.store)
        server = self.conf()
        server.start(server.port)
        self.assertStatus(request(server.url("/decide?customer=c1")), 200, "before")
        os.chown(self.store, 0, 0)
        os.chmod(self.store, 0o700)
        old, now, log = server.reload_expect_failure("cannot open it")
        self.assertIn(self.store, log)
        self.assertEqual(old, now, "the workers were replaced")
        # the running workers opened the store before: they keep serving
        self.assertStatus(request(server.url("/decide?customer=c1")), 200, "after")


if __name__ == "__main__":
    unittest.main()
