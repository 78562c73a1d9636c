"""Tests of the nbx command-line tool: the real binary on real LMDB stores in
temporary directories. Run by ctest (label "cli") or from tests/cli with
`python3 -m unittest -v test_cli`.
"""
import collections
import datetime
import json
import os
import pty
import re
import resource
import signal
import stat
import subprocess
import threading
import time
import unittest

from cliutil import (CATALOG, NBX, POLICY, CliTestCase, exposure, profile, purchase)

COMMANDS = [
    ["import", "profiles"], ["import", "events"], ["ingest"], ["rfm", "rebuild"],
    ["profile", "get"], ["profile", "delete"], ["profile", "put"], ["export", "profiles"],
    ["stats"], ["decide"], ["policy", "check"], ["catalog", "check"],
    ["gen", "profiles"], ["gen", "events"], ["gen", "catalog"],
]
SUMMARY = re.compile(r"(\d+) lines, (\d+) applied, (\d+) duplicates, (\d+) rejected")
AS_OF = "2026-06-01T12:00:00Z"


def summary_counts(text):
    m = SUMMARY.search(text)
    if not m:
        raise AssertionError(f"no import summary in {text!r}")
    return tuple(int(g) for g in m.groups())


# ===========================================================================
# 1. Help, version, usage errors
# ===========================================================================

class T01HelpAndUsage(CliTestCase):

    def test_01_version(self):
        for flag in ("--version", "version"):
            r = self.ok(flag)
            self.assertRegex(r.stdout, r"^nbx 0\.2\.0 \(libnbx 0\.2\.0\)\n$")

    def test_02_help_lists_every_command(self):
        r = self.ok("help")
        for words in COMMANDS:
            self.assertIn(" ".join(words), r.stdout)
        self.assertEqual(self.ok("--help").stdout, r.stdout)

    def test_03_help_command_and_dash_dash_help_agree(self):
        for words in COMMANDS:
            with self.subTest(command=words):
                a = self.ok("help", *words).stdout
                b = self.ok(*words, "--help").stdout
                c = self.ok(*words, "-h").stdout
                self.assertEqual(a, b)
                self.assertEqual(a, c)
                self.assertTrue(a.startswith("usage: nbx " + " ".join(words)), a)
                self.assertIn("Flags:", a)

    def test_04_group_help(self):
        for group in ("import", "profile", "gen", "rfm", "export", "policy", "catalog"):
            with self.subTest(group=group):
                r = self.ok(group, "--help")
                self.assertIn(f"usage: nbx {group} SUBCOMMAND", r.stdout)
                self.assertEqual(r.stdout, self.ok("help", group).stdout)
                # one usage line, the group's; each subcommand listed by its words
                self.assertEqual(r.stdout.count("usage:"), 1, r.stdout)
                for words in COMMANDS:
                    if words[0] == group:
                        self.assertRegex(r.stdout, rf"(?m)^  {words[1]}\b")

    def test_05_help_wins_over_other_mistakes(self):
        r = self.ok("stats", "--bogus", "--help")
        self.assertIn("usage: nbx stats", r.stdout)

    def test_06_no_arguments_is_a_usage_error(self):
        r = self.fails(2)
        self.assertIn("usage: nbx COMMAND", r.stderr)

    def test_07_unknown_command_and_subcommand(self):
        r = self.fails(2, "frobnicate")
        self.assertIn("unknown command 'frobnicate'", r.stderr)
        r = self.fails(2, "profile", "frob", "--store", self.store)
        self.assertIn("unknown subcommand 'frob'", r.stderr)
        self.assertIn("get, delete, put", r.stderr)
        r = self.fails(2, "profile", "--store", self.store)
        self.assertIn("missing subcommand", r.stderr)
        self.fails(2, "help", "frobnicate")
        self.fails(2, "help", "profile", "frob")

    def test_08_unknown_flag_names_it(self):
        r = self.fails(2, "stats", "--store", self.store, "--colour", "red")
        self.assertIn("unknown flag --colour", r.stderr)
        self.assertIn("usage: nbx stats", r.stderr)
        self.assertIn("nbx stats --help", r.stderr)
        r = self.fails(2, "stats", "-x")
        self.assertIn("unknown flag -x", r.stderr)

    def test_09_missing_value_names_the_flag(self):
        r = self.fails(2, "stats", "--store")
        self.assertIn("--store needs a value (DIR)", r.stderr)
        r = self.fails(2, "stats", "--store", "--json")
        self.assertIn("--store needs a value", r.stderr)
        r = self.fails(2, "stats", "--store=")
        self.assertIn("--store needs a value", r.stderr)

    def test_10_bad_numbers_name_the_flag(self):
        cases = [
            (["import", "profiles", "f.jsonl", "--batch-size", "ten"], "--batch-size: 'ten'"),
            (["import", "profiles", "f.jsonl", "--batch-size", "0"], "--batch-size must be"),
            (["import", "profiles", "f.jsonl", "--batch-size=-5"], "--batch-size: '-5'"),
            (["import", "profiles", "f.jsonl", "--batch-size", "12x"], "--batch-size: '12x'"),
            (["gen", "profiles", "--count", "99999999999999999999999"], "--count"),
            (["gen", "profiles", "--count", "1e3"], "--count: '1e3'"),
            (["decide", "--memory-limit", "lots"], "--memory-limit: 'lots'"),
            (["decide", "--time-limit-us", " 5"], "--time-limit-us"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                r = self.fails(2, *args, "--store", self.store)
                self.assertIn(message, r.stderr)
                self.assertIn("usage:", r.stderr)

    def test_11_bad_time_names_the_flag(self):
        r = self.fails(2, "rfm", "rebuild", "--store", self.store, "--as-of", "yesterday")
        self.assertIn("--as-of: 'yesterday' is not a time", r.stderr)

    def test_12_boolean_flag_takes_no_value(self):
        r = self.fails(2, "stats", "--store", self.store, "--json=yes")
        self.assertIn("--json takes no value", r.stderr)

    def test_13_positional_argument_count(self):
        r = self.fails(2, "profile", "get", "--store", self.store)
        self.assertIn("missing argument: expected ID", r.stderr)
        r = self.fails(2, "profile", "get", "a", "b", "--store", self.store)
        self.assertIn("unexpected argument 'b'", r.stderr)
        r = self.fails(2, "stats", "extra", "--store", self.store)
        self.assertIn("unexpected argument 'extra'", r.stderr)

    def test_14_store_is_required(self):
        for args in (["stats"], ["profile", "get", "x"], ["export", "profiles"],
                     ["import", "profiles", "f.jsonl"], ["ingest", "f.jsonl"],
                     ["rfm", "rebuild"], ["profile", "delete", "x"], ["profile", "put", "{}"],
                     ["decide", "--catalog", "c", "--policy", "p", "--customer", "x"]):
            with self.subTest(args=args):
                r = self.fails(2, *args)
                self.assertIn("no store given: pass --store DIR or set NBX_STORE", r.stderr)

    def test_15_missing_store_is_a_runtime_error(self):
        for args in (["stats"], ["profile", "get", "x"], ["export", "profiles"],
                     ["rfm", "rebuild"], ["profile", "delete", "x"]):
            with self.subTest(args=args):
                r = self.fails(1, *args, "--store", self.path("nowhere"))
                self.assertIn("nowhere", r.stderr)
        self.assertFalse(os.path.exists(self.path("nowhere")))

    def test_16_required_generator_flags(self):
        self.assertIn("--count N is required", self.fails(2, "gen", "profiles").stderr)
        self.assertIn("--customers N is required",
                      self.fails(2, "gen", "events", "--count", "3").stderr)
        self.assertIn("--offers M is required", self.fails(2, "gen", "catalog").stderr)


# ===========================================================================
# 2. Flag placement, --flag=value, $NBX_STORE
# ===========================================================================

class T02FlagPlacement(CliTestCase):

    def setUp(self):
        super().setUp()
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)

    def test_01_flags_before_between_and_after(self):
        expected = self.ok("profile", "get", "p001", "--store", self.store).stdout
        variants = [
            ["profile", "get", "--store", self.store, "p001"],
            ["profile", "--store", self.store, "get", "p001"],
            ["profile", f"--store={self.store}", "get", "p001"],
            ["profile", "get", "p001", f"--store={self.store}"],
            ["profile", "get", "--store", self.store, "--", "p001"],
            ["--store", self.store, "profile", "get", "p001"],
            [f"--store={self.store}", "profile", "get", "p001"],
            ["--store", self.path("other"), "profile", "get", "p001", "--store", self.store],
        ]
        for args in variants:
            with self.subTest(args=args):
                self.assertEqual(self.ok(*args).stdout, expected)

    def test_02_env_store(self):
        expected = self.ok("stats", "--json", "--store", self.store).stdout
        r = self.ok("stats", "--json", env={"NBX_STORE": self.store})
        self.assertEqual(r.stdout, expected)

    def test_03_flag_overrides_env(self):
        r = self.fails(1, "profile", "get", "p001", "--store", self.path("other"),
                       env={"NBX_STORE": self.store})
        self.assertIn("other", r.stderr)

    def test_04_dash_dash_ends_flags(self):
        # An id that looks like a flag can still be named after "--".
        self.ok("profile", "put", json.dumps(profile(2, id="--odd")), "--store", self.store)
        r = self.ok("profile", "get", "--store", self.store, "--", "--odd")
        self.assertEqual(json.loads(r.stdout)["id"], "--odd")


    def test_05_flags_before_the_command_word(self):
        r = self.ok("--store", self.store, "import", "profiles", "-",
                    input=json.dumps(profile(3)) + "\n")
        self.assertEqual(summary_counts(r.stdout), (1, 1, 0, 0))
        self.assertEqual(self.ok("--store", self.store, "stats", "--json").stdout,
                         self.ok("stats", "--json", "--store", self.store).stdout)
        self.ok("--store", self.store, "ingest", "-",
                input=json.dumps(purchase("e1", "p003", AS_OF, 5.0)) + "\n")
        self.assertEqual(self.profile("p003")["rfm"]["orders"], 1)
        # checked by the command like any other flag
        r = self.fails(2, "--json", "--store", self.store, "import", "profiles", "-", input="")
        self.assertIn("unknown flag --json", r.stderr)
        r = self.fails(2, "--store", self.store)
        self.assertIn("missing command", r.stderr)
        # --help and --version still work, before or after such flags
        self.assertRegex(self.ok("--version").stdout, r"^nbx ")
        self.assertEqual(self.ok("--store", self.store, "--help").stdout, self.ok("help").stdout)
        self.assertEqual(self.ok("--store", self.store, "--help", "stats").stdout,
                         self.ok("help", "stats").stdout)
        self.assertIn("usage: nbx stats", self.ok("--store", self.store, "stats", "-h").stdout)


# ===========================================================================
# 3. profile get / put / delete, stats
# ===========================================================================

class T03Profiles(CliTestCase):

    def test_01_put_get(self):
        p = profile(7)
        r = self.ok("profile", "put", json.dumps(p), "--store", self.store)
        self.assertEqual(r.stdout, "")
        got = self.profile("p007")
        for field in ("id", "attrs", "consent", "propensity", "ltv", "churn"):
            self.assertEqual(got[field], p[field], field)
        self.assertIn("updated_at", got)
        out = self.ok("profile", "get", "p007", "--store", self.store).stdout
        self.assertTrue(out.endswith("}\n") and out.count("\n") == 1, repr(out))

    def test_02_put_merges(self):
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)
        self.ok("profile", "put", '{"id": "p001", "ltv": 99.5, "attrs": {"tier": "gold"}}',
                "--store", self.store)
        got = self.profile("p001")
        self.assertEqual(got["ltv"], 99.5)
        self.assertEqual(got["attrs"]["tier"], "gold")
        self.assertEqual(got["consent"], profile(1)["consent"])  # untouched

    def test_03_put_from_stdin(self):
        self.ok("profile", "put", "-", "--store", self.store, input=json.dumps(profile(3)))
        self.assertEqual(self.profile("p003")["ltv"], 30.0)

    def test_04_put_invalid(self):
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)
        before = self.export()
        for bad, field in (('{"id": "p001", "churn": 3}', "churn"),
                           ('{"id": "p001", "propensity": {"x": -0.1}}', "propensity"),
                           ('{"ltv": 1}', "id"),
                           ('{"id": "p001", "ltv": ', None)):
            with self.subTest(bad=bad):
                r = self.fails(1, "profile", "put", bad, "--store", self.store)
                if field:
                    self.assertIn(f"'{field}", r.stderr)
        self.assertEqual(self.export(), before)

    def test_05_get_unknown(self):
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)
        r = self.fails(1, "profile", "get", "nobody", "--store", self.store)
        self.assertIn("no profile with id 'nobody'", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_06_delete(self):
        for n in (1, 2):
            self.ok("profile", "put", json.dumps(profile(n)), "--store", self.store)
        self.ok("profile", "delete", "p001", "--store", self.store)
        self.fails(1, "profile", "get", "p001", "--store", self.store)
        self.assertEqual(self.profile("p002")["id"], "p002")
        self.assertEqual(self.stats()["profiles"], 1)
        # an id the store holds nothing for is reported with 0 records, and
        # suppressed all the same (erasure requests for unknown customers)
        r = self.ok("profile", "delete", "p001", "--store", self.store)
        self.assertEqual(json.loads(r.stdout), {"id": "p001", "records": 0})

    def test_07_delete_removes_exposure_counters(self):
        for n in (1, 2):
            self.ok("profile", "put", json.dumps(profile(n)), "--store", self.store)
        events = [exposure(f"x{i}", "p001", "impression", "free_shipping",
                           f"2026-05-3{i}T10:00:00Z", "hero") for i in range(2)]
        events.append(exposure("y1", "p002", "impression", "winback_20",
                               "2026-05-31T10:00:00Z", "hero"))
        self.ok("ingest", self.write_jsonl("ev.jsonl", events), "--store", self.store)
        both = self.stats()["exposure_keys"]
        self.assertGreater(both, 0)
        self.ok("profile", "delete", "p001", "--store", self.store)
        one = self.stats()["exposure_keys"]
        self.assertTrue(0 < one < both, (one, both))
        self.ok("profile", "delete", "p002", "--store", self.store)
        self.assertEqual(self.stats()["exposure_keys"], 0)
        self.assertEqual(self.stats()["profiles"], 0)

    def test_08_stats_text_and_json(self):
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)
        st = self.stats()
        self.assertEqual(st["profiles"], 1)
        self.assertEqual(st["schema_version"], 3)
        self.assertIsNone(st["rfm_as_of"])
        for key in ("exposure_keys", "events_seen", "bytes_used", "map_size"):
            self.assertIsInstance(st[key], int)
        text = self.ok("stats", "--store", self.store).stdout
        self.assertRegex(text, r"profiles:\s+1\n")
        self.assertRegex(text, r"rfm as of:\s+never\n")


