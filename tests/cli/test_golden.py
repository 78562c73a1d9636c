"""Golden decisions: a decision is bit-for-bit the same in every process, on
every machine and with either LuaJIT package (issue 10, section 3).

The real nbx builds a store from tests/data/golden (profiles, events, an
RFM rebuild at a fixed time) and decides for the customers of
customers.jsonl with --as-of fixed, under three policies: determinism.lua
(a probe that builds its score from pairs orders, tostring of tables and
functions, libm's functions and number formatting), the shipped
retention.lua and margin_per_session.lua (the built-in scorer). The
output, with every decision_id replaced by a placeholder, must equal
tests/data/golden/expected.txt byte for byte. The file is checked in, so
the comparison is with another machine (where it was written) and, under
`make test-luajit2` / `make test-luajit-upstream`, with the other LuaJIT
package. Between CPUs with and without FMA, glibc's exp, sin, cos, pow...
differ in the last bit for a few inputs; policies get nbx's own functions
(core/detmath.c), and the batch is run again with glibc told to take its
code for a CPU without AVX2 and FMA (GLIBC_TUNABLES), which must print the
same lines.

What is normalised: decision_id only (a UUIDv7: the wall clock and random
bits, different in every run by design). Everything else nbx prints is
compared as printed: scores and margins in nbx's fixed point (9 decimals),
the policy and catalog versions (hashes of the files' bytes), as_of, and the
probe's nbx.log lines, which give its values in hex (%a).

Also checked, without the file: a batch on two threads (each decision on
whichever Lua state is free, so JIT-compiled or interpreted) and each
customer decided alone by `nbx decide` (a fresh process) print the same
lines as the batch on one thread.

When a change to nbx changes decisions on purpose, write the file again
and review its diff:

    python3 tests/cli/test_golden.py --regenerate           # refuses to replace a different file
    python3 tests/cli/test_golden.py --regenerate --force   # replaces it, after showing the diff

(NBX_BIN or NBX_BINARY_DIR name the nbx to run, as for the other CLI tests.)
"""
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

from cliutil import NBX, SOURCE_DIR, CliTestCase

GOLDEN_DIR = os.path.join(SOURCE_DIR, "tests", "data", "golden")
EXPECTED = os.path.join(GOLDEN_DIR, "expected.txt")
CATALOG = os.path.join(GOLDEN_DIR, "catalog.json")
CUSTOMERS = os.path.join(GOLDEN_DIR, "customers.jsonl")
AS_OF = "2026-03-03T12:00:00Z"
POLICIES = [
    os.path.join(GOLDEN_DIR, "determinism.lua"),
    os.path.join(SOURCE_DIR, "policies", "retention.lua"),
    os.path.join(SOURCE_DIR, "policies", "margin_per_session.lua"),
]
# A timeout would make the file depend on the machine's speed: the probe
# gets room (and the test fails if any decision falls back).
TIME_LIMIT_US = "200000"
DECISION_ID = re.compile(r'"decision_id":"[^"]*"')


# glibc's libm as on a CPU without AVX2, FMA and AVX-512 (its ifuncs pick
# other code for exp, pow, sin...), whatever this machine has.
NO_FMA_ENV = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"}


