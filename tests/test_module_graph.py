"""The modules under src/ form a DAG (doc/architecture.md), checked by tests/module_graph.py, which `make lint` also runs."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "module_graph.py"


def check(src):
    return subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True, text=True, timeout=60)


def writer(root):
    """write(path, text): puts one source file of a tree under `root`."""

    def write(path, text):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    return write


def test_the_modules_of_postel_depend_on_each_other_one_way():
    result = check(SCRIPT.parent.parent / "src")
    assert result.returncode == 0, result.stderr


def test_a_cycle_between_modules_or_between_sub_modules_is_found(tmp_path):
    write = writer(tmp_path)
    write("lib.rs", "pub mod a;\npub mod b;\n")
    write("a/mod.rs", "pub mod x;\npub mod y;\npub use x::X;\n")
    write("a/x.rs", "use super::y::Y; // a child may use its parent: crate::a::X\nuse crate::a::X;\n")
    write("a/y.rs", "pub fn f() { crate::a::X::new(); }\n// crate::b::h() in a comment is no dependency\n")
    write("b/mod.rs", "use crate::{a::{self, y}, b};\n")
    assert check(tmp_path).returncode == 0, "no cycle yet: a::x -> a::y, b -> a"
    write("a/y.rs", "pub fn f() { crate::b::h(); }\n")
    result = check(tmp_path)
    assert result.returncode == 1
    assert "module cycle: a -> b -> a" in result.stderr, result.stderr
    write("a/y.rs", "use super::x;\n")
    result = check(tmp_path)
    assert result.returncode == 1
    assert "module cycle: a::x -> a::y -> a::x" in result.stderr, result.stderr


def test_a_doc_link_is_a_dependency_and_prose_in_a_doc_comment_is_not(tmp_path):
    write = writer(tmp_path)
    write("lib.rs", "pub mod a;\npub mod b;\n")
    write("a.rs", "//! Used by b; we use nothing; so no cycle.\n/// Plain words: use b; then stop.\npub fn f() {}\n")
    write("b.rs", "use crate::a;\n")
    assert check(tmp_path).returncode == 0, "prose saying 'use b;' in a doc comment is no dependency"
    for doc in ("//! The caller is [`crate::b`].\n", "/// See [`h`](crate::b::h).\npub fn f() {}\n",
                "/** Its caller: [`super::b`]. */\npub fn f() {}\n"):
        write("a.rs", doc)
        result = check(tmp_path)
        assert result.returncode == 1, doc
        assert "module cycle: a -> b -> a" in result.stderr, result.stderr
