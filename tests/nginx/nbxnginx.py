"""Helpers for the nginx module tests: a real nginx on 127.0.0.1 with a
temporary prefix, configuration and store, driven with urllib.

Stdlib only (Debian's /usr/bin/python3). Environment, as ctest sets it:
NBX_SOURCE_DIR, NBX_BINARY_DIR, NBX_BIN (the nbx CLI).
"""

import datetime
import json
import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NBX_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BINARY_DIR = os.environ.get("NBX_BINARY_DIR", os.path.join(SOURCE_DIR, "build"))
NBX_BIN = os.environ.get("NBX_BIN", os.path.join(BINARY_DIR, "nbx"))
MODULE = os.path.join(BINARY_DIR, "bindings", "nginx", "ngx_http_nbx_module.so")
NGINX_DEV = "/usr/share/nginx/src/configure"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def require_module():
    """Skip only when nginx-dev is truly absent; a missing module is a failure."""
    if not os.path.exists(NGINX_DEV) or not os.path.exists(NGINX):
        raise unittest.SkipTest(
            "nginx or nginx-dev is not installed (apt-get install nginx nginx-dev): "
            "the nbx nginx module cannot be built or tested")
    if not os.path.exists(MODULE):
        raise AssertionError(
            "nginx-dev is installed but the module was not built: expected %s "
            "(cmake --build %s)" % (MODULE, BINARY_DIR))
    if not os.access(NBX_BIN, os.X_OK):
        raise AssertionError("the nbx CLI is missing: expected %s" % NBX_BIN)


def free_port():
    """A port the kernel just handed out for 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------

def demo_catalog(now=None):
    """The demo catalog, with validity windows around now so the tests do not
    expire."""
    now = now or time.time()
    valid = {"valid_from": iso(now - 30 * 86400), "valid_to": iso(now + 365 * 86400)}
    offer = dict(kind="offer", serving_cost=0.01, purpose="personalization", **valid)
    return {
        "placements": [{"id": "hero", "slots": 1}, {"id": "recs", "slots": 3}],
        "offers": [
            dict(offer, id="free_shipping", placements=["hero"], price=49.0,
                 unit_cost=30.0, discount=4.9, category="shipping",
                 base_propensity=0.03,
                 caps={"impressions": {"max": 3, "window_days": 7},
                       "dismiss_cooldown_days": 14,
                       "accepts": {"max": 1, "window_days": 30}},
                 budget={"daily_impressions": 100000, "daily_accepts": 500}),
            dict(offer, id="ten_off", placements=["hero", "recs"], price=80.0,
                 unit_cost=50.0, discount=8.0, category="discount",
                 base_propensity=0.02),
            dict(offer, id="socks", placements=["recs"], price=12.0, unit_cost=5.0,
                 category="apparel", base_propensity=0.05),
            dict(offer, id="gift_card", placements=["recs"], price=25.0,
                 unit_cost=24.0, category="gift", base_propensity=0.01),
            dict(offer, id="brand_banner", kind="module", placements=["hero"],
                 price=0.0, unit_cost=0.0, purpose="none", base_propensity=0.0),
            dict(offer, id="bestsellers", kind="module", placements=["recs"],
                 price=0.0, unit_cost=0.0, purpose="none", base_propensity=0.0),
        ],
        "guardrails": {"max_discount_pct": 30, "min_margin": 0.0,
                       "max_contacts": {"max": 50, "window_days": 7}},
        "fallback": {"hero": ["brand_banner"], "recs": ["bestsellers"]},
    }


def profile(cid, **propensity):
    return {"id": cid, "attrs": {"country": "DE"},
            "consent": {"personalization": True},
            "propensity": propensity or {"free_shipping": 0.4, "ten_off": 0.1}}


def impression(event_id, customer, offer, placement, t=None):
    return {"event_id": event_id, "customer": customer, "type": "impression",
            "offer": offer, "placement": placement, "ts": iso(t or time.time())}


SIMPLE_POLICY = """\
-- a policy for the tests: rank by propensity times margin
return {
  name = "%(name)s",
  score = function(...)
    return %(score)s
  end,
}
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def write_json(path, obj):
    return write(path, json.dumps(obj, indent=1))


def write_jsonl(path, rows):
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def shipped_policy():
    return os.path.join(SOURCE_DIR, "policies", "margin_per_session.lua")


def nbx(*args, check=True):
    """Run the nbx CLI."""
    p = subprocess.run([NBX_BIN] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError("nbx %s failed (%d): %s" % (" ".join(args), p.returncode,
                                                          p.stderr.strip()))
    return p


def make_store(directory, profiles):
    """A store holding profiles, created with `nbx import profiles`."""
    src = write_jsonl(os.path.join(os.path.dirname(directory),
                                   os.path.basename(directory) + "-profiles.jsonl"),
                      profiles)
    nbx("import", "profiles", src, "--store", directory)
    return directory


def give_to_workers(*paths):
    """nginx started as root runs its workers as nobody: they need the store
    (read and write: LMDB's lock file, exposure counters) and the temp tree."""
    if os.geteuid() != 0:
        return
    uid = pwd.getpwnam("nobody").pw_uid
    gid = grp.getgrnam("nogroup").gr_gid
    for top in paths:
        os.chown(top, uid, gid)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid)


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError("expected a JSON body, got %r (status %d)"
                                 % (self.body[:300], self.status))

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:300])


