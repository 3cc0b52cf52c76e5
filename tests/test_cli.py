"""The `lockstep` command as users run it: a real process, the embedded default, one lifecycle.

corpus load -> train (sampled fit) -> index build (type chosen by size) -> index show ->
routing show/set -> search, and bad input answered with one clear line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _lockstep(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("lockstep", path=str(Path(sys.executable).parent)) or "lockstep"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "MLFLOW_"))}
    env.update(LOCKSTEP_HOME=str(home), LOCKSTEP_CACHE_DIR=str(home / "cache"))
    done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, f"lockstep {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    from lockstep.store.corpus import demo_sample
    from tests.conftest import DEMO_CACHE

    path = tmp_path_factory.mktemp("cli-corpus") / "records.jsonl"
    with pytest.MonkeyPatch.context() as mp, path.open("w", encoding="utf-8") as out:
        mp.setenv("LOCKSTEP_CACHE_DIR", str(DEMO_CACHE))
        for record in demo_sample(600, seed=11):
            out.write(json.dumps({"id": record.id, "text": record.text, **record.metadata}) + "\n")
    return path


def test_one_lifecycle_through_the_command_line(tmp_path, corpus_file):
    home = tmp_path / "home"
    loaded = _lockstep(home, "corpus", "load", "--path", str(corpus_file))
    assert "600" in loaded.stdout + loaded.stderr

    trained = _lockstep(home, "train", "--dim", "32", "--fit-sample", "300")
    assert "registered lockstep-embedder v1 (challenger)" in trained.stdout

    built = json.loads(_lockstep(home, "index", "build", "--model-version", "1").stdout)
    shown = json.loads(_lockstep(home, "index", "show", "--model-version", "1").stdout)
    assert shown["record_count"] == 600 and shown["index_type"] == "flat"  # below LOCKSTEP_ANN_THRESHOLD
    assert built["model_version"] == "1"

    routing = _lockstep(home, "routing", "show").stdout
    assert "1" in routing and "100" in routing
    _lockstep(home, "routing", "set", "1=100")

    answer = _lockstep(home, "search", "space shuttle launch", "-k", "3").stdout
    assert answer.startswith("model version 1 ")
    assert answer.count("ng-train-") == 3  # k results, each a record id of the corpus


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path):
    home = tmp_path / "home"
    both = _lockstep(home, "corpus", "load", check=False)
    assert both.returncode == 2 and "give exactly one of --demo or --path FILE" in both.stderr
    assert "Traceback" not in both.stderr
    missing = _lockstep(home, "index", "build", "--model-version", "1", "--index-type", "bogus", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
