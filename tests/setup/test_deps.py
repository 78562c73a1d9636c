"""scripts/deps.sh decides which Debian packages to ask for and never lets
apt-get remove one.

The script runs for real, with fake `dpkg-query`, `apt-get` and `id` first on
PATH: dpkg-query answers from a list of installed packages, apt-get records
every call and answers simulations (-s) with a given plan, id says who runs
it. Nothing is installed or removed on this machine. One test asks the real
apt-get for a simulation (harmless: -s changes nothing) as a non-root user.
"""

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NBX_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
DEPS = os.path.join(SOURCE_DIR, "scripts", "deps.sh")

# Everything `deps.sh test` asks for, apart from LuaJIT.
TEST_PACKAGES = ("gcc make cmake pkg-config liblmdb-dev libmsgpack-dev libxxhash-dev "
                 "libjansson-dev libcriterion-dev nginx nginx-dev python3 python3-pytest "
                 "curl lmdb-utils python3-distributed clang libclang-rt-dev").split()

FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f='${Status}' PACKAGE, answered from $FAKE_INSTALLED
for last; do :; done
if grep -qx "$last" "$FAKE_INSTALLED"; then
    printf 'install ok installed'
    exit 0
fi
echo "dpkg-query: no packages found matching $last" >&2
exit 1
"""

FAKE_APT_GET = """#!/bin/sh
# records its arguments; answers -s from $FAKE_PLAN, fails it while
# $FAKE_UNKNOWN exists (no package lists yet: `update` removes it)
echo "$*" >> "$FAKE_CALLS"
case " $* " in
*" update "*) rm -f "$FAKE_UNKNOWN"; exit 0 ;;
*" -s "*)
    if [ -e "$FAKE_UNKNOWN" ]; then
        echo "E: Unable to locate package libluajit-5.1-dev"; exit 100
    fi
    cat "$FAKE_PLAN"; exit 0 ;;
esac
exit 0
"""

FAKE_ID = """#!/bin/sh
echo "$FAKE_UID"
"""

PLAN_REMOVING = """\
The following packages will be REMOVED:
  libluajit2-5.1-2 libnginx-mod-http-lua lua-resty-core