def request(url, data=None, method=None, headers=None, timeout=10):
    if isinstance(data, (dict, list)):
        data = json.dumps(data).encode()
    elif isinstance(data, str):
        data = data.encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        e.close()
        return Response(e.code, e.headers, body)


# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------

CONF_TEMPLATE = """\
load_module %(module)s;
%(user)s
worker_processes %(workers)d;
daemon off;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/error.log %(log_level)s;
events { worker_connections 1024; }
http {
    access_log %(prefix)s/access.log;
    client_body_temp_path %(prefix)s/tmp/body;
    proxy_temp_path %(prefix)s/tmp/proxy;
    fastcgi_temp_path %(prefix)s/tmp/fastcgi;
    uwsgi_temp_path %(prefix)s/tmp/uwsgi;
    scgi_temp_path %(prefix)s/tmp/scgi;
%(http)s
}
"""


class Nginx:
    """One nginx master (daemon off, our child) with its own prefix."""

    def __init__(self, prefix, http, workers=2, log_level="info"):
        self.prefix = prefix
        os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
        self.conf = os.path.join(prefix, "nginx.conf")
        self.workers = workers
        self.log_level = log_level
        self.proc = None
        self.write_conf(http)

    def write_conf(self, http):
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        write(self.conf, CONF_TEMPLATE % dict(
            module=MODULE, user=user, workers=self.workers, prefix=self.prefix,
            log_level=self.log_level, http=http))

    def cmd(self, *args):
        return [NGINX, "-p", self.prefix, "-c", self.conf] + list(args)

    def test_conf(self):
        """`nginx -t`: (ok, output). Decoded without text mode, which would
        turn a raw CR into a line break: tests look for control bytes."""
        p = subprocess.run(self.cmd("-t"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        return p.returncode == 0, p.stdout.decode("utf-8", "replace")

    def start(self, port, timeout=30):
        self.port = port
        with open(os.path.join(self.prefix, "stderr.log"), "w") as err:
            self.proc = subprocess.Popen(self.cmd(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited with %d at start:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            if len(self.worker_pids()) == self.workers and self.accepts():
                return self
            time.sleep(0.05)
        raise AssertionError("nginx did not start on port %d:\n%s" % (port, self.log_tail()))

    def accepts(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def worker_pids(self):
        """Pids of the master's live worker processes."""
        if self.proc is None:
            return set()
        pids = set()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            # stat: pid (comm) state ppid ...
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == self.proc.pid and fields[0] != "Z" \
                    and b"worker process" in cmdline and b"shutting down" not in cmdline:
                pids.add(int(d))
        return pids

    def reload(self, timeout=30):
        """`nginx -s reload`; waits until a whole new set of workers serves.
        Returns the new worker pids."""
        old = self.worker_pids()
        subprocess.run(self.cmd("-s", "reload"), check=True, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            pids = self.worker_pids()
            if len(pids) == self.workers and not (pids & old):
                return pids
            time.sleep(0.05)
        raise AssertionError("reload did not replace the workers:\n%s" % self.log_tail())

    def reload_expect_failure(self, marker, timeout=30):
        """Reload that the master must refuse: waits for `marker` in the
        error log; the workers must stay the same."""
        old = self.worker_pids()
        size = self.log_size()
        subprocess.run(self.cmd("-s", "reload"), check=True, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if marker in self.log_since(size):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no %r in the error log after a bad reload:\n%s"
                                 % (marker, self.log_since(size)))
        time.sleep(0.3)
        return old, self.worker_pids(), self.log_since(size)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def log_size(self):
        try:
            return os.path.getsize(os.path.join(self.prefix, "error.log"))
        except OSError:
            return 0

    def log_since(self, offset=0):
        try:
            with open(os.path.join(self.prefix, "error.log"), "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        text = self.log_since(0)
        try:
            with open(os.path.join(self.prefix, "stderr.log")) as f:
                text += f.read()
        except OSError:
            pass
        return "\n".join(text.splitlines()[-n:])

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in workers:  # orphans of a killed master
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class NginxTestCase(unittest.TestCase):
    """Per-test temp directory; every nginx started is stopped even on
    failure; the error log is printed when a test fails."""

    keep = bool(os.environ.get("NBX_KEEP_TMP"))

    @classmethod
    def setUpClass(cls):
        require_module()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nbx-nginx-")
        # workers (nobody) traverse it to reach the store, catalog and policy
        os.chmod(self.tmp, 0o755)
        self.servers = []
        self._problems = self._problem_count()
        self.addCleanup(self._cleanup)

    def _problem_count(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return -1
        return len(result.failures) + len(result.errors)

    def _cleanup(self):
        for s in self.servers:
            s.stop()
        count = self._problem_count()
        if count < 0 or count > self._problems:
            for s in self.servers:
                print("\n--- %s/error.log (tail) ---\n%s" % (s.prefix, s.log_tail()))
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def nginx(self, http, name="nginx", workers=2, start=True, port=None, **kw):
        port = port or free_port()
        n = Nginx(self.path(name), http % dict(port=port), workers=workers, **kw)
        n.port = port
        self.servers.append(n)
        if start:
            n.start(port)
        return n

    def assertStatus(self, response, status, what=""):
        self.assertEqual(response.status, status, "%s: expected HTTP %d, got %r"
                         % (what, status, response))
