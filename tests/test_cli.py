"""The `lockstep` command as users run it: a real process, the embedded default, one lifecycle.

corpus load -> train (sampled fit) -> index build (type chosen by size) -> index show ->
routing show/set -> search; the database commands; and errors answered with one clear line:
exit code 2 for usage errors (Click's convention), 1 for runtime errors.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lockstep.store.migrations import head_revision

pytestmark = pytest.mark.slow


def _lockstep(home: Path, *args: str, check: bool = True, **settings: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lockstep", path=str(Path(sys.executable).parent)) or "lockstep"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "MLFLOW_"))}
    env.update(LOCKSTEP_HOME=str(home), LOCKSTEP_CACHE_DIR=str(home / "cache"), **settings)
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

    # A reviewer's decision from the command line records who decided; a blank name is refused.
    assert _lockstep(home, "review", "approve", "1", "--by", "alice").stdout == "lockstep-embedder version 1: approved by alice\n"
    blank = _lockstep(home, "review", "reject", "1", "--by", " ", check=False)
    assert blank.returncode == 1 and blank.stderr.startswith("error: reviewer '': give a user name")
    from lockstep.model.registry import Registry

    tags = Registry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=home / "mlartifacts").get_version("1").tags
    assert (tags["lockstep.review"], tags["lockstep.review.by"], tags["lockstep.review.via"]) == ("approved", "alice", "mlflow")
    assert _lockstep(home, "review", "approve", "0", check=False).returncode == 2  # versions start at 1

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

    # No set-up step: the first command brought the embedded database to the newest revision.
    assert _lockstep(home, "db", "current").stdout == f"{head_revision()} (head)\n"


def test_train_takes_a_model_family(tmp_path, corpus_file):
    from lockstep.model.registry import Registry

    home = tmp_path / "home"
    _lockstep(home, "corpus", "load", "--path", str(corpus_file))
    trained = _lockstep(home, "train", "--family", "word_vectors", "--dim", "32", "--fit-sample", "300")
    assert "registered lockstep-embedder v1 (challenger)" in trained.stdout
    version = Registry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=home / "mlartifacts").get_version("1")
    assert version.tags["lockstep.family"] == "word_vectors" and version.dim == 32
    unknown = _lockstep(home, "train", "--family", "bert", check=False)
    assert unknown.returncode == 1 and "unknown model family 'bert'; choose one of: tfidf_svd, word_vectors" in unknown.stderr


def test_usage_errors_are_one_clear_line_and_exit_code_2(tmp_path):
    home = tmp_path / "home"
    both = _lockstep(home, "corpus", "load", check=False)
    assert both.returncode == 2
    assert "Error: Invalid value for '--demo' / '--path': give exactly one of --demo or --path FILE" in both.stderr
    bogus = _lockstep(home, "index", "build", "--model-version", "1", "--index-type", "bogus", check=False)
    assert bogus.returncode == 2
    assert "Error: Invalid value for '--index-type': 'bogus' is not one of auto, flat, ivf, hnsw" in bogus.stderr
    unknown = _lockstep(home, "db", "downgrade", check=False)
    assert unknown.returncode == 2 and "No such command 'downgrade'" in unknown.stderr
    for done in (both, bogus, unknown):
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_runtime_errors_are_one_clear_line_and_exit_code_1(tmp_path):
    home = tmp_path / "home"
    unbuilt = _lockstep(home, "index", "show", "--model-version", "7", check=False)
    assert unbuilt.returncode == 1
    assert unbuilt.stderr.startswith("error: no index at ") and "v7: manifest.json is missing" in unbuilt.stderr
    with socket.socket() as closed:  # a port nothing listens on once this socket is gone
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = _lockstep(home, "db", "current", check=False,
                            LOCKSTEP_DATABASE_URL=f"postgresql+psycopg://nobody:secret@127.0.0.1:{port}/lockstep")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"error: cannot reach the Lockstep database at 'postgresql+psycopg://nobody:***@127.0.0.1:{port}/lockstep'")
    assert "secret" not in unreachable.stderr
    for done in (unbuilt, unreachable):
        assert "Traceback" not in done.stderr


def test_version_is_the_package_version(tmp_path):
    import lockstep

    done = _lockstep(tmp_path / "home", "--version")
    assert done.stdout == f"lockstep {lockstep.__version__}\n"
    assert lockstep.__version__ != "0+unknown"  # the installed package's metadata was read


def test_db_upgrade_and_current_on_a_fresh_home(tmp_path):
    home, head = tmp_path / "home", head_revision()
    assert _lockstep(home, "db", "current").stdout == (
        f"none: an empty database or one made before migrations (head is {head}; lockstep db upgrade)\n")
    assert _lockstep(home, "db", "upgrade").stdout == f"upgraded from an empty database to revision {head} (head)\n"
    assert _lockstep(home, "db", "current").stdout == f"{head} (head)\n"
    assert _lockstep(home, "db", "upgrade").stdout == f"already at revision {head} (head)\n"

    def stamp(revision: str) -> None:  # what an older or a newer Lockstep would have left
        with sqlite3.connect(home / "lockstep.db") as db:
            db.execute("UPDATE lockstep_alembic_version SET version_num = ?", (revision,))

    stamp("0001")
    assert _lockstep(home, "db", "current").stdout == f"0001 (head is {head}; lockstep db upgrade)\n"
    stamp("9999")
    assert _lockstep(home, "db", "current").stdout == (
        f"9999: not a revision of this Lockstep (head is {head}); a newer Lockstep migrated it\n")
    refused = _lockstep(home, "db", "upgrade", check=False)
    assert refused.returncode == 1 and "a newer Lockstep has migrated it" in refused.stderr
