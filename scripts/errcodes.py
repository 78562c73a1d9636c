#!/usr/bin/python3
"""errcodes.py: check the error codes include/nbx.h documents per function.

    scripts/errcodes.py --header include/nbx.h --core core --tests tests [--list]

Two promises of the header (docs/architecture.md, "Error codes"):

1. Every code a function's @return lists is produced by some test. A test
   produces a code for a function when one C statement of tests/*.c both
   calls the function and names the code (cr_assert_eq(nbx_f(...),
   NBX_EINVAL)), or names the code in an assertion about a variable the
   test last assigned from a call of the function (rc = nbx_f(...); ...
   cr_assert_eq(rc, NBX_EPARSE)). A code no test can produce on purpose
   (out of memory, a disk error) is waived in WAIVED below, with the reason.

2. No function returns a code its documentation leaves out, as far as
   its own file shows: the codes the function's body names (returned, set,
   passed to nbx_fail) and those of the static functions of its file it
   calls, transitively; a code the caller compares with (rc ==
   NBX_ENOTFOUND) is handled there, not passed on. Codes that come from
   other files' functions are not followed: each public function there is
   checked in turn, and internal ones pass on what the store, the parsers
   and the sandbox produce, which the callers document by kind.

A function whose @return says "as nbx_g()" gets nbx_g()'s codes too.
Fails (exit 1) naming the function and the code when either promise is
broken; --list prints the table of documented, tested and returned codes.
"""
import argparse
import os
import re
import sys

CODES = {"NBX_EINVAL", "NBX_ENOMEM", "NBX_EIO", "NBX_ENOTFOUND", "NBX_ECORRUPT", "NBX_EVERSION",
         "NBX_EPARSE", "NBX_EPOLICY", "NBX_ESTORE", "NBX_EFULL", "NBX_ELIMIT", "NBX_EREADONLY"}
CODE_RE = re.compile(r"\bNBX_E[A-Z]+\b")
CALL_RE = re.compile(r"\b([A-Za-z_]\w*)\s*\(")

# Codes no test produces on purpose, per function ("*": every function).
WAIVED = {
    ("*", "NBX_ENOMEM"): "out of memory: no test exhausts memory (the allocator is libc's)",
    ("*", "NBX_ESTORE"): "an LMDB failure that is neither a full map nor damage (reader table "
                         "full, transaction too large, map resized by another process): not "
                         "provoked through the API; test_store maps each LMDB condition to its "
                         "code (lmdb_conditions_map_to_one_code_and_words)",
    ("nbx_profile_erase", "NBX_EIO"): "getrandom(2) failing for the store's first "
                                      "suppression key",
    ("nbx_profile_delete", "NBX_EIO"): "as nbx_profile_erase()",
    ("nbx_ctx_open", "NBX_EPOLICY"): "the engine builds the same sandbox at open and reload "
                                     "and refuses a policy that does not build there; a "
                                     "context's build fails only if the same build behaves "
                                     "differently",
    ("nbx_batch_open", "NBX_EPOLICY"): "as nbx_ctx_open() (a batch opens contexts)",
    ("nbx_store_compact", "NBX_EFULL"): "the copy holds the source's records, packed, in a map "
                                        "of the source's size; documented because LMDB's "
                                        "full map is mapped there as everywhere",
}

# Codes the check of its file finds but the function does not return, and
# why ((function, code): reason).
NOT_RETURNED = {}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)


def documented(header):
    """{function: set(codes)} from each doc comment's @return."""
    with open(header, encoding="utf-8") as f:
        text = f.read()
    docs, aliases = {}, {}
    for m in re.finditer(r"/\*\*((?:(?!\*/).)*)\*/\s*NBX_API[^;{]*?\b(nbx_\w+)\s*\(", text, re.S):
        body, name = m.group(1), m.group(2)
        ret = re.search(r"@return(.*?)(?=\n\s*\*\s*@|\Z)", body, re.S)
        if not ret:
            continue
        docs[name] = set(CODE_RE.findall(ret.group(1))) & CODES
        like = re.search(r"\bas (nbx_\w+)\(\)", ret.group(1))
        if like:
            aliases[name] = like.group(1)
    for name, other in aliases.items():
        docs[name] |= docs.get(other, set())
    return {k: v for k, v in docs.items() if v}


def statements(text):
    """The statements of a C file, roughly: split at ; { }."""
    return [s for s in re.split(r"[;{}]", strip_comments(text)) if s.strip()]


