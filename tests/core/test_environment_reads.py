"""The environment is read in ``lockstep.core.config`` and nowhere else.

So every variable Lockstep understands is named in one package (and the README's table
can be checked against it). Writes stay allowed where they are (the CLI sets
``LOCKSTEP_SYSTEM`` for what it starts, library switches are set by default), and so is
the registry's save-and-restore of MLflow's URIs around a call (``_scoped``): it reads
back what it puts back, no setting.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "lockstep"
CONFIG = PACKAGE / "core" / "config"
# os.environ methods that change it (setdefault reads only to leave a set value alone)
WRITES = {"setdefault", "pop", "popitem", "update", "clear"}
# (file, function) pairs allowed to read: a save-and-restore, not a setting
ALLOWED = {("model/registry/store.py", "_scoped")}


def _is_environ(node: ast.AST, environ_names: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in environ_names


def _is_getenv(node: ast.AST, getenv_names: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "getenv":
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in getenv_names


def environment_reads(source: str) -> list[tuple[int, str | None]]:
    """(line, enclosing function) of every read of the environment in ``source``.

    A read is ``os.getenv(...)``, ``os.environ.get(...)``, ``os.environ[...]`` loaded, or
    ``os.environ`` passed on as a value (``dict(os.environ)``, ``env or os.environ``);
    ``from os import environ, getenv`` counts too.
    """
    tree = ast.parse(source)
    environ_names: set[str] = set()
    getenv_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            environ_names |= {a.asname or a.name for a in node.names if a.name == "environ"}
            getenv_names |= {a.asname or a.name for a in node.names if a.name == "getenv"}
    reads: list[tuple[int, str | None]] = []

    def visit(node: ast.AST, parent: ast.AST | None, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        called_getenv = _is_getenv(node, getenv_names) and isinstance(parent, ast.Call) and parent.func is node
        if called_getenv or (_is_environ(node, environ_names) and not _is_write(node, parent)):
            reads.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, node, function)

    visit(tree, None, None)
    return reads


def _is_write(node: ast.AST, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.Attribute) and parent.value is node:
        return parent.attr in WRITES
    if isinstance(parent, ast.Subscript) and parent.value is node:
        return isinstance(parent.ctx, ast.Store | ast.Del)
    return isinstance(parent, ast.ImportFrom)


def test_no_module_outside_core_config_reads_the_environment():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if CONFIG in path.parents:
            continue
        name = path.relative_to(PACKAGE).as_posix()
        for line, function in environment_reads(path.read_text()):
            if (name, function) not in ALLOWED:
                found.append(f"{name}:{line} (in {function or 'the module'})")
    assert not found, "read the environment through lockstep.core.config instead:\n" + "\n".join(found)


def test_the_scan_tells_reads_from_writes():
    source = '''
import os
from os import environ as env_map, getenv
A = os.environ.get("A")
B = os.getenv("B")
C = os.environ["C"]
D = dict(os.environ)
E = env_map.get("E")
F = getenv("F")
def f(env=None):
    return env or os.environ
os.environ["W"] = "1"
os.environ.setdefault("W", "1")
os.environ.pop("W", None)
del os.environ["W"]
'''
    assert [line for line, _ in environment_reads(source)] == [4, 5, 6, 7, 8, 9, 11]
    assert environment_reads(source)[-1] == (11, "f")


def test_the_allowed_read_is_still_there():
    """Drop an ALLOWED entry when its read goes away (the list must not hide new reads)."""
    for name, function in ALLOWED:
        reads = environment_reads((PACKAGE / name).read_text())
        assert any(f == function for _, f in reads), f"{name}:{function} no longer reads the environment"