def run_nbx(*args, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
    env.update(extra_env or {})
    r = subprocess.run([NBX, *args], capture_output=True, env=env, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"nbx {' '.join(args)}: exit {r.returncode}\n"
                             f"{r.stderr.decode(errors='replace')[:2000]}")
    return r.stdout.decode("utf-8")


def normalise(output):
    """nbx's output lines with decision_id replaced, as the file holds them."""
    lines = output.splitlines()
    for line in lines:
        if len(DECISION_ID.findall(line)) != 1:
            raise AssertionError(f"not one decision_id in a decision line: {line[:300]}")
    return [DECISION_ID.sub('"decision_id":"(normalised)"', line) for line in lines]


def build_store(directory):
    store = os.path.join(directory, "store")
    run_nbx("import", "profiles", os.path.join(GOLDEN_DIR, "profiles.jsonl"), "--store", store)
    run_nbx("ingest", os.path.join(GOLDEN_DIR, "events.jsonl"), "--store", store)
    run_nbx("rfm", "rebuild", "--store", store, "--as-of", AS_OF)
    return store


def batch(store, policy, threads, extra_env=None):
    return normalise(run_nbx("batch", "--store", store, "--catalog", CATALOG, "--policy", policy,
                             "--customers", CUSTOMERS, "--as-of", AS_OF, "--explain",
                             "--threads", str(threads), "--time-limit-us", TIME_LIMIT_US,
                             extra_env=extra_env))


def golden_text(batches):
    """The file: per policy a header line, then the batch's decisions."""
    out = []
    for policy, lines in batches:
        rel = os.path.relpath(policy, SOURCE_DIR)
        out.append(f"== nbx batch --policy {rel} --catalog tests/data/golden/catalog.json "
                   f"--customers tests/data/golden/customers.jsonl --as-of {AS_OF} --explain "
                   f"--threads 1")
        out.extend(lines)
    return "".join(line + "\n" for line in out)


def customer_requests():
    """(customer id, ['--session', 'K=V', ...]) per line of customers.jsonl."""
    requests = []
    with open(CUSTOMERS, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                requests.append((line, []))
                continue
            fields = json.loads(line)
            customer = fields.pop("id")
            session = []
            for key, value in fields.items():
                session += ["--session", f"{key}={value}"]
            requests.append((customer, session))
    return requests


def json_differences(path, expected, got, out):
    """Where two parsed JSON values differ, as 'path: expected -> got'."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in list(expected) + [k for k in got if k not in expected]:
            json_differences(f"{path}.{key}", expected.get(key), got.get(key), out)
    elif isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        for i, (e, g) in enumerate(zip(expected, got)):
            json_differences(f"{path}[{i}]", e, g, out)
    elif expected != got or type(expected) is not type(got):
        out.append(f"  {path}: {json.dumps(expected)[:300]} -> {json.dumps(got)[:300]}")


def describe_differences(expected, got):
    """The differing lines, each by the fields that differ (a line is a
    whole decision with --explain, too long to show): a probe value that
    differs shows in its nbx.log line, in hex."""
    out = []
    if len(expected) != len(got):
        out.append(f"{len(expected)} lines expected, {len(got)} printed")
    section = ""
    for number, (e, g) in enumerate(zip(expected, got), 1):
        if e.startswith("== "):
            section = e
        if e == g:
            continue
        out.append(f"line {number} ({section[:60]}...):")
        try:
            fields = []
            json_differences("", json.loads(e), json.loads(g), fields)
            out.extend(fields[:20] or ["  the same JSON, other bytes"])
        except ValueError:
            out.extend([f"  expected: {e[:300]}", f"  printed:  {g[:300]}"])
        if len(out) > 60:
            out.append("...")
            break
    return "\n".join(out)


class Golden(CliTestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="nbx-golden-")
        cls.golden_store = build_store(cls.dir.name)
        cls.batches = [(p, batch(cls.golden_store, p, 1)) for p in POLICIES]

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def test_decisions_equal_the_golden_file_byte_for_byte(self):
        got = golden_text(self.batches)
        with open(EXPECTED, encoding="utf-8") as f:
            expected = f.read()
        if got != expected:
            self.fail("decisions differ from tests/data/golden/expected.txt; if nbx changed "
                      "them on purpose, see this file's docstring to write it again.\n"
                      + describe_differences(expected.splitlines(), got.splitlines()))

    def test_no_decision_falls_back(self):
        # a fallback (a timeout on a slow machine) would hide the policy's scores
        for policy, lines in self.batches:
            for line in lines:
                d = json.loads(line)
                self.assertIs(d["fallback"], False, f"{policy}: {line[:500]}")

    def test_the_probe_logs_its_values(self):
        # the hex values are what names a difference; without --explain's log
        # lines the file would show only that scores moved
        lines = self.batches[0][1]
        logged = [json.loads(line).get("log", []) for line in lines]
        self.assertTrue(any(any(" exp=0x" in entry for entry in log) for log in logged),
                        lines[0][:500])

    def test_two_threads_give_the_same_lines(self):
        for policy, lines in self.batches:
            self.assertEqual(batch(self.golden_store, policy, 2), lines, policy)

    def test_a_cpu_without_fma_gives_the_same_lines(self):
        # the probe calls every math function and ^; with the C library's,
        # two of its candidates' scores changed under this environment
        for policy, lines in self.batches:
            self.assertEqual(batch(self.golden_store, policy, 1, NO_FMA_ENV), lines, policy)

    def test_each_decision_alone_gives_the_same_line(self):
        # a fresh process decides once (its policy interpreted); the batch's
        # state has decided before it (its loops compiled by the JIT)
        for policy, lines in self.batches:
            for (customer, session), line in zip(customer_requests(), lines, strict=True):
                alone = normalise(run_nbx(
                    "decide", "--store", self.golden_store, "--catalog", CATALOG, "--policy", policy,
                    "--customer", customer, *session, "--as-of", AS_OF, "--explain",
                    "--time-limit-us", TIME_LIMIT_US))
                self.assertEqual(alone, [line], f"{policy}, customer {customer}")


def regenerate(force):
    """Write expected.txt from this nbx. A different file is replaced only
    with force, and the diff is shown either way."""
    with tempfile.TemporaryDirectory(prefix="nbx-golden-") as directory:
        store = build_store(directory)
        text = golden_text([(p, batch(store, p, 1)) for p in POLICIES])
    try:
        with open(EXPECTED, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = None
    if old == text:
        print(f"{EXPECTED}: unchanged")
        return 0
    if old is not None:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                   "expected.txt", "this nbx", n=0))
        if not force:
            print(f"{EXPECTED}: differs from this nbx's decisions (above); not replaced. "
                  f"Review the diff, then run again with --force to replace it.",
                  file=sys.stderr)
            return 1
    with open(EXPECTED + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(EXPECTED + ".tmp", EXPECTED)
    print(f"{EXPECTED}: written with {NBX}")
    return 0


if __name__ == "__main__":
    if "--regenerate" in sys.argv[1:]:
        unknown = set(sys.argv[1:]) - {"--regenerate", "--force"}
        if unknown:
            sys.exit(f"usage: {sys.argv[0]} [--regenerate [--force]]")
        sys.exit(regenerate("--force" in sys.argv[1:]))
    unittest.main()
