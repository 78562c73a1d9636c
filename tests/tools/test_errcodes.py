"""scripts/errcodes.py finds what it promises to find: a documented code no
test produces, a code a function returns that its documentation leaves out,
and neither when tests and documentation agree (also through a test helper,
an assertion on a variable, a code only compared with, and "as nbx_g()").

Each case is a small tree: a header with doc comments as in include/nbx.h,
core/*.c and tests/test_*.c. The check of the real library is the ctest
`errcodes`.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NBX_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
ERRCODES = os.path.join(SOURCE_DIR, "scripts", "errcodes.py")

HEADER = """
/**
 * @brief Get.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND.
 */
NBX_API int nbx_get(const char *id);

/** Flags, with no function after them. */
enum nbx_flags { NBX_F = 1 };

/**
 * @brief Delete.
 * @return as nbx_get(), and NBX_EFULL.
 */
NBX_API int nbx_delete(const char *id);
"""

CORE = """
static int lookup(const char *id)
{
    if (!*id)
        return NBX_ENOTFOUND;
    return NBX_OK;
}

int nbx_get(const char *id)
{
    if (!id)
        return NBX_EINVAL;
    return lookup(id);
}

int nbx_delete(const char *id)
{
    int rc = lookup(id);
    if (rc == NBX_ENOTFOUND)
        return NBX_OK;
    return id ? NBX_EFULL : NBX_EINVAL;
}
"""

TESTS = """
static int get_twice(const char *id)
{
    nbx_get(id);
    return nbx_get(id);
}

Test(x, codes)
{
    cr_assert_eq(nbx_get(NULL), NBX_EINVAL);
    int rc = get_twice("");
    cr_assert_eq(rc, NBX_ENOTFOUND);
    cr_assert_eq(nbx_delete(NULL), NBX_EINVAL);
    cr_assert_eq(nbx_delete(""), NBX_ENOTFOUND);
    rc = nbx_delete("x");
    cr_assert_eq(rc,
                 NBX_EFULL);
}
"""


class ErrcodesTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nbx-errcodes-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def run_check(self, header=HEADER, core=CORE, tests=TESTS):
        for rel, text in (("nbx.h", header), ("core/a.c", core), ("tests/test_a.c", tests)):
            path = os.path.join(self.tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        return subprocess.run([sys.executable, ERRCODES, "--header",
                               os.path.join(self.tmp, "nbx.h"), "--core",
                               os.path.join(self.tmp, "core"), "--tests",
                               os.path.join(self.tmp, "tests")],
                              capture_output=True, text=True)

    def test_agreement_passes(self):
        out = self.run_check()
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("2 functions", out.stdout)

    def test_a_documented_code_no_test_produces(self):
        out = self.run_check(tests=TESTS.replace("cr_assert_eq(nbx_get(NULL), NBX_EINVAL);", ""))
        self.assertEqual(out.returncode, 1)
        self.assertIn("nbx_get: NBX_EINVAL is documented but no test", out.stderr)
        self.assertNotIn("nbx_delete: NBX_EINVAL", out.stderr)

    def test_an_assertion_on_a_variable_of_another_call_does_not_count(self):
        out = self.run_check(tests=TESTS.replace("rc = nbx_delete(\"x\");",
                                                 "rc = nbx_get(\"x\");"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("nbx_delete: NBX_EFULL is documented but no test", out.stderr)

    def test_an_undocumented_code_a_static_helper_returns(self):
        core = CORE.replace("return NBX_ENOTFOUND;", "return NBX_ECORRUPT;")
        out = self.run_check(core=core)
        self.assertEqual(out.returncode, 1)
        self.assertIn("nbx_get: can return NBX_ECORRUPT", out.stderr)
        self.assertIn("nbx_delete: can return NBX_ECORRUPT", out.stderr)

    def test_a_code_only_compared_with_is_handled(self):
        header = HEADER.replace("@return as nbx_get(), and NBX_EFULL.",
                                "@return NBX_OK, NBX_EINVAL, NBX_EFULL.")
        tests = TESTS.replace("cr_assert_eq(nbx_delete(\"\"), NBX_ENOTFOUND);", "")
        out = self.run_check(header=header, tests=tests)
        self.assertEqual(out.returncode, 0, out.stderr)


if __name__ == "__main__":
    unittest.main()
