"""What a failing policy shows, and to whom.

- A client gets a fallback with `error.kind` only: nothing of the policy's
  file path, line or message. The details go to nginx's error log, and to
  the response in a location with `nbx_explain on`.
- Policy-controlled text (a policy's name, its error messages, its syntax
  errors) reaches the error log and `nginx -t` output with control bytes
  escaped: an ANSI escape (ESC, 0x1b) or a carriage return in it cannot
  steer an operator's terminal or forge log lines."""

import os
import unittest

import nbxnginx as nx
from nbxnginx import request

# error() with a message naming a secret; the file's path is secret too.
# Policies here fail only when asked (mode=hostile): nginx -t tries a policy
# on synthetic customers, without a session, and refuses one that fails.
FAILING = """\
return {
  name = "leaky",
  score = function(o, c, s)
    if s.mode == "hostile" then error("db password is hunter2") end
    return 1
  end,
}
"""

# ESC [31m and CR in the runtime error's message (a name with control
# characters is refused when the policy loads: the last test)
HOSTILE_TEXT = (b'return {\n'
                b'  name = "evil",\n'
                b'  score = function(o, c, s) if s.mode == "hostile" then\n'
                b'    error("bad\\27[2J\\r[emerg] FORGED") end return 1 end,\n'
                b'}\n')

# a syntax error whose message quotes a raw ESC byte from the source
SYNTAX = b'local x = "\x1b[31mred\r\nreturn {}\n'

CONTROL = [b"\x1b", b"\r"]

SERVER = """
    server {
        listen 127.0.0.1:%%(port)s;
        nbx_store %(store)s; nbx_catalog %(catalog)s; nbx_policy %(policy)s;
        location = /decide { nbx_customer $arg_customer; nbx_session mode $arg_mode;
                             nbx_decide; }
        location = /explain { nbx_customer $arg_customer; nbx_session mode $arg_mode;
                              nbx_explain on; nbx_decide; }
    }"""


class PolicyErrorsTest(nx.NginxTestCase):

    def setUp(self):
        super().setUp()
        self.catalog = nx.write_json(self.path("catalog.json"), nx.demo_catalog())
        self.store = nx.make_store(self.path("store"), [nx.profile("c1")])
        nx.give_to_workers(self.store)

    def write_bytes(self, name, data):
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def serve(self, policy):
        return self.nginx(SERVER % dict(store=self.store, catalog=self.catalog,
                                        policy=policy))

    def log_bytes(self, server):
        with open(os.path.join(server.prefix, "error.log"), "rb") as f:
            return f.read()

    def assertNoControlBytes(self, data, where):
        for line in data.split(b"\n"):
            for c in CONTROL:
                self.assertNotIn(c, line, "%s has a raw %r: %r" % (where, c, line[:300]))

    def test_clients_get_the_kind_only(self):
        policy = nx.write(self.path("secret_policy_dir_leaky.lua"), FAILING)
        server = self.serve(policy)
        r = request(server.url("/decide?customer=c1&placement=hero&mode=hostile"))
        self.assertStatus(r, 200, "a fallback")
        d = r.json()
        self.assertIs(d["fallback"], True, d)
        self.assertEqual(d["error"], {"kind": "runtime"}, d)
        for secret in ("hunter2", "secret_policy_dir", self.tmp, ".lua", "lua:4"):
            self.assertNotIn(secret, r.body, "the client sees %r" % secret)
        # the details are in the error log
        log = server.log_since(0)
        self.assertIn("hunter2", log)
        self.assertIn("secret_policy_dir_leaky.lua:4", log)

    def test_explain_shows_the_details(self):
        policy = nx.write(self.path("leaky.lua"), FAILING)
        server = self.serve(policy)
        d = request(server.url("/explain?customer=c1&placement=hero&mode=hostile")).json()
        self.assertIs(d["fallback"], True, d)
        self.assertEqual(d["error"]["kind"], "runtime", d)
        self.assertEqual(d["error"]["where"], "leaky.lua:4", d)
        self.assertIn("hunter2", d["error"]["message"], d)

    def test_control_bytes_in_names_and_messages_are_escaped_in_the_log(self):
        policy = self.write_bytes("evil.lua", HOSTILE_TEXT)
        server = self.serve(policy)
        for path in ("/decide", "/explain"):
            r = request(server.url(path + "?customer=c1&mode=hostile"))
            self.assertStatus(r, 200, path)
            self.assertIs(r.json()["fallback"], True, r)
            # JSON escapes control characters itself; none is sent raw
            self.assertNoControlBytes(r.body.encode(), path + "'s body")
        log = self.log_bytes(server)
        self.assertIn(b"FORGED", log, "the failure was not logged")
        self.assertNoControlBytes(log, "the error log")
        self.assertIn(b"bad\\x1b[2J\\x0d[emerg] FORGED", log)
        # a forged line never starts a line of its own
        for line in log.split(b"\n"):
            self.assertFalse(line.startswith(b"[emerg] FORGED"), line)

    def test_control_bytes_in_syntax_errors_are_escaped_by_nginx_t(self):
        policy = self.write_bytes("syntax.lua", SYNTAX)
        server = self.nginx(SERVER % dict(store=self.store, catalog=self.catalog,
                                          policy=policy), start=False)
        ok, out = server.test_conf()
        self.assertFalse(ok, out)
        self.assertIn("invalid nbx policy", out)
        self.assertIn("unfinished string", out)
        self.assertNoControlBytes(out.encode(), "nginx -t")
        self.assertIn("\\x1b[31mred", out)

    def test_control_bytes_in_a_refused_name_are_escaped_by_nginx_t(self):
        # a name must be printable text: refused, and nothing of it raw
        for name, src in (("noscore.lua", b'return { name = "n\\27[31m\\rX" }\n'),
                          ("ctlname.lua", b'return { name = "evil\\27[31m\\rFAKE",\n'
                                          b'  score = function() return 1 end }\n')):
            policy = self.write_bytes(name, src)
            server = self.nginx(SERVER % dict(store=self.store, catalog=self.catalog,
                                              policy=policy), start=False, name="t-" + name)
            ok, out = server.test_conf()
            self.assertFalse(ok, out)
            self.assertIn("printable", out)
            self.assertNoControlBytes(out.encode(), "nginx -t")


if __name__ == "__main__":
    unittest.main()
