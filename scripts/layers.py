#!/usr/bin/python3
"""layers.py: check that libnbx's core files form the layers
docs/architecture.md declares.

    scripts/layers.py --doc docs/architecture.md --core core OBJECT_OR_ARCHIVE...

The call graph between core files is derived from the built objects (nm:
which file defines a global symbol, which files use it), so it is the code
as compiled, not as a reader of the source guesses it. The layers come from
the table under the heading "## Layers" of the doc: one row per layer,
lowest first, its files in backquotes:

    | 1 base | `util.c`, `time.c` | ... |

Fails (exit 1), saying what to change, when:
- a core file (core/*.c, core/*.lua) is in no layer, or in two, or the doc
  lists a file that does not exist (the doc must stay true);
- an object belongs to no listed file;
- a file calls a file of a higher layer;
- files call each other in a circle (also within one layer).

A file's generated object (core/NAME.lua is built into NAME_lua.c.o) counts
as that file. Only symbols defined in the objects given are edges: calls
into libc, LMDB or LuaJIT are not.
"""
import argparse
import os
import re
import subprocess
import sys

DOC_HEADING = "## Layers"


def fail_usage(msg):
    print("layers.py: " + msg, file=sys.stderr)
    sys.exit(2)


def read_layers(doc_path):
    """[(number, name, [files])] from the doc's Layers table, in order."""
    try:
        with open(doc_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        fail_usage(f"cannot read {doc_path}: {e.strerror}")
    try:
        start = lines.index(DOC_HEADING)
    except ValueError:
        fail_usage(f"{doc_path} has no '{DOC_HEADING}' section")
    layers = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2:
            continue
        m = re.match(r"(\d+)\s+(.*)", cells[0])
        if not m:
            continue  # the header and separator rows
        files = re.findall(r"`([^`]+)`", cells[1])
        layers.append((int(m.group(1)), m.group(2), files))
    if not layers:
        fail_usage(f"{doc_path}: no layer rows ('| 1 name | `file.c`, ... |') under "
                   f"'{DOC_HEADING}'")
    numbers = [n for n, _, _ in layers]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        fail_usage(f"{doc_path}: layers must be numbered upwards, lowest first: {numbers}")
    return layers


def symbols(paths):
    """{unit: (defined, used)} for each object file (or archive member)."""
    units = {}
    for path in paths:
        out = subprocess.run(["nm", path], capture_output=True, text=True)
        if out.returncode != 0:
            fail_usage(f"nm {path}: {out.stderr.strip()}")
        unit = os.path.basename(path)
        for line in out.stdout.splitlines():
            if line.endswith(":") and " " not in line:  # an archive member
                unit = line[:-1]
                continue
            parts = line.split()
            if not parts:
                continue
            entry = units.setdefault(unit, (set(), set()))
            if len(parts) == 2 and parts[0] == "U":
                entry[1].add(parts[1])
            elif len(parts) == 3 and parts[1] in "TDBRVWG":
                entry[0].add(parts[2])
    return units


def source_of(unit):
    """core file name of an object: json.c.o -> json.c, sandbox_lua.c.o ->
    sandbox.lua (the generated embedding of core/sandbox.lua)."""
    name = unit[:-2] if unit.endswith(".o") else unit
    m = re.fullmatch(r"(.+)_lua\.c", name)
    return m.group(1) + ".lua" if m else name


def find_cycles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def cycle_path(comp, edges):
    """The shortest circle from the component's first file back to it."""
    members, start = set(comp), comp[0]
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ())):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return comp + [comp[0]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", required=True, help="docs/architecture.md")
    ap.add_argument("--core", required=True, help="the core source directory")
    ap.add_argument("objects", nargs="+", help="the library's objects, or its static archive")
    args = ap.parse_args()

    layers = read_layers(args.doc)
    problems = []
    layer_of = {}
    for number, name, files in layers:
        for f in files:
            if f in layer_of:
                problems.append(f"{f} is listed in layer {layer_of[f][0]} and in layer {number} "
                                f"of {args.doc}: a file belongs to one layer")
            layer_of[f] = (number, name)
    sources = sorted(f for f in os.listdir(args.core)
                     if f.endswith(".c") or f.endswith(".lua"))
    for f in sources:
        if f not in layer_of:
            problems.append(f"core/{f} is in no layer: add it to the '{DOC_HEADING}' table of "
                            f"{args.doc}, in the lowest layer whose files it calls only")
    for f in sorted(layer_of):
        if f not in sources:
            problems.append(f"{args.doc} lists {f} in layer {layer_of[f][0]}, but core/{f} "
                            f"does not exist: take it out of the table")

    units = symbols(args.objects)
    defined_by, used_by = {}, {}
    for unit, (defs, uses) in units.items():
        src = source_of(unit)
        if src not in layer_of and src in sources:
            continue  # reported above
        if src not in layer_of:
            problems.append(f"object {unit} is built from no core file the doc lists "
                            f"(expected core/{src})")
            continue
        for s in defs:
            defined_by[s] = src
        used_by.setdefault(src, set()).update(uses)

    edges, via = {}, {}
    for src, uses in used_by.items():
        for s in uses:
            dst = defined_by.get(s)
            if dst and dst != src:
                edges.setdefault(src, set()).add(dst)
                via.setdefault((src, dst), set()).add(s)

    def calls(a, b):
        return ", ".join(sorted(via[(a, b)]))

    for (src, dst) in sorted(via):
        (ls, ns), (ld, nd) = layer_of[src], layer_of[dst]
        if ld > ls:
            problems.append(f"core/{src} (layer {ls} {ns}) calls up into core/{dst} (layer {ld} "
                            f"{nd}): {calls(src, dst)}. A file calls only its own layer or lower "
                            f"ones: move the code down, or the caller up")
    for comp in find_cycles(edges):
        path = cycle_path(comp, edges)
        steps = "; ".join(f"{a} calls {b}: {calls(a, b)}" for a, b in zip(path, path[1:]))
        problems.append(f"call cycle: {' -> '.join(path)} ({steps}). Files that call each "
                        f"other are one concern or need a lower file both call")

    if problems:
        for p in problems:
            print("layers: " + p)
        print(f"layers: {len(problems)} problem(s); the layers are declared in {args.doc}, "
              f"'{DOC_HEADING}'")
        return 1
    n_edges = sum(len(v) for v in edges.values())
    print(f"layers: {len(layer_of)} core files in {len(layers)} layers, {n_edges} calls between "
          f"files: none goes up, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