# ===========================================================================
# 3b. Stores that cannot be used: permissions, damage
# ===========================================================================

class T03bUnusableStores(CliTestCase):

    def setUp(self):
        super().setUp()
        self.ok("import", "profiles", self.write_jsonl("p.jsonl", [profile(n) for n in
                                                                    range(1, 300)]),
                "--store", self.store)

    def as_other_user(self, *args):
        """Run nbx as a user without rights: nobody when the tests run as root
        (root passes every permission check), else the user itself."""
        os.chmod(self.tmp, 0o755)
        extra = {}
        if os.geteuid() == 0:
            extra = {"user": 65534, "group": 65534, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        return subprocess.run([NBX, *args], capture_output=True, text=True, env=env,
                              timeout=60, **extra)

    def assertNoRepeat(self, text):
        self.assertNotRegex(text.lower(), r"permission denied.*permission denied")
        self.assertNotIn("MDB_", text)

    def test_01_directory_that_cannot_be_entered(self):
        os.chmod(self.store, 0)
        self.addCleanup(os.chmod, self.store, 0o755)
        for args in (["stats"], ["profile", "get", "p001"], ["profile", "put", "{\"id\":\"x\"}"]):
            with self.subTest(args=args):
                r = self.as_other_user(*args, "--store", self.store)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("permission denied", r.stderr)
                self.assertIn("cannot enter", r.stderr)
                self.assertNotIn("no store here", r.stderr)
                self.assertNoRepeat(r.stderr)

    def test_02_read_only_store_names_lock_mdb(self):
        for name in ("data.mdb", "lock.mdb"):
            os.chmod(os.path.join(self.store, name), 0o444)
        os.chmod(self.store, 0o555)
        self.addCleanup(os.chmod, self.store, 0o755)
        r = self.as_other_user("stats", "--store", self.store)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("reading a store needs write access to", r.stderr)
        self.assertIn("lock.mdb", r.stderr)
        self.assertNoRepeat(r.stderr)
        r = self.as_other_user("profile", "put", '{"id":"x"}', "--store", self.store)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("data.mdb needs read and write access", r.stderr)
        self.assertNoRepeat(r.stderr)

    def test_03_not_an_lmdb_file(self):
        with open(os.path.join(self.store, "data.mdb"), "wb") as f:
            f.write(b"this is not a database\n" * 1000)
        r = self.fails(1, "stats", "--store", self.store)
        self.assertIn("not an nbx store (data.mdb is not an LMDB file)", r.stderr)
        self.assertNoRepeat(r.stderr)

    def test_04_truncated_store_is_refused_not_a_crash(self):
        data = os.path.join(self.store, "data.mdb")
        size = os.path.getsize(data)
        self.assertGreater(size, 20000)
        os.truncate(data, 20000)
        for args in (["stats"], ["export", "profiles"], ["profile", "get", "p001"],
                     ["rfm", "rebuild"]):
            with self.subTest(args=args):
                r = self.fails(1, *args, "--store", self.store)
                self.assertIn(f"store file is truncated: 20000 bytes, the store needs {size}",
                              r.stderr)
                self.assertIn("data.mdb", r.stderr)
        self.assertEqual(os.path.getsize(data), 20000)


# ===========================================================================
# 4. import profiles
# ===========================================================================

GOOD = [profile(1), profile(2)]
TAIL = [profile(4)]

BAD_PROFILE_LINES = [
    # (name, line 3, field the message must name or None)
    ("malformed json", '{"id": "p003", "attrs": {"a": 1}', None),
    ("wrong type", '{"id": "p003", "ltv": "lots"}', "ltv"),
    ("attribute of wrong type", '{"id": "p003", "attrs": {"sizes": [1, 2]}}', "attrs.sizes"),
    ("missing id", '{"attrs": {"country": "DE"}}', "id"),
    ("propensity above 1", '{"id": "p003", "propensity": {"o001": 1.5}}', "propensity.o001"),
    ("propensity below 0", '{"id": "p003", "propensity": {"o001": -0.01}}', "propensity.o001"),
    ("id too long", json.dumps({"id": "x" * 257}), "id"),
    ("churn outside [0,1]", '{"id": "p003", "churn": 1.01}', "churn"),
    ("not an object", '["p003"]', None),
    ("rfm score 0", '{"id": "p003", "rfm": {"r": 0, "f": 1, "m": 1}}', "rfm.r"),
    ("first purchase after last", '{"id": "p003", "rfm": {"first_purchase": '
     '"2026-02-01T00:00:00Z", "last_purchase": "2026-01-01T00:00:00Z"}}', "rfm.first_purchase"),
    ("duplicate id", '{"id": "p003", "id": "p004"}', "id"),
]


class T04ImportProfiles(CliTestCase):

    def seed_store(self):
        self.ok("import", "profiles", self.write_jsonl("seed.jsonl", [profile(9)]),
                "--store", self.store)
        return self.export(), self.stats()

    def test_01_import_and_summary(self):
        path = self.write_jsonl("p.jsonl", GOOD + ["", "   "] + TAIL)
        r = self.ok("import", "profiles", path, "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (3, 3, 0, 0))
        self.assertIn(path, r.stdout)
        self.assertRegex(r.stdout, r"in \d+\.\d\d s \(\d+ lines/s\)\n$")
        self.assertEqual(r.stderr, "")  # no progress when stderr is not a terminal
        self.assertEqual(self.stats()["profiles"], 3)
        self.assertEqual(self.profile("p002")["attrs"], profile(2)["attrs"])

    def test_02_id_of_maximum_length_is_fine(self):
        path = self.write_jsonl("p.jsonl", [{"id": "y" * 256, "ltv": 1}])
        self.ok("import", "profiles", path, "--store", self.store)
        self.assertEqual(self.profile("y" * 256)["ltv"], 1)

    def test_03_bad_lines_fail_the_file_and_leave_the_store(self):
        before_export, before_stats = self.seed_store()
        for name, line, field in BAD_PROFILE_LINES:
            with self.subTest(case=name):
                path = self.write_jsonl("bad.jsonl", GOOD + [line] + TAIL)
                r = self.fails(1, "import", "profiles", path, "--store", self.store)
                self.assertIn(f"{path}:3", r.stderr)
                if field:
                    self.assertIn(f"'{field}'", r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertEqual(self.export(), before_export)
                self.assertEqual(self.stats(), before_stats)
                self.fails(1, "profile", "get", "p001", "--store", self.store)

    def test_04_skip_invalid(self):
        lines = [profile(1), '{"id": "bad-2", "churn": 7}', profile(3),
                 '{"id": "bad-4", "propensity": {"o9": 2}}', '{"id": "bad-5", ', profile(6)]
        path = self.write_jsonl("mixed.jsonl", lines)
        rejects = self.path("rejects.jsonl")
        r = self.ok("import", "profiles", path, "--store", self.store, "--skip-invalid", rejects)
        self.assertEqual(summary_counts(r.stdout), (6, 3, 0, 3))
        self.assertIn(rejects, r.stderr)
        self.assertEqual(self.stats()["profiles"], 3)
        for n in (1, 3, 6):
            self.profile(f"p{n:03d}")
        with open(rejects, encoding="utf-8") as f:
            rejected = [line for line in f.read().splitlines() if line.strip()]
        self.assertEqual(len(rejected), 3, rejected)
        for text, bad_id, field in ((rejected[0], "bad-2", "churn"),
                                    (rejected[1], "bad-4", "propensity"),
                                    (rejected[2], "bad-5", None)):
            self.assertIn(bad_id, text)
            if field:
                self.assertIn(field, text)
        self.assertIn(":2", rejected[0])
        self.assertIn(":5", rejected[2])

    def test_05_stdin(self):
        text = "".join(json.dumps(p) + "\n" for p in GOOD + TAIL)
        r = self.ok("import", "profiles", "-", "--store", self.store, input=text)
        self.assertEqual(summary_counts(r.stdout), (3, 3, 0, 0))
        self.assertTrue(r.stdout.startswith("stdin:"), r.stdout)
        self.assertEqual(self.stats()["profiles"], 3)
        # the rejects note names standard input as the summary does, not "-"
        rejects = self.path("rejects.jsonl")
        r = self.ok("import", "profiles", "-", "--store", self.store, "--skip-invalid", rejects,
                    input=text + '{"id": "bad", "churn": 7}\n')
        self.assertIn(f"stdin: 1 rejected lines written to {rejects}", r.stderr)

    def test_06_stdin_bad_line(self):
        before_export, _ = self.seed_store()
        text = json.dumps(profile(1)) + "\n" + '{"id": "p002", "churn": "x"}\n'
        r = self.fails(1, "import", "profiles", "-", "--store", self.store, input=text)
        self.assertIn(":2", r.stderr)
        self.assertIn("'churn'", r.stderr)
        self.assertEqual(self.export(), before_export)

    def test_07_missing_file(self):
        r = self.fails(1, "import", "profiles", self.path("absent.jsonl"), "--store", self.store)
        self.assertIn("absent.jsonl", r.stderr)

    def test_07b_missing_file_creates_no_store(self):
        new = self.path("new-store")
        r = self.fails(1, "import", "profiles", self.path("nosuch.jsonl"), "--store", new)
        self.assertIn("cannot open", r.stderr)
        self.assertFalse(os.path.exists(new), "a store was created for a missing input")
        self.fails(1, "ingest", self.path("nosuch.jsonl"), "--store", new)
        self.assertFalse(os.path.exists(new), "a store was created for a missing input")

    def test_07c_rejects_file_must_not_be_the_input_or_the_store(self):
        text = json.dumps(profile(1)) + "\n" + '{"id": "p002", "churn": "x"}\n'
        path = self.write("p.jsonl", text)
        link = self.path("link.jsonl")
        os.symlink(path, link)
        new = self.path("new-store")
        for command in (["import", "profiles"], ["ingest"], ["import", "events"]):
            for rejects in (path, link):
                with self.subTest(command=command, rejects=rejects):
                    r = self.fails(2, *command, path, "--store", new, "--skip-invalid", rejects)
                    self.assertIn("is the input", r.stderr)
                    self.assertIn("usage:", r.stderr)
                    self.assertFalse(os.path.exists(new))
            with self.subTest(command=command, rejects="standard input"):
                with open(path, encoding="utf-8") as stdin:
                    r = subprocess.run([NBX, *command, "-", "--store", new,
                                        "--skip-invalid", path], stdin=stdin,
                                       capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("is the input", r.stderr)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), text, "the input was overwritten")
        # the store's own files
        export, stats = self.seed_store()
        for name in ("data.mdb", "lock.mdb"):
            with self.subTest(rejects=name):
                r = self.fails(2, "import", "profiles", path, "--store", self.store,
                               "--skip-invalid", os.path.join(self.store, name))
                self.assertIn(name, r.stderr)
                self.assertEqual(self.export(), export)
                self.assertEqual(self.stats(), stats)

    def test_08_batch_size(self):
        path = self.write_jsonl("p.jsonl", [profile(n) for n in range(1, 26)])
        r = self.ok("import", "profiles", path, "--store", self.store, "--batch-size", "4")
        self.assertEqual(summary_counts(r.stdout), (25, 25, 0, 0))
        self.assertEqual(self.stats()["profiles"], 25)

    def test_10_progress_only_on_a_terminal(self):
        # The library reports progress about every 100k lines.
        data = self.path("big.jsonl")
        self.ok("gen", "profiles", "--count", "250000", "--out", data)
        master, slave = pty.openpty()
        try:
            proc = subprocess.run([NBX, "import", "profiles", data, "--store", self.store],
                                  stdout=subprocess.PIPE, stderr=slave, text=True,
                                  timeout=300)
            os.close(slave)
            slave = -1
            chunks = []
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO once the writer side is closed and drained
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)
        terminal = b"".join(chunks).decode()
        self.assertEqual(proc.returncode, 0, terminal)
        # each pass runs to 100%, so each is named: validation, then writing
        self.assertRegex(terminal, r"\r\x1b\[Kchecking: \d+ lines, \d+ lines/s, \d+\.\d%")
        self.assertRegex(terminal, r"\r\x1b\[Kwriting: \d+ lines, \d+ lines/s, \d+\.\d%")
        self.assertLess(terminal.index("checking:"), terminal.index("writing:"))
        self.assertNotIn("checking:", terminal[terminal.index("writing:"):])
        self.assertEqual(summary_counts(proc.stdout), (250000, 250000, 0, 0))
        # Not a terminal: not a byte of progress.
        r = self.ok("import", "profiles", data, "--store", self.store)
        self.assertEqual(r.stderr, "")

    def test_09_reimport_merges_again(self):
        path = self.write_jsonl("p.jsonl", GOOD)
        self.ok("import", "profiles", path, "--store", self.store)
        first = self.export()
        r = self.ok("import", "profiles", path, "--store", self.store)
        self.assertEqual(summary_counts(r.stdout)[0], 2)
        self.assertEqual(self.stats()["profiles"], 2)
        strip = [{k: v for k, v in json.loads(line).items() if k != "updated_at"}
                 for line in first.splitlines()]
        again = [{k: v for k, v in json.loads(line).items() if k != "updated_at"}
                 for line in self.export().splitlines()]
        self.assertEqual(again, strip)


# ===========================================================================
# 5. ingest (import events)
# ===========================================================================

EVENTS = [
    purchase("e1", "p001", "2026-05-01T10:00:00Z", 120.0, 30.0),
    purchase("e2", "p001", 1777716000, 40.5),
    exposure("e3", "p001", "impression", "free_shipping", "2026-05-03T10:00:00Z", "hero"),
    exposure("e4", "p001", "click", "free_shipping", "2026-05-03T10:00:05Z"),
    exposure("e5", "p002", "dismiss", "winback_20", "2026-05-04T10:00:00Z", "hero"),
    exposure("e6", "p002", "accept", "free_shipping", "2026-05-04T11:00:00Z", "recs"),
]

BAD_EVENT_LINES = [
    ("malformed json", '{"event_id": "b3", "customer": "p001", "type": "purchase"', None),
    ("missing event_id", '{"customer": "p001", "type": "purchase", '
                         '"ts": "2026-05-01T00:00:00Z", "amount": 3}', "event_id"),
    ("unknown type", '{"event_id": "b3", "customer": "p001", "type": "purchased", '
                     '"ts": "2026-05-01T00:00:00Z", "amount": 3}', "type"),
    ("amount of wrong type", '{"event_id": "b3", "customer": "p001", "type": "purchase", '
                             '"ts": "2026-05-01T00:00:00Z", "amount": "3"}', "amount"),
    ("missing customer", '{"event_id": "b3", "type": "purchase", '
                         '"ts": "2026-05-01T00:00:00Z", "amount": 3}', "customer"),
    ("bad time", '{"event_id": "b3", "customer": "p001", "type": "purchase", '
                 '"ts": "last tuesday", "amount": 3}', "ts"),
    ("exposure without offer", '{"event_id": "b3", "customer": "p001", "type": "click", '
                               '"ts": "2026-05-01T00:00:00Z"}', "offer"),
    ("customer id too long", json.dumps(purchase("b3", "c" * 257, "2026-05-01T00:00:00Z", 1)),
     "customer"),
    ("event id too long", json.dumps(purchase("e" * 257, "p001", "2026-05-01T00:00:00Z", 1)),
     "event_id"),
    ("type a number", '{"event_id": "b3", "customer": "p001", "type": 1, '
                      '"ts": "2026-05-01T00:00:00Z", "amount": 3}', "type"),
    ("type an array", '{"event_id": "b3", "customer": "p001", "type": ["purchase"], '
                      '"ts": "2026-05-01T00:00:00Z", "amount": 3}', "type"),
    ("type null", '{"event_id": "b3", "customer": "p001", "type": null, '
                  '"ts": "2026-05-01T00:00:00Z", "amount": 3}', "type"),
    ("duplicate key", '{"event_id": "b3", "customer": "p001", "type": "purchase", '
                      '"customer": "p002", "ts": "2026-05-01T00:00:00Z", "amount": 3}',
     "customer"),
]


class T05Ingest(CliTestCase):

    def setUp(self):
        super().setUp()
        self.ok("import", "profiles", self.write_jsonl("p.jsonl", GOOD), "--store", self.store)

    def test_01_ingest_applies_purchases_and_exposures(self):
        r = self.ok("ingest", self.write_jsonl("ev.jsonl", EVENTS), "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (6, 6, 0, 0))
        st = self.stats()
        self.assertEqual(st["events_seen"], 6)
        self.assertGreaterEqual(st["exposure_keys"], 3)  # (p001, free_shipping), (p002, x2)
        rfm = self.profile("p001")["rfm"]
        self.assertEqual(rfm["orders"], 2)
        self.assertAlmostEqual(rfm["revenue"], 160.5)
        self.assertEqual(rfm["first_purchase"], "2026-05-01T10:00:00Z")
        self.assertEqual(rfm["last_purchase"], "2026-05-02T10:00:00Z")

    def test_02_rerun_changes_nothing(self):
        path = self.write_jsonl("ev.jsonl", EVENTS)
        self.ok("ingest", path, "--store", self.store)
        export, stats = self.export(), self.stats()
        r = self.ok("ingest", path, "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (6, 0, 6, 0))
        self.assertEqual(self.export(), export)
        self.assertEqual(self.stats(), stats)

    def test_03_import_events_is_ingest(self):
        r = self.ok("import", "events", self.write_jsonl("ev.jsonl", EVENTS),
                    "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (6, 6, 0, 0))
        self.assertEqual(self.stats()["events_seen"], 6)

    def test_04_bad_lines_fail_the_file_and_leave_the_store(self):
        self.ok("ingest", self.write_jsonl("seed.jsonl", EVENTS[:1]), "--store", self.store)
        before_export, before_stats = self.export(), self.stats()
        for name, line, field in BAD_EVENT_LINES:
            with self.subTest(case=name):
                path = self.write_jsonl("bad.jsonl", EVENTS[1:3] + [line] + EVENTS[3:])
                r = self.fails(1, "ingest", path, "--store", self.store)
                self.assertIn(f"{path}:3", r.stderr)
                if field:
                    self.assertIn(f"'{field}'", r.stderr)
                if name == "event id too long":
                    self.assertIn("must be 1 to 256 bytes (got 257)", r.stderr)
                if name.startswith("type "):
                    self.assertIn("field 'type': must be a string", r.stderr)
                if name == "duplicate key":
                    self.assertIn("duplicate key 'customer'", r.stderr)
                self.assertEqual(self.export(), before_export)
                self.assertEqual(self.stats(), before_stats)

    def test_05_skip_invalid(self):
        lines = EVENTS[:2] + [BAD_EVENT_LINES[2][1]] + EVENTS[2:4] + [BAD_EVENT_LINES[1][1]]
        rejects = self.path("rejects.jsonl")
        r = self.ok("ingest", self.write_jsonl("ev.jsonl", lines), "--store", self.store,
                    f"--skip-invalid={rejects}")
        self.assertEqual(summary_counts(r.stdout), (6, 4, 0, 2))
        self.assertEqual(self.stats()["events_seen"], 4)
        with open(rejects, encoding="utf-8") as f:
            rejected = [line for line in f.read().splitlines() if line.strip()]
        self.assertEqual(len(rejected), 2, rejected)
        self.assertIn("purchased", rejected[0])
        self.assertIn("type", rejected[0])
        self.assertIn("event_id", rejected[1])

    def test_06_stdin(self):
        text = "".join(json.dumps(e) + "\n" for e in EVENTS)
        r = self.ok("ingest", "-", "--store", self.store, input=text)
        self.assertEqual(summary_counts(r.stdout), (6, 6, 0, 0))
        r = self.ok("ingest", "--store", self.store, "-", input=text)
        self.assertEqual(summary_counts(r.stdout), (6, 0, 6, 0))

    def test_07_duplicate_ids_within_one_file(self):
        # deduplication is per (customer, event_id): e1 of p001 twice is one
        # event, e1 of p002 is another
        events = EVENTS[:1] + [purchase("e1", "p001", "2026-05-01T10:00:00Z", 999.0),
                               purchase("e1", "p002", "2026-05-01T10:00:00Z", 7.0)]
        r = self.ok("ingest", self.write_jsonl("ev.jsonl", events), "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (3, 2, 1, 0))
        self.assertEqual(self.profile("p001")["rfm"]["revenue"], 120.0)
        self.assertEqual(self.profile("p002")["rfm"]["orders"], 1)


# ===========================================================================
# 6. export
# ===========================================================================

class T06Export(CliTestCase):

    def build_store(self, store):
        profiles = self.path("gen-p.jsonl")
        events = self.path("gen-e.jsonl")
        self.ok("gen", "profiles", "--count", "400", "--seed", "5", "--out", profiles)
        self.ok("gen", "events", "--customers", "450", "--count", "3000", "--seed", "5",
                "--out", events)
        self.ok("import", "profiles", profiles, "--store", store)
        self.ok("ingest", events, "--store", store)
        self.ok("rfm", "rebuild", "--store", store, "--as-of", "2026-03-02T00:00:00Z")

    def test_01_round_trip(self):
        self.build_store(self.store)
        first = self.export()
        lines = first.splitlines()
        self.assertGreaterEqual(len(lines), 400)
        ids = [json.loads(line)["id"] for line in lines]
        self.assertEqual(ids, sorted(ids))
        dump = self.write("export.jsonl", first)
        fresh = self.path("fresh")
        self.ok("import", "profiles", dump, "--store", fresh)
        self.assertEqual(self.export(fresh), first)

    def test_02_out_file(self):
        self.ok("import", "profiles", self.write_jsonl("p.jsonl", GOOD + TAIL),
                "--store", self.store)
        out = self.path("out.jsonl")
        r = self.ok("export", "profiles", "--store", self.store, "--out", out)
        self.assertEqual(r.stdout, "")
        self.assertIn("3 profiles", r.stderr)
        with open(out, encoding="utf-8") as f:
            self.assertEqual(f.read(), self.export())

    def test_03_empty_store(self):
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)
        self.ok("profile", "delete", "p001", "--store", self.store)
        self.assertEqual(self.export(), "")

    def test_04_unwritable_out(self):
        self.ok("profile", "put", json.dumps(profile(1)), "--store", self.store)
        r = self.fails(1, "export", "profiles", "--store", self.store,
                       "--out", self.path("no/such/dir/out.jsonl"))
        self.assertIn("no/such/dir/out.jsonl", r.stderr)


    def run_limited(self, *args, fsize=None):
        """Run nbx with SIGPIPE and SIGXFSZ ignored (a failed write is then an
        error nbx reports) and, with fsize, a limit on the size of files."""
        def limit():
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        env = {k: v for k, v in os.environ.items() if k != "NBX_STORE"}
        return subprocess.run([NBX, *args], capture_output=True, text=True, env=env,
                              timeout=300, preexec_fn=limit)

    def test_05_failed_export_keeps_the_old_file(self):
        self.build_store(self.store)
        out = self.write("out.jsonl", "old contents\n")
        os.chmod(out, 0o640)
        r = self.run_limited("export", "profiles", "--store", self.store, "--out", out,
                             fsize=4096)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("out.jsonl", r.stderr)
        with open(out, encoding="utf-8") as f:
            self.assertEqual(f.read(), "old contents\n")
        self.assertEqual(sorted(os.listdir(self.tmp)),
                         sorted(["out.jsonl", "store", "gen-p.jsonl", "gen-e.jsonl"]))
        # success replaces it whole, keeping its mode, and leaves no temporary file
        self.ok("export", "profiles", "--store", self.store, "--out", out)
        with open(out, encoding="utf-8") as f:
            self.assertEqual(f.read(), self.export())
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o640)
        self.assertEqual(len(os.listdir(self.tmp)), 4)
        # through a symbolic link the file it names is replaced, the link stays
        link = self.path("link.jsonl")
        os.symlink("out.jsonl", link)
        self.ok("export", "profiles", "--store", self.store, "--out", link)
        self.assertTrue(os.path.islink(link))

    def test_06_failed_export_never_removes_a_fifo(self):
        self.build_store(self.store)
        fifo = self.path("pipe")
        os.mkfifo(fifo)

        def read_a_little():
            with open(fifo, "rb") as f:
                f.read(10)
        reader = threading.Thread(target=read_a_little)
        reader.start()
        r = self.run_limited("export", "profiles", "--store", self.store, "--out", fifo)
        reader.join()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("pipe", r.stderr)
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was removed")

    @unittest.skipUnless(os.geteuid() == 0, "mknod needs root")
    def test_07_failed_export_never_removes_a_device(self):
        # a private /dev/full: the real one must not be put at risk
        self.build_store(self.store)
        full = self.path("full")
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        r = self.fails(1, "export", "profiles", "--store", self.store, "--out", full)
        self.assertIn("No space left on device", r.stderr)
        self.assertTrue(stat.S_ISCHR(os.lstat(full).st_mode), "the device was removed")

    def test_08_out_never_replaces_a_store_file(self):
        # the temporary file was renamed over data.mdb: the store was lost
        self.ok("import", "profiles", self.write_jsonl("p.jsonl", GOOD + TAIL),
                "--store", self.store)
        before = self.export()
        link = self.path("link.mdb")
        os.symlink(os.path.join(self.store, "data.mdb"), link)
        for name, out in (("data.mdb", os.path.join(self.store, "data.mdb")),
                          ("lock.mdb", os.path.join(self.store, ".", "lock.mdb")),
                          ("data.mdb", link)):
            with self.subTest(out=out):
                r = self.fails(2, "export", "profiles", "--store", self.store, "--out", out)
                self.assertIn(f"--out {out} is the store's {name}", r.stderr)
                self.assertEqual(self.export(), before)


# ===========================================================================
# 7. rfm rebuild
# ===========================================================================

class T07Rfm(CliTestCase):

    def setUp(self):
        super().setUp()
        path = self.path("gen.jsonl")
        self.ok("gen", "profiles", "--count", "3000", "--seed", "11", "--out", path)
        self.ok("import", "profiles", path, "--store", self.store)

    def rebuild_json(self):
        r = self.ok("rfm", "rebuild", "--store", self.store, "--as-of",
                    "2026-03-01T00:00:00Z", "--json")
        return json.loads(r.stdout)

    def test_01_counts_and_segments(self):
        st = self.rebuild_json()
        profiles = [json.loads(line) for line in self.export().splitlines()]
        buyers = [p for p in profiles if p.get("rfm", {}).get("orders", 0) > 0]
        self.assertEqual(st["customers"], 3000)
        self.assertEqual(st["scored"], len(buyers))
        self.assertEqual(sum(st["segments"].values()), 3000)
        self.assertEqual(st["segments"]["prospect"], 3000 - len(buyers))
        self.assertEqual(st["as_of"], "2026-03-01T00:00:00Z")
        populated = [name for name, n in st["segments"].items()
                     if n > 0 and name not in ("none", "prospect")]
        self.assertGreaterEqual(len(populated), 5, st["segments"])
        for key in ("recency_days", "frequency", "monetary"):
            cuts = st["cuts"][key]
            self.assertEqual(len(cuts), 4)
            self.assertEqual(cuts, sorted(cuts), key)
        counts = collections.Counter(p["rfm"]["segment"] for p in buyers)
        for name, n in counts.items():
            self.assertEqual(st["segments"][name], n, name)
        self.assertEqual(self.stats()["rfm_as_of"], "2026-03-01T00:00:00Z")

    def test_02_scores_are_monotonic(self):
        self.rebuild_json()
        buyers = [json.loads(line)["rfm"] for line in self.export().splitlines()
                  if json.loads(line).get("rfm", {}).get("orders", 0) > 0]
        for rfm in buyers:
            for k in ("r", "f", "m"):
                self.assertIn(rfm[k], (1, 2, 3, 4, 5), rfm)

        def check(key, score, value=lambda v: v):
            groups = collections.defaultdict(set)
            for rfm in buyers:
                groups[value(rfm[key])].add(rfm[score])
            values = sorted(groups)
            for lo, hi in zip(values, values[1:]):
                self.assertLessEqual(max(groups[lo]), min(groups[hi]),
                                     f"{score}: {key} {lo} scored {groups[lo]}, "
                                     f"{hi} scored {groups[hi]}")

        def when(text):
            return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

        check("revenue", "m")                # more revenue never a lower m
        check("orders", "f")                 # more orders never a lower f
        check("last_purchase", "r", when)    # more recent never a lower r

    def test_03_text_report(self):
        r = self.ok("rfm", "rebuild", "--store", self.store, "--as-of", "1772323200")
        self.assertRegex(r.stdout, r"customers: +3000\n")
        self.assertRegex(r.stdout, r"scored: +\d+\n")
        self.assertIn("as of:     2026-03-01T00:00:00Z", r.stdout)
        for label in ("recency_days", "frequency", "monetary"):
            self.assertRegex(r.stdout, label + r"( +\d+\.\d\d){4}\n")
        self.assertRegex(r.stdout, r"\n  champions +\d+ +\d+\.\d%\n")
        self.assertRegex(r.stdout, r"\n  prospect +\d+ +\d+\.\d%\n")


# ===========================================================================
# 8. policy check, catalog check
# ===========================================================================

class T08Checks(CliTestCase):

    def test_01_catalog_check(self):
        r = self.ok("catalog", "check", CATALOG)
        self.assertIn(f"{CATALOG}: ok", r.stdout)
        self.assertRegex(r.stdout, r"version: +[0-9a-f]{16}\n")
        self.assertRegex(r.stdout, r"offers: +8\n")
        self.assertRegex(r.stdout, r"placements: +2\n")
        info = json.loads(self.ok("catalog", "check", CATALOG, "--json").stdout)
        self.assertEqual((info["offers"], info["placements"]), (8, 2))

    def test_02_catalog_check_errors(self):
        with open(CATALOG, encoding="utf-8") as f:
            catalog = json.load(f)
        catalog["offers"][1]["price"] = "cheap"
        bad = self.write("bad-catalog.json", json.dumps(catalog))
        r = self.fails(1, "catalog", "check", bad)
        self.assertIn("bad-catalog.json", r.stderr)
        self.assertIn("winback_20", r.stderr)
        self.assertIn("price", r.stderr)
        r = self.fails(1, "catalog", "check", self.write("trunc.json", '{"offers": ['))
        self.assertIn("trunc.json", r.stderr)
        r = self.fails(1, "catalog", "check", self.path("absent.json"))
        self.assertIn("absent.json", r.stderr)

    @unittest.skipUnless(os.path.exists(POLICY), "policies/margin_per_session.lua not there yet")
    def test_03_policy_check(self):
        r = self.ok("policy", "check", POLICY)
        self.assertIn(f"{POLICY}: ok", r.stdout)
        self.assertRegex(r.stdout, r"name: +\S+\n")
        self.assertRegex(r.stdout, r"version: +[0-9a-f]{16}\n")

    def test_04_policy_check_errors(self):
        bad = self.write("broken.lua", "return {\n  name = 'broken',\n  score = function(o\n}\n")
        r = self.fails(1, "policy", "check", bad)
        self.assertRegex(r.stderr, r"broken\.lua:\d+")
        nameless = self.write("nameless.lua", "return {score = function() return 1 end}\n")
        r = self.fails(1, "policy", "check", nameless)
        self.assertIn("nameless.lua", r.stderr)
        self.assertIn("name", r.stderr)
        r = self.fails(1, "policy", "check", self.path("absent.lua"))
        self.assertIn("absent.lua", r.stderr)


# ===========================================================================
# 9. decide
# ===========================================================================

def find_candidates(node, offer):
    """Every object in a result tree that describes the given offer."""
    found = []
    if isinstance(node, dict):
        if node.get("offer") == offer or node.get("id") == offer:
            found.append(node)
        for v in node.values():
            found.extend(find_candidates(v, offer))
    elif isinstance(node, list):
        for v in node:
            found.extend(find_candidates(v, offer))
    return found


def exclusion_reasons(node, offer):
    reasons = set()
    for c in find_candidates(node, offer):
        for key in ("excluded", "reason", "exclusion"):
            if isinstance(c.get(key), str):
                reasons.add(c[key])
    return reasons


@unittest.skipUnless(os.path.exists(POLICY), "policies/margin_per_session.lua not there yet")
class T09Decide(CliTestCase):

    def setUp(self):
        super().setUp()
        people = [profile(1, propensity={"free_shipping": 0.4, "winback_20": 0.3}),
                  profile(2)]
        self.ok("import", "profiles", self.write_jsonl("p.jsonl", people), "--store", self.store)

    def decide(self, *extra, customer="p001", code=0):
        args = ["decide", "--store", self.store, "--catalog", CATALOG, "--policy", POLICY,
                "--customer", customer, "--as-of", AS_OF, *extra]
        r = self.ok(*args) if code == 0 else self.fails(code, *args)
        if code == 0:
            self.assertTrue(r.stdout.endswith("}\n"), r.stdout)
            return json.loads(r.stdout)
        return r

    def test_01_decide(self):
        result = self.decide()
        self.assertEqual(result["customer"], "p001")
        self.assertFalse(result["fallback"])
        self.assertTrue(result["decision_id"])
        self.assertIn("name", result["policy"])
        self.assertRegex(result["catalog_version"], r"^[0-9a-f]{16}$")
        self.assertGreater(len(result["actions"]), 0)
        for action in result["actions"]:
            self.assertIn(action["placement"], ("hero", "recs"))

    def test_02_placement_and_session(self):
        result = self.decide("--placement", "hero", "--session", "channel=web",
                             "--session=device=mobile")
        self.assertGreater(len(result["actions"]), 0)
        self.assertEqual({a["placement"] for a in result["actions"]}, {"hero"})
        self.assertLessEqual(len(result["actions"]), 1)  # hero has one slot

    def test_03_explain(self):
        plain = self.decide()
        explained = self.decide("--explain")
        self.assertNotIn("candidates", plain)
        self.assertGreater(len(explained["candidates"]), 0)
        # deep_discount breaks max_discount_pct, loss_leader min_margin
        self.assertIn("guardrail", exclusion_reasons(explained["candidates"], "deep_discount"))
        self.assertIn("guardrail", exclusion_reasons(explained["candidates"], "loss_leader"))

    def test_04_unknown_customer_is_anonymous(self):
        result = self.decide(customer="stranger")
        self.assertEqual(result["customer"], "stranger")

    def test_05_fallback_exits_zero(self):
        boom = self.write("boom.lua", "return {name = 'boom', score = function(...) "
                                      "error('boom') end}\n")
        r = self.ok("decide", "--store", self.store, "--catalog", CATALOG, "--policy", boom,
                    "--customer", "p001", "--as-of", AS_OF)
        result = json.loads(r.stdout)
        self.assertTrue(result["fallback"])
        self.assertTrue(result["error"])
        self.assertIn("boom", json.dumps(result["error"]))

    def test_06_missing_and_invalid_inputs(self):
        base = ["decide", "--customer", "p001", "--as-of", AS_OF]
        cases = [
            (["--store", self.store, "--catalog", self.path("absent.json"), "--policy", POLICY],
             "absent.json"),
            (["--store", self.store, "--catalog", self.write("bad.json", "{"), "--policy",
              POLICY], "bad.json"),
            (["--store", self.store, "--catalog", CATALOG, "--policy", self.path("absent.lua")],
             "absent.lua"),
            (["--store", self.store, "--catalog", CATALOG, "--policy",
              self.write("bad.lua", "return {\n name = \n")], "bad.lua"),
            (["--store", self.path("nostore"), "--catalog", CATALOG, "--policy", POLICY],
             "nostore"),
        ]
        for extra, needle in cases:
            with self.subTest(needle=needle):
                r = self.fails(1, *base, *extra)
                self.assertIn(needle, r.stderr)
                self.assertEqual(r.stdout, "")
        self.assertFalse(os.path.exists(self.path("nostore")))

    def test_06b_unknown_placement(self):
        r = self.decide("--placement", "nowhere", code=1)
        self.assertIn("nowhere", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_07_usage_errors(self):
        self.assertIn("--catalog FILE is required",
                      self.fails(2, "decide", "--store", self.store, "--policy", POLICY,
                                 "--customer", "p001").stderr)
        self.assertIn("--customer ID is required",
                      self.fails(2, "decide", "--store", self.store, "--catalog", CATALOG,
                                 "--policy", POLICY).stderr)
        r = self.decide("--session", "novalue", code=2)
        self.assertIn("--session: 'novalue' is not KEY=VALUE", r.stderr)

    def test_08_delete_removes_exposures(self):
        # free_shipping: at most 3 impressions in 7 days.
        events = [exposure(f"i{n}", "p001", "impression", "free_shipping",
                           f"2026-05-{29 + n}T08:00:00Z", "hero") for n in range(3)]
        self.ok("ingest", self.write_jsonl("ev.jsonl", events), "--store", self.store)
        before = self.decide("--explain")
        self.assertIn("frequency", exclusion_reasons(before["candidates"], "free_shipping"))
        self.ok("profile", "delete", "p001", "--store", self.store)
        after = self.decide("--explain")
        self.assertNotIn("frequency", exclusion_reasons(after["candidates"], "free_shipping"))
        self.assertEqual(self.stats()["exposure_keys"], 0)

    def test_09_record(self):
        self.assertEqual(self.stats()["exposure_keys"], 0)
        result = self.decide("--record")
        self.assertGreater(len(result["actions"]), 0)
        self.assertGreater(self.stats()["exposure_keys"], 0)

    def test_10_limits_flags(self):
        result = self.decide("--time-limit-us", "50000", "--memory-limit", "64M")
        self.assertFalse(result["fallback"])

    def test_10b_policy_text_reaches_the_terminal_escaped(self):
        # issue 10: an ESC or CR in a policy's syntax error or runtime error
        # reached the terminal in nbx decide's output
        cases = [
            (b'local x = "\x1b[31mred\r\nreturn {}\n', 1, "\\x1b[31mred"),
            (b'return { name = "esc", score = function(o)\n'
             b'  error("\\27[31mred\\rover") end }\n', 0, "\\x1b[31mred\\x0dover"),
            (b'return { name = "n\\27[31m", score = function(o) return 1 end }\n', 1,
             "printable"),
        ]
        for i, (source, code, shown) in enumerate(cases):
            with self.subTest(source=source):
                path = self.path(f"esc{i}.lua")
                with open(path, "wb") as f:
                    f.write(source)
                # bytes: text mode would turn a raw CR into a line break
                r = subprocess.run([NBX, "decide", "--store", self.store, "--catalog", CATALOG,
                                    "--policy", path, "--customer", "p001", "--as-of", AS_OF],
                                   capture_output=True, timeout=60)
                self.assertEqual(r.returncode, code, r.stderr)
                for c in (b"\x1b", b"\r"):
                    self.assertNotIn(c, r.stdout + r.stderr)
                self.assertIn(shown.encode(), r.stderr)

    def test_11_generated_catalog(self):
        catalog = self.path("gen-catalog.json")
        self.ok("gen", "catalog", "--offers", "60", "--seed", "3", "--out", catalog)
        profiles = self.path("gen-p.jsonl")
        self.ok("gen", "profiles", "--count", "20", "--offers", "60", "--out", profiles)
        self.ok("import", "profiles", profiles, "--store", self.store)
        r = self.ok("decide", "--store", self.store, "--catalog", catalog, "--policy", POLICY,
                    "--customer", "c0000001", "--as-of", AS_OF, "--explain")
        result = json.loads(r.stdout)
        self.assertFalse(result["fallback"])
        self.assertGreater(len(result["actions"]), 0)
        reasons = set()
        for c in result["candidates"]:
            reasons |= exclusion_reasons(c, c.get("offer"))
        self.assertIn("guardrail", reasons)  # the generator breaks some on purpose


# ===========================================================================
# 10. gen
# ===========================================================================

class T10Gen(CliTestCase):

    def test_01_same_seed_same_bytes(self):
        for args in (["profiles", "--count", "300"],
                     ["events", "--customers", "100", "--count", "1000"],
                     ["catalog", "--offers", "40"]):
            with self.subTest(kind=args[0]):
                a = self.gen(*args, "--seed", "42")
                b = self.gen(*args, "--seed", "42")
                c = self.gen(*args, "--seed", "43")
                self.assertEqual(a, b)
                self.assertNotEqual(a, c)
                out = self.path("out")
                self.assertEqual(self.ok("gen", *args, "--seed", "42", "--out", out).stdout, "")
                with open(out, encoding="utf-8") as f:
                    self.assertEqual(f.read(), a)

    def test_02_profiles_shape(self):
        lines = self.gen("profiles", "--count", "5000", "--seed", "9").splitlines()
        self.assertEqual(len(lines), 5000)
        profiles = [json.loads(line) for line in lines]
        self.assertEqual([p["id"] for p in profiles], [f"c{n:07d}" for n in range(1, 5001)])
        attrs = {"country", "city", "age", "gender", "tier", "newsletter", "device", "lang",
                 "signup_year", "channel"}
        catalog_ids = {f"o{n:03d}" for n in range(1, 51)}
        for p in profiles:
            self.assertEqual(set(p["attrs"]), attrs)
            self.assertIsInstance(p["attrs"]["age"], int)
            self.assertIsInstance(p["attrs"]["newsletter"], bool)
            self.assertEqual(set(p["consent"]), {"personalization", "email", "sms"})
            self.assertEqual(len(p["propensity"]), 20)
            self.assertTrue(all(0 <= v <= 1 for v in p["propensity"].values()))
            offer_keys = {k for k in p["propensity"] if k.startswith("o")}
            self.assertTrue(offer_keys <= catalog_ids)
            self.assertTrue(0 <= p["churn"] <= 1)
            self.assertGreaterEqual(p["ltv"], 0)
        refused = sum(not p["consent"]["personalization"] for p in profiles)
        self.assertTrue(0.03 * 5000 < refused < 0.3 * 5000, refused)

        buyers = [p["rfm"] for p in profiles if "rfm" in p]
        one_time = sum(r["orders"] == 1 for r in buyers)
        self.assertTrue(0.5 * 5000 < len(buyers) < 0.95 * 5000, len(buyers))
        self.assertGreater(one_time, 0.35 * len(buyers))
        self.assertGreater(max(r["orders"] for r in buyers), 20)
        revenue = sorted(r["revenue"] for r in buyers)
        top = sum(revenue[-len(revenue) // 100:])
        self.assertGreater(top / sum(revenue), 0.08)  # heavy tail: top 1% > 8% of spend
        self.assertGreater(revenue[-1], 20 * revenue[len(revenue) // 2])
        recent = sum(r["last_purchase"] >= "2026-02-01" for r in buyers)
        lapsed = sum(r["last_purchase"] < "2025-03-01" for r in buyers)
        self.assertGreater(recent, 0.15 * len(buyers))
        self.assertGreater(lapsed, 0.1 * len(buyers))
        for r in buyers:
            self.assertLessEqual(r["first_purchase"], r["last_purchase"])
            self.assertLessEqual(r["last_purchase"], "2026-03-01T00:00:00Z")

    def test_03_events_shape(self):
        lines = self.gen("events", "--customers", "500", "--count", "20000", "--seed", "4",
                         "--start", "2026-02-01T00:00:00Z", "--days", "10",
                         "--offers", "30").splitlines()
        self.assertEqual(len(lines), 20000)
        events = [json.loads(line) for line in lines]
        self.assertEqual(len({e["event_id"] for e in events}), 20000)
        types = collections.Counter(e["type"] for e in events)
        self.assertEqual(set(types), {"purchase", "impression", "click", "accept", "dismiss"})
        stamps = [e["ts"] for e in events]
        self.assertEqual(stamps, sorted(stamps))
        self.assertGreaterEqual(stamps[0], "2026-02-01T00:00:00Z")
        self.assertLess(stamps[-1], "2026-02-11T00:00:00Z")
        per_customer = collections.Counter(e["customer"] for e in events)
        self.assertTrue(set(per_customer) <= {f"c{n:07d}" for n in range(1, 501)})
        busiest = per_customer.most_common(1)[0][1]
        self.assertGreater(busiest, 5 * 20000 / 500)  # a few customers are very active
        offers = {f"o{n:03d}" for n in range(1, 31)}
        for e in events:
            if e["type"] == "purchase":
                self.assertGreater(e["amount"], 0)
                self.assertIn("margin", e)
            else:
                self.assertIn(e["offer"], offers)
                self.assertIn(e["placement"], ("hero", "recs", "sidebar"))

    def test_04_catalog_shape(self):
        catalog = json.loads(self.gen("catalog", "--offers", "200", "--seed", "8"))
        self.assertEqual(catalog["placements"], [{"id": "hero", "slots": 1},
                                                 {"id": "recs", "slots": 3},
                                                 {"id": "sidebar", "slots": 2}])
        self.assertEqual(catalog["guardrails"], {"max_discount_pct": 30, "min_margin": 0.0,
                                                 "max_contacts": {"max": 5, "window_days": 7}})
        self.assertEqual(catalog["fallback"], {"hero": ["brand_banner"],
                                               "recs": ["bestsellers"]})
        offers = catalog["offers"]
        ids = [o["id"] for o in offers]
        self.assertEqual(ids[:200], [f"o{n:03d}" for n in range(1, 201)])
        self.assertEqual(ids[200:], ["brand_banner", "bestsellers"])
        kinds = collections.Counter(o["kind"] for o in offers)
        self.assertGreater(kinds["module"], 10)
        self.assertIn("retention", {o["category"] for o in offers})
        self.assertEqual({o["purpose"] for o in offers}, {"personalization", "email", "none"})
        priced = [o for o in offers if o["price"] > 0]
        over_discount = [o for o in priced if 100 * o.get("discount", 0) / o["price"] > 30]
        negative = [o for o in priced
                    if o["price"] - o["unit_cost"] - o.get("discount", 0) < 0]
        self.assertGreater(len(over_discount), 5)
        self.assertGreater(len(negative), 3)
        self.assertGreater(sum("caps" in o for o in offers), 50)
        self.assertGreater(sum("budget" in o for o in offers), 20)
        self.assertGreater(sum(o.get("valid_to", "9") < "2026-01-01" for o in offers), 3)
        for o in offers:
            self.assertTrue(set(o["placements"]) <= {"hero", "recs", "sidebar"})
        path = self.write("catalog.json", json.dumps(catalog))
        self.assertRegex(self.ok("catalog", "check", path).stdout, r"offers: +202\n")

    def test_05_generated_data_imports_cleanly(self):
        profiles = self.path("p.jsonl")
        events = self.path("e.jsonl")
        self.ok("gen", "profiles", "--count", "2000", "--out", profiles)
        self.ok("gen", "events", "--customers", "2000", "--count", "10000", "--out", events)
        r = self.ok("import", "profiles", profiles, "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (2000, 2000, 0, 0))
        r = self.ok("ingest", events, "--store", self.store)
        self.assertEqual(summary_counts(r.stdout), (10000, 10000, 0, 0))
        # Events about known customers add to their profiles, never beside them.
        self.assertEqual(self.stats()["profiles"], 2000)
        with open(profiles, encoding="utf-8") as f:
            generated = [json.loads(line) for line in f]
        stored = [json.loads(line) for line in self.export().splitlines()]
        self.assertEqual([p["id"] for p in stored], [p["id"] for p in generated])
        for before, after in zip(generated, stored):
            self.assertEqual(after["attrs"], before["attrs"], before["id"])
            self.assertEqual(after["propensity"], before["propensity"], before["id"])
            if "rfm" in before:
                self.assertGreaterEqual(after["rfm"]["orders"], before["rfm"]["orders"])

    def test_06_wide_ids(self):
        lines = self.gen("events", "--customers", "123456789", "--count", "3",
                         "--offers", "1500").splitlines()
        for e in map(json.loads, lines):
            self.assertRegex(e["customer"], r"^c\d{9}$")
            if "offer" in e:
                self.assertRegex(e["offer"], r"^o\d{4}$")


# ===========================================================================
# 11. Crash safety: SIGKILL during an import
# ===========================================================================

class T11Kill(CliTestCase):
    COUNT = 200000
    BATCH = 1000

    def test_01_sigkill_mid_import(self):
        data = self.path("big.jsonl")
        self.ok("gen", "profiles", "--count", str(self.COUNT), "--seed", "77", "--out", data)
        args = [NBX, "import", "profiles", data, "--store", self.store,
                "--batch-size", str(self.BATCH)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen = 0
        deadline = time.monotonic() + 120
        try:
            # The file is validated before the first batch; kill as soon as
            # some batches are committed.
            while time.monotonic() < deadline and proc.poll() is None:
                r = self.nbx("stats", "--json", "--store", self.store)
                if r.returncode == 0:
                    seen = json.loads(r.stdout)["profiles"]
                    if seen >= 3 * self.BATCH:
                        break
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        self.assertEqual(proc.returncode, -signal.SIGKILL,
                         f"import ended before it could be killed (exit {proc.returncode}, "
                         f"{seen} profiles seen)")
        st = self.stats()
        self.assertGreater(st["profiles"], 0)
        self.assertLess(st["profiles"], self.COUNT, "the kill came after the last batch")
        self.assertEqual(st["profiles"] % self.BATCH, 0,
                         f"{st['profiles']} profiles is not a whole number of batches")
        # Every stored profile is complete: it reads back as generated.
        exported = self.export().splitlines()
        self.assertEqual(len(exported), st["profiles"])

        r = self.ok("import", "profiles", data, "--store", self.store,
                    "--batch-size", str(self.BATCH))
        self.assertEqual(summary_counts(r.stdout), (self.COUNT, self.COUNT, 0, 0))
        self.assertEqual(self.stats()["profiles"], self.COUNT)
        clean = self.path("clean")
        self.ok("import", "profiles", data, "--store", clean)
        self.assertEqual(self.export(), self.export(clean))


if __name__ == "__main__":
    unittest.main()
