#!/usr/bin/env python3
"""Checks that the modules under src/ depend on each other one way only (doc/architecture.md).

Reads every `crate::`, `super::` and `self::` path in src/ (use lines, paths written inline, and paths in doc
comments, since a doc link ties the two modules' docs together as much as a use does) and builds two
graphs: one between the top-level modules (delivery -> spool) and one between the sub-modules of each of them
(delivery::attempt -> delivery::mbox). A module's own mod.rs may use its children and they may use what it
re-exports; every other edge counts. Exits 1 naming each cycle found; prints the graph with --print.

    python3 tests/module_graph.py [--print] [SRC]
"""

import pathlib
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_path(src, file):
    """The module path of a source file: src/delivery/mbox.rs -> ["delivery", "mbox"]; lib.rs -> []."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return parts


DOC_COMMENT = re.compile(r"///[^\n]*|//![^\n]*|/\*[*!].*?\*/", re.S)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def doc_comments(text):
    """The doc comments of a source file (`///`, `//!`, `/** */`, `/*! */`), whose paths are links, never use trees."""
    return "\n".join(DOC_COMMENT.findall(text))


def expand(tree):
    """Paths of a use tree: "a::{b, c::{d}}" -> ["a::b", "a::c::d"]."""
    tree = tree.strip()
    start = tree.find("{")
    if start < 0:
        return [tree]
    prefix, inner = tree[:start], tree[start + 1:tree.rindex("}")]
    items, depth, item = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(item)
            item = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        item += ch
    items.append(item)
    return [path for item in items if item.strip() for path in expand(prefix + item.strip())]


def referenced(text, here, docs=""):
    """Absolute module paths (lists of names) that `text`, the source of module `here` without comments, and
    `docs`, its doc comments, refer to."""
    paths = []
    for tree in re.findall(r"\buse\s+([^;]+);", text):
        paths += expand(tree)
    paths += re.findall(rf"(?<![:\w])((?:crate|super|self)(?:::{IDENT})+)", text + "\n" + docs)
    for path in paths:
        names = [n.strip() for n in path.split("::") if n.strip()]
        if not names or names[0] not in ("crate", "super", "self"):
            continue
        base = list(here)
        while names and names[0] in ("super", "self"):
            if names.pop(0) == "super":
                base = base[:-1]
        if names and names[0] == "crate":
            names.pop(0)
            base = []
        yield base + [n.split(" as ")[0].strip() for n in names if n not in ("*",)]


def graphs(src):
    files = {tuple(module_path(src, f)): f for f in sorted(src.rglob("*.rs"))}
    modules = set(files)
    top, sub = {}, {}
    for here, file in files.items():
        if not here:
            continue
        source = file.read_text()
        for target in referenced(strip_comments(source), here, doc_comments(source)):
            # The longest prefix that names a module: crate::spool::Envelope is the module spool.
            while target and tuple(target) not in modules:
                target = target[:-1]
            if not target:
                continue
            if here[0] != target[0]:
                top.setdefault(here[0], set()).add(target[0])
            elif len(here) > 1 and len(target) > 1 and here[1] != target[1]:
                node = lambda path: "::".join(path[:2])
                sub.setdefault(node(here), set()).add(node(target))
    return top, sub


def cycles(graph):
    """Each cycle once, as a list of nodes, found by depth-first search."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def main(argv):
    show = "--print" in argv
    args = [a for a in argv if a != "--print"]
    src = pathlib.Path(args[0] if args else pathlib.Path(__file__).resolve().parent.parent / "src")
    top, sub = graphs(src)
    if show:
        for graph in (top, sub):
            for node in sorted(graph):
                print(f"{node} -> {', '.join(sorted(graph[node]))}")
            print()
    problems = cycles(top) + cycles(sub)
    for cycle in problems:
        print("module cycle: " + " -> ".join(cycle), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