Remv libnginx-mod-http-lua [1:0.10.23-1]
Remv lua-resty-core [0.1.24-1]
Remv libluajit2-5.1-2 [2.1-20230119-1]
Inst libluajit-5.1-2 (2.1.0~beta3+git20220320+dfsg-4.1 Debian:12.11/stable [amd64])
Inst libluajit-5.1-dev (2.1.0~beta3+git20220320+dfsg-4.1 Debian:12.11/stable [amd64])
"""

PLAN_CLEAN = """\
Inst libluajit2-5.1-dev (2.1-20230119-1 Debian:12.11/stable [amd64])
Conf libluajit2-5.1-dev (2.1-20230119-1 Debian:12.11/stable [amd64])
"""


class DepsTest(unittest.TestCase):

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        # The fakes only work if deps.sh finds its tools on PATH: a path
        # to the real apt-get in the script would install for real.
        with open(DEPS) as f:
            text = f.read()
        found = re.findall(r"/(?:usr/)?s?bin/(?:apt-get|dpkg-query|id)\b", text)
        if found:
            raise AssertionError("deps.sh calls %s by path: it must use PATH" % found)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nbx-deps-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.bin = os.path.join(self.tmp, "bin")
        os.mkdir(self.bin)
        for name, text in (("dpkg-query", FAKE_DPKG_QUERY), ("apt-get", FAKE_APT_GET),
                           ("id", FAKE_ID)):
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
        self.calls = os.path.join(self.tmp, "calls")
        open(self.calls, "w").close()

    def run_deps(self, installed, plan=PLAN_CLEAN, uid=0, what="test", lists=True,
                 real_apt=False):
        """Run deps.sh WHAT on a machine with `installed` packages; returns
        (CompletedProcess, [apt-get argument lists])."""
        inst = os.path.join(self.tmp, "installed")
        with open(inst, "w") as f:
            f.write("".join(p + "\n" for p in installed))
        plan_file = os.path.join(self.tmp, "plan")
        with open(plan_file, "w") as f:
            f.write(plan)
        unknown = os.path.join(self.tmp, "no-lists")
        if not lists:
            open(unknown, "w").close()
        env = dict(os.environ, FAKE_INSTALLED=inst, FAKE_PLAN=plan_file,
                   FAKE_CALLS=self.calls, FAKE_UNKNOWN=unknown, FAKE_UID=str(uid),
                   LC_ALL="C")
        if real_apt:
            os.remove(os.path.join(self.bin, "apt-get"))
        env["PATH"] = self.bin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
        p = subprocess.run(["sh", DEPS, what], capture_output=True, text=True, env=env,
                           timeout=120)
        with open(self.calls) as f:
            calls = [shlex.split(line) for line in f]
        return p, calls

    def installs(self, calls):
        """apt-get calls that would change the machine."""
        return [c for c in calls if "install" in c and "-s" not in c]

    def assertNeverRemoves(self, calls):
        for c in self.installs(calls):
            self.assertIn("--no-remove", c, "an install without --no-remove: %s" % c)
            self.assertNotIn("remove", c)
            self.assertNotIn("purge", c)

    def test_openresty_luajit_installed_asks_for_its_dev_package(self):
        p, calls = self.run_deps(["libluajit2-5.1-2", "libluajit2-5.1-common"] + TEST_PACKAGES)
        self.assertEqual(p.returncode, 0, p.stderr)
        wanted = [a for c in calls for a in c if "luajit" in a]
        self.assertTrue(wanted, "apt-get was never asked for a LuaJIT package: %s" % calls)
        self.assertEqual(set(wanted), {"libluajit2-5.1-dev"}, calls)
        self.assertEqual(len(self.installs(calls)), 1, calls)
        self.assertNeverRemoves(calls)
        # simulated before it installs
        self.assertIn("-s", calls[0])

    def test_openresty_luajit_dev_installed_needs_nothing(self):
        p, calls = self.run_deps(["libluajit2-5.1-2", "libluajit2-5.1-dev"] + TEST_PACKAGES)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(calls, [], "apt-get called with everything installed")

    def test_no_luajit_asks_for_the_upstream_package(self):
        plan = PLAN_CLEAN.replace("libluajit2-5.1-dev", "libluajit-5.1-dev")
        p, calls = self.run_deps(TEST_PACKAGES, plan=plan)
        self.assertEqual(p.returncode, 0, p.stderr)
        wanted = {a for c in calls for a in c if "luajit" in a}
        self.assertEqual(wanted, {"libluajit-5.1-dev"}, calls)
        self.assertNeverRemoves(calls)

    def test_upstream_luajit_installed_is_kept(self):
        p, calls = self.run_deps(["libluajit-5.1-2", "libluajit-5.1-dev"] + TEST_PACKAGES)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(calls, [])

    def test_a_plan_that_removes_packages_is_refused(self):
        p, calls = self.run_deps(TEST_PACKAGES, plan=PLAN_REMOVING)
        self.assertNotEqual(p.returncode, 0, "a removing plan was accepted:\n" + p.stderr)
        self.assertEqual(self.installs(calls), [], "installed despite removals: %s" % calls)
        for name in ("libluajit2-5.1-2", "libnginx-mod-http-lua", "lua-resty-core"):
            self.assertIn(name, p.stderr, "the refusal does not name %s" % name)
        # and why: what the install would have brought in
        self.assertIn("libluajit-5.1-dev", p.stderr)
        self.assertIn("refusing", p.stderr)
        self.assertIn("nothing was installed or removed", p.stderr)

    def test_without_package_lists_updates_once_then_installs(self):
        p, calls = self.run_deps(["libluajit2-5.1-2"] + TEST_PACKAGES, lists=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual([c for c in calls if "update" in c], [["update"]], calls)
        self.assertEqual(len(self.installs(calls)), 1, calls)
        self.assertNeverRemoves(calls)

    def test_not_root_says_the_command_and_installs_nothing(self):
        missing = "python3-distributed"
        p, calls = self.run_deps(["libluajit2-5.1-2"] + [t for t in TEST_PACKAGES if t != missing],
                                 uid=1000)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.installs(calls), [], calls)
        self.assertIn("--no-remove", p.stderr)
        self.assertIn("libluajit2-5.1-dev", p.stderr)
        self.assertIn(missing, p.stderr)
        self.assertNotIn("libluajit-5.1-dev", p.stderr)

    def test_real_apt_simulation_of_the_other_luajit_is_refused(self):
        """The real resolver on this machine: pretend the other LuaJIT's
        library is installed, so deps.sh asks for the dev package matching
        it, which conflicts with the LuaJIT really installed here. Run as a
        pretended non-root user: deps.sh can then only simulate."""
        real = shutil.which("apt-get")
        if real is None:
            self.skipTest("no apt-get on this machine")
        here = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "libluajit2-5.1-dev"],
                              capture_output=True, text=True)
        # the library that makes deps.sh ask for the dev package not installed
        if "install ok installed" in here.stdout:
            other, library = "libluajit-5.1-dev", "libluajit-5.1-2"
        else:
            other, library = "libluajit2-5.1-dev", "libluajit2-5.1-2"
        probe = subprocess.run([real, "-s", "install", "--no-install-recommends", other],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode != 0 or "Remv " not in probe.stdout:
            self.skipTest("apt-get cannot simulate installing %s here (no package lists, "
                          "or no conflicting LuaJIT installed): %s"
                          % (other, probe.stdout[-300:] + probe.stderr[-300:]))
        pretend = TEST_PACKAGES + [library]
        p, _ = self.run_deps(pretend, uid=1000, real_apt=True)
        self.assertNotEqual(p.returncode, 0, p.stderr)
        self.assertIn("refusing", p.stderr)
        self.assertRegex(p.stderr, r"would remove packages this machine has: .*luajit")


if __name__ == "__main__":
    unittest.main()
