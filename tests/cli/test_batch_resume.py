"""`nbx batch --checkpoint` killed at many points and resumed (issue 10,
section 6): the real binary on a real store of generated profiles. Run by
ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_batch_resume`.

The reported failure: after `kill -9` in the middle of
`nbx batch --all --threads 2 --out F --checkpoint S`, the resumed run
completed the output but exited 1 with "renaming S.tmp: No such file or
directory" in 3 of 6 tries. The kill had hit a shell wrapper, whose nbx
lived on: two runs wrote one checkpoint. Here every kill point must give
exit 0 and every customer exactly once, whether the kill reaches nbx itself
or only its wrapper.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from cliutil import NBX, POLICY, CliTestCase, generated_store

AS_OF = "2026-03-01T12:00:00Z"
PROFILES = 20000
# Kill points, as fractions of a full run's duration (measured first, so a
# slower machine gets later kills, not only early ones).
FRACTIONS = (0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.1)

_shared = {}


def setUpModule():
    tmp = tempfile.mkdtemp(prefix="nbx-resume-")
    _shared["tmp"] = tmp
    store, catalog = generated_store(tmp, PROFILES)
    env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
    export = subprocess.run([NBX, "export", "profiles", "--store", store], capture_output=True,
                            text=True, env=env, timeout=600, check=True)
    ids = [json.loads(line)["id"] for line in export.stdout.splitlines()]
    _shared.update(store=store, catalog=catalog, ids=ids, env=env)


def tearDownModule():
    shutil.rmtree(_shared["tmp"], True)


class KillsAnywhere(CliTestCase):

    def setUp(self):
        super().setUp()
        self.out = self.path("out.jsonl")
        self.ckpt = self.path("run.ckpt")

    def command(self):
        return [NBX, "batch", "--store", _shared["store"], "--catalog", _shared["catalog"],
                "--policy", POLICY, "--as-of", AS_OF, "--all", "--threads", "2",
                "--out", self.out, "--checkpoint", self.ckpt, "--checkpoint-every", "1000"]

    def clean(self):
        for f in (self.out, self.ckpt, self.ckpt + ".tmp", self.ckpt + ".lock"):
            if os.path.exists(f):
                os.unlink(f)

    def full_run_seconds(self):
        if "seconds" not in _shared:
            self.clean()
            started = time.monotonic()
            r = subprocess.run(self.command(), capture_output=True, text=True,
                               env=_shared["env"], timeout=600)
            _shared["seconds"] = time.monotonic() - started
            self.assertEqual(r.returncode, 0, r.stderr)
        return _shared["seconds"]

    def resume_and_check(self, what):
        r = subprocess.run(self.command(), capture_output=True, text=True, env=_shared["env"],
                           timeout=600)
        self.assertEqual(r.returncode, 0, f"{what}: the resume exited {r.returncode}\n"
                                          f"{r.stderr[-2000:]}")
        with open(self.out, encoding="utf-8") as f:
            got = [json.loads(line)["customer"] for line in f]
        self.assertEqual(len(got), len(_shared["ids"]), what)
        self.assertEqual(got, _shared["ids"], f"{what}: every customer exactly once, in order")
        self.assertFalse(os.path.exists(self.ckpt + ".lock"), f"{what}: the lock file outlives "
                                                              "the run")
        return r

    def test_01_kill_9_of_nbx_at_many_points(self):
        seconds = self.full_run_seconds()
        for fraction in FRACTIONS:
            self.clean()
            proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=_shared["env"])
            time.sleep(fraction * seconds)
            proc.kill()
            proc.wait(timeout=60)
            self.resume_and_check(f"killed after {fraction:.2f} of a run")

    def test_02_kill_9_of_a_wrapper_while_its_nbx_lives_on(self):
        # The shell waits for nbx instead of exec'ing it (a command follows),
        # as job runners' wrappers do: killing the shell leaves nbx running,
        # and the resume starts while it still works on the same checkpoint.
        seconds = self.full_run_seconds()
        script = " ".join(map(shlex.quote, self.command())) + " 2>/dev/null; true"
        waited = 0
        for fraction in FRACTIONS:
            self.clean()
            shell = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.DEVNULL,
                                     env=_shared["env"], start_new_session=True)
            try:
                time.sleep(fraction * seconds)
                shell.kill()
                shell.wait(timeout=60)
                r = self.resume_and_check(f"wrapper killed after {fraction:.2f} of a run")
                waited += "waiting for it to stop" in r.stderr
            finally:
                self.reap(shell.pid)
        # Most kills leave the first run going; at least one must have been
        # waited for, or this test did not test the race.
        self.assertGreater(waited, 0, "no resume ever met the first run still going")

    def reap(self, group):
        """End what is left of the killed wrapper's process group (by then an
        nbx that has not started yet, or nothing: the resume held the lock,
        so the first run had stopped) before the next kill point's files
        are removed. Orphans are reaped by init, which a container may do
        late: a zombie does not count."""
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.alive_in_group(group):
            time.sleep(0.02)

    @staticmethod
    def alive_in_group(group):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                return True
        return False


if __name__ == "__main__":
    unittest.main()