def helpers(text, api):
    """{helper: set(API functions)} for a test file's int functions that
    return what an API function returned (return nbx_f(...), or a variable
    assigned from one): a call of the helper is a call of those."""
    out = {}
    for m in re.finditer(r"^(?:static\s+)?int\s+(\w+)\s*\([^;{]*\)\s*\{(.*?)^\}", text,
                         re.M | re.S):
        body = m.group(2)
        fns = {f for f in re.findall(r"\breturn\s+(\w+)\s*\(", body) if f in api}
        for var in re.findall(r"\breturn\s+(\w+)\s*;", body):
            fns |= {f for f in re.findall(r"\b%s\s*=\s*(\w+)\s*\(" % var, body) if f in api}
        if fns:
            out[m.group(1)] = fns
    return out


def tested(tests_dir, api):
    """{function: set(codes)} the C tests assert a call of it returns."""
    seen = {}
    for name in sorted(os.listdir(tests_dir)):
        if not (name.startswith("test_") and name.endswith(".c")):
            continue
        with open(os.path.join(tests_dir, name), encoding="utf-8") as f:
            text = strip_comments(f.read())
        via = helpers(text, api)
        stmts = statements(text)
        last = {}  # variable -> the API function it was last assigned from
        for s in stmts:
            calls = set()
            for c in CALL_RE.findall(s):
                calls |= {c} if c in api else via.get(c, set())
            codes = set(CODE_RE.findall(s)) & CODES
            assign = re.match(r"\s*(?:int\s+)?(\w+)\s*=\s*(\w+)\s*\(", s)
            if assign and (assign.group(2) in api or assign.group(2) in via):
                last[assign.group(1)] = {assign.group(2)} if assign.group(2) in api \
                    else via[assign.group(2)]
            if not codes:
                continue
            if calls:
                for c in calls:
                    seen.setdefault(c, set()).update(codes)
                continue
            for var, fns in last.items():
                if re.search(r"\b%s\b" % re.escape(var), s):
                    for fn in fns:
                        seen.setdefault(fn, set()).update(codes)
    return seen


def produced(core_dir, api):
    """{API function: set(codes)} its definition in core/*.c can return: the
    codes its body names, and those of the static functions of its file it
    calls, transitively. A code the caller compares with (rc ==
    NBX_ENOTFOUND) is handled there, not passed on."""
    out = {}
    for name in sorted(os.listdir(core_dir)):
        if not name.endswith(".c"):
            continue
        with open(os.path.join(core_dir, name), encoding="utf-8") as f:
            text = strip_comments(f.read())
        defs = {}
        for m in re.finditer(r"^([A-Za-z_][\w \t\*]*?)\b(\w+)\s*\(([^;{)]|\([^)]*\))*\)\s*\{",
                             text, re.M):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            defs[m.group(2)] = ("static" in m.group(1).split(), text[m.end():i])

        def codes(fn, stack):
            body = defs[fn][1]
            handled = set(re.findall(r"[=!]=\s*(NBX_E[A-Z]+)|(?:(NBX_E[A-Z]+)\s*[=!]=)", body))
            handled = {x for pair in handled for x in pair if x}
            named = set(CODE_RE.findall(re.sub(r"[=!]=\s*NBX_E[A-Z]+|NBX_E[A-Z]+\s*[=!]=", "",
                                               body))) & CODES
            for callee in set(CALL_RE.findall(body)):
                if callee in defs and defs[callee][0] and callee not in stack:
                    named |= codes(callee, stack | {callee}) - handled
            return named

        for fn in defs:
            if fn in api:
                out[fn] = codes(fn, {fn})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--header", required=True)
    ap.add_argument("--core", required=True)
    ap.add_argument("--tests", required=True)
    ap.add_argument("--list", action="store_true", help="print every function's codes")
    a = ap.parse_args()

    docs = documented(a.header)
    seen = tested(a.tests, set(docs))
    returns = produced(a.core, set(docs))
    problems = []
    for fn in sorted(docs):
        for code in sorted(docs[fn] - seen.get(fn, set())):
            if (fn, code) in WAIVED or ("*", code) in WAIVED:
                continue
            problems.append(f"{fn}: {code} is documented but no test in {a.tests} produces it "
                            f"(add a test, or waive it in scripts/errcodes.py with the reason)")
        for code in sorted(returns.get(fn, set()) - docs[fn]):
            if (fn, code) in NOT_RETURNED:
                continue
            problems.append(f"{fn}: can return {code} (its body or a static function of its "
                            f"file it calls names it), which "
                            f"{os.path.basename(a.header)} does not document")
        if a.list:
            print(f"{fn}: documented {' '.join(sorted(docs[fn]))}; "
                  f"tested {' '.join(sorted(seen.get(fn, set()) & docs[fn]))}; "
                  f"found {' '.join(sorted(returns.get(fn, set())))}")
    for p in problems:
        print("errcodes.py: " + p, file=sys.stderr)
    if problems:
        print(f"errcodes.py: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"errcodes.py: {len(docs)} functions, every documented code tested, no undocumented "
          f"code found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
