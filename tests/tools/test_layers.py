"""scripts/layers.py finds what it promises to find: an upward call, a call
cycle, a core file missing from the doc's layers and a listed file that does
not exist, naming the files and the symbols.

Each case is a small tree of real C files compiled with the system's cc and
a doc with a Layers table, as in docs/architecture.md. The check of the real
library against the real doc is the ctest `layers`.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NBX_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
LAYERS = os.path.join(SOURCE_DIR, "scripts", "layers.py")

DOC = """# Architecture

## Layers

| layer | files | what |
|---|---|---|
%s

## Next section

| 9 not a layer | `ignored.c` | |
"""


class LayersTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nbx-layers-")
        self.core = os.path.join(self.tmp, "core")
        os.mkdir(self.core)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def tree(self, files, rows):
        """Write and compile files {name: source}; the doc with rows."""
        objects = []
        for name, src in files.items():
            path = os.path.join(self.core, name)
            with open(path, "w") as f:
                f.write(src)
            if name.endswith(".c"):
                obj = os.path.join(self.tmp, name + ".o")
                subprocess.run(["cc", "-c", "-o", obj, path], check=True)
                objects.append(obj)
        doc = os.path.join(self.tmp, "architecture.md")
        with open(doc, "w") as f:
            f.write(DOC % "\n".join(rows))
        return doc, objects

    def check(self, doc, objects):
        return subprocess.run([sys.executable, LAYERS, "--doc", doc, "--core", self.core,
                               *objects], capture_output=True, text=True)

    def test_layers_kept(self):
        doc, objs = self.tree({"low.c": "int low(void) { return 1; }\n",
                               "high.c": "int low(void);\nint high(void) { return low(); }\n",
                               "peer.c": "int high(void);\nint peer(void) { return high(); }\n"},
                              ["| 1 base | `low.c` | |", "| 2 top | `high.c`, `peer.c` | |"])
        r = self.check(doc, objs)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("3 core files in 2 layers, 2 calls between files", r.stdout)

    def test_an_upward_call_names_the_files_layers_and_symbols(self):
        doc, objs = self.tree({"low.c": "int high(void);\nint low(void) { return high(); }\n",
                               "high.c": "int high(void) { return 2; }\n"},
                              ["| 1 base | `low.c` | |", "| 2 top | `high.c` | |"])
        r = self.check(doc, objs)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("core/low.c (layer 1 base) calls up into core/high.c (layer 2 top): high",
                      r.stdout)

    def test_a_cycle_within_a_layer(self):
        doc, objs = self.tree({"a.c": "int b(int);\nint a(int n) { return n ? b(n - 1) : 0; }\n",
                               "b.c": "int c(int);\nint b(int n) { return c(n); }\n",
                               "c.c": "int a(int);\nint c(int n) { return a(n); }\n"},
                              ["| 1 all | `a.c`, `b.c`, `c.c` | |"])
        r = self.check(doc, objs)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("call cycle: a.c -> b.c -> c.c -> a.c (a.c calls b.c: b; b.c calls c.c: c; "
                      "c.c calls a.c: a)", r.stdout)

    def test_the_doc_must_list_every_core_file_once_and_no_other(self):
        doc, objs = self.tree({"a.c": "int a(void) { return 0; }\n",
                               "new.c": "int fresh(void) { return 0; }\n",
                               "driver.lua": "return {}\n"},
                              ["| 1 base | `a.c`, `gone.c` | |", "| 2 top | `a.c` | |"])
        r = self.check(doc, objs)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("core/new.c is in no layer", r.stdout)
        self.assertIn("core/driver.lua is in no layer", r.stdout)
        self.assertIn("lists gone.c in layer 1, but core/gone.c does not exist", r.stdout)
        self.assertIn("a.c is listed in layer 1 and in layer 2", r.stdout)

    def test_a_generated_lua_object_counts_as_its_lua_file(self):
        doc, objs = self.tree({"sandbox.c": "extern const char driver_lua[];\n"
                                            "const char *text(void) { return driver_lua; }\n",
                               "driver.lua": "return {}\n"},
                              ["| 1 base | `driver.lua` | |", "| 2 top | `sandbox.c` | |"])
        gen = os.path.join(self.tmp, "driver_lua.c")
        with open(gen, "w") as f:
            f.write("const char driver_lua[] = \"return {}\";\n")
        subprocess.run(["cc", "-c", "-o", gen + ".o", gen], check=True)
        r = self.check(doc, objs + [gen + ".o"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # and the other way round, it is a call up
        doc, _ = self.tree({}, ["| 1 base | `sandbox.c` | |", "| 2 top | `driver.lua` | |"])
        r = self.check(doc, objs + [gen + ".o"])
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("core/sandbox.c (layer 1 base) calls up into core/driver.lua", r.stdout)

    def test_an_archive_is_read_member_by_member(self):
        doc, objs = self.tree({"low.c": "int high(void);\nint low(void) { return high(); }\n",
                               "high.c": "int high(void) { return 2; }\n"},
                              ["| 1 base | `low.c` | |", "| 2 top | `high.c` | |"])
        archive = os.path.join(self.tmp, "lib.a")
        subprocess.run(["ar", "rcs", archive, *objs], check=True)
        r = self.check(doc, [archive])
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("core/low.c (layer 1 base) calls up into core/high.c", r.stdout)

    def test_a_doc_without_layers_is_a_usage_error(self):
        _, objs = self.tree({"a.c": "int a(void) { return 0; }\n"}, [])
        doc = os.path.join(self.tmp, "empty.md")
        with open(doc, "w") as f:
            f.write("# Architecture\n")
        r = self.check(doc, objs)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("has no '## Layers' section", r.stderr)


if __name__ == "__main__":
    unittest.main()
