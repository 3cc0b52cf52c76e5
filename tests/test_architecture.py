"""The architecture contract: layers without upward imports, pure strategies, thin DAG files.

The layers and the purity rule live in ``.importlinter`` (import-linter checks every import,
including indirect ones); the DAG rule is checked here because DAG files are not a package.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((ROOT / "dags").glob("lockstep_*.py"))
# What a DAG file may import from the package: a pipeline's steps, the shared DAG support,
# and the rollout's deferring operator (an Airflow operator is part of the DAG's plan).
ALLOWED = {"lockstep.ops.dag_support", "lockstep.rollout.operator", "lockstep.ops.retention"}  # and lockstep.systems.steps


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def _package_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lockstep"):
            for alias in node.names:
                module = f"{node.module}.{alias.name}"
                found.add(module if importlib.util.find_spec(node.module).submodule_search_locations
                          and importlib.util.find_spec(module) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lockstep")}
    return found


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_dag_files_reach_the_package_only_through_steps(dag_file):
    imports = _package_imports(dag_file)
    assert imports, f"{dag_file.name} imports nothing from lockstep"
    stray = {m for m in imports if not m.endswith(".steps") and m not in ALLOWED}
    assert not stray, f"{dag_file.name} imports {sorted(stray)}: DAG tasks call a pipeline's steps module"


def test_no_module_is_left_at_the_top_level():
    top = sorted(p.name for p in (ROOT / "include" / "lockstep").glob("*.py"))
    assert top == ["__init__.py"], top
