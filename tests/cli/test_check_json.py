"""nbx policy check --json and nbx catalog check --json: the output is JSON
whatever bytes the file's path and the policy's name hold (quotes,
backslashes, control characters, bytes that are not UTF-8)."""
import json
import os
import shutil
import subprocess
import unittest

from cliutil import CATALOG, NBX, CliTestCase

# A quote, a backslash, a tab, an e with an acute accent and a byte that is
# not UTF-8: each must come out escaped, kept or replaced, never raw.
ODD_NAME = b'odd "name" \\ \t \xc3\xa9 \xff'


class CheckJson(CliTestCase):

    def check_json(self, *args):
        r = subprocess.run([NBX, *args], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"nbx {args}: exit {r.returncode}: {r.stderr!r}")
        try:
            return json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"nbx {args} --json printed invalid JSON ({e}): "
                                 f"{r.stdout!r}") from None

    def odd_path(self, suffix):
        return os.path.join(os.fsencode(self.tmp), ODD_NAME + suffix)

    def test_01_policy_check(self):
        path = self.odd_path(b".lua")
        # the name: a quote, a backslash and an e-acute (control bytes and
        # invalid UTF-8 are refused in names: test_01b)
        with open(path, "wb") as f:
            f.write(b'return { name = "p\\"q\\\\r\\195\\169",\n'
                    b'         score = function() return 1 end }\n')
        got = self.check_json("policy", "check", "--json", path)
        self.assertEqual(got["file"],
                         os.path.join(self.tmp, 'odd "name" \\ \t \u00e9 \ufffd.lua'))
        self.assertEqual(got["name"], 'p"q\\r\u00e9')
        self.assertRegex(got["version"], r"^[0-9a-f]{16}$")

    def test_01b_policy_names_must_be_printable_text(self):
        # a newline, an ESC, a control byte, a surrogate encoded in UTF-8
        for name in (b"a\\nb", b"\\27[31mred", b"s\\1t", b"x\\237\\160\\128"):
            path = os.path.join(self.tmp, "n.lua")
            with open(path, "wb") as f:
                f.write(b'return { name = "' + name + b'", score = function() return 1 end }\n')
            r = subprocess.run([NBX, "policy", "check", "--json", path], capture_output=True)
            self.assertEqual(r.returncode, 1, r)
            self.assertIn(b"printable", r.stderr)
            self.assertNotIn(b"\x1b", r.stderr, "the terminal gets no escape sequence")

    def test_02_catalog_check(self):
        path = self.odd_path(b".json")
        shutil.copyfile(CATALOG, path)
        got = self.check_json("catalog", "check", "--json", path)
        self.assertEqual(got["file"],
                         os.path.join(self.tmp, 'odd "name" \\ \t \u00e9 \ufffd.json'))
        self.assertRegex(got["version"], r"^[0-9a-f]{16}$")
        self.assertGreater(got["offers"], 0)


if __name__ == "__main__":
    unittest.main()
