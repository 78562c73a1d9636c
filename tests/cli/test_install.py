"""cmake --install into a prefix: everything lands inside it, the installed
nbx runs without help, and a program builds against nbx.pc from there."""

import os
import subprocess
import tempfile
import unittest

BUILD = os.environ.get("NBX_BINARY_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build")

PROGRAM = r"""
#include <nbx.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    /* a real call into the installed library */
    const char *s = nbx_strerror(NBX_ENOTFOUND);
    printf("%s\n", s);
    return strlen(s) > 0 ? 0 : 1;
}
"""


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (cmd, p.returncode, p.stdout, p.stderr))
    return p.stdout


class InstallTest(unittest.TestCase):

    def test_install_into_a_prefix(self):
        with tempfile.TemporaryDirectory(prefix="nbx-install-") as tmp:
            prefix = os.path.join(tmp, "opt", "nbx")
            run(["cmake", "--install", BUILD, "--prefix", prefix])
            with open(os.path.join(BUILD, "install_manifest.txt")) as f:
                installed = f.read().split()
            self.assertTrue(installed)
            outside = [p for p in installed if not p.startswith(prefix + "/")]
            self.assertEqual(outside, [], "installed outside the prefix")
            for rel in ("bin/nbx", "include/nbx.h", "share/nbx/policies/margin_per_session.lua"):
                self.assertTrue(os.path.exists(os.path.join(prefix, rel)), rel)
            libdirs = [p for p in installed if p.endswith("/libnbx.so.0")]
            self.assertEqual(len(libdirs), 1, installed)
            pcs = [p for p in installed if p.endswith("/nbx.pc")]
            self.assertEqual(len(pcs), 1, installed)

            # the installed nbx finds the installed library by itself
            env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
            out = run([os.path.join(prefix, "bin", "nbx"), "--version"], env=env)
            self.assertIn("nbx", out)
            ldd = run(["ldd", os.path.join(prefix, "bin", "nbx")], env=env)
            line = [l for l in ldd.splitlines() if "libnbx.so.0" in l][0]
            self.assertEqual(os.path.realpath(line.split("=>")[1].split()[0]),
                             os.path.realpath(libdirs[0]), ldd)

            # a program builds and runs against nbx.pc from the prefix
            env["PKG_CONFIG_PATH"] = os.path.dirname(pcs[0])
            flags = run(["pkg-config", "--cflags", "--libs", "nbx"], env=env).split()
            src = os.path.join(tmp, "t.c")
            with open(src, "w") as f:
                f.write(PROGRAM)
            exe = os.path.join(tmp, "t")
            run(["cc", "-std=c11", src, "-o", exe] + flags, env=env)
            env["LD_LIBRARY_PATH"] = os.path.dirname(libdirs[0])
            self.assertIn("not found", run([exe], env=env))

            # the nginx module, when built, goes inside the prefix too
            module = os.path.join(BUILD, "bindings", "nginx", "ngx_http_nbx_module.so")
            if os.path.exists(module):
                so = os.path.join(prefix, "lib", "nginx", "modules", "ngx_http_nbx_module.so")
                self.assertTrue(os.path.exists(so))
                with open(os.path.join(prefix, "share", "nginx", "modules-available",
                                       "mod-http-nbx.conf")) as f:
                    self.assertEqual(f.read(), "load_module %s;\n" % so)


if __name__ == "__main__":
    unittest.main()
