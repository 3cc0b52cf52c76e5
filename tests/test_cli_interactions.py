"""`lockstep interactions load` as users run it: a real process on the embedded default (and
on a real PostgreSQL), MovieLens-100k twice, a user's files, bad input refused with nothing
written, usage errors; and `lockstep db upgrade` of a database from before the interactions.

Interactions belong to the recommender's deployment: its database is
``LOCKSTEP_RECOMMENDER_DATABASE_URL``, by default ``recommender.db`` in the home folder."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command

from lockstep.store.db import dispose_engines, get_engine
from lockstep.store.migrations.runner import HEAD, alembic_config
from lockstep.store.records import RecordStore
from tests.conftest import DEMO_CACHE

pytestmark = pytest.mark.slow

T0 = 1_700_000_000


def _lockstep(home: Path, *args: str, check: bool = True, **settings: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lockstep", path=str(Path(sys.executable).parent)) or "lockstep"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "MLFLOW_"))}
    env.update(LOCKSTEP_HOME=str(home), LOCKSTEP_CACHE_DIR=str(DEMO_CACHE), **settings)  # MovieLens cached once
    done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, f"lockstep {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _count(home: Path, table: str) -> int:
    with sqlite3.connect(home / "recommender.db") as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _demo_twice(home: Path, **settings: str) -> None:
    first = _lockstep(home, "interactions", "load", "--demo", **settings)
    assert first.stdout.splitlines() == [
        "items: 1,682 new; users: 943 new",
        first.stdout.splitlines()[1],
        "the store holds 100,000 interactions of 943 users on 1,682 items; interaction log at sequence 100000",
    ]
    assert first.stdout.splitlines()[1].startswith("100,000 interactions at sequences 1..100000 (100,000 rows checked in ")
    assert "loading interactions" in first.stderr  # the progress bar

    second = _lockstep(home, "interactions", "load", "--demo", **settings)
    lines = second.stdout.splitlines()
    assert lines[0] == "items: 0 new; users: 0 new"
    assert lines[1].startswith("nothing new: all 100,000 interactions were stored before")
    assert lines[2].endswith("interaction log at sequence 100000")


def test_the_demo_loads_movielens_once_and_a_second_run_loads_nothing_new(tmp_path):
    home = tmp_path / "home"
    _demo_twice(home)
    assert (_count(home, "lockstep_interactions"), _count(home, "lockstep_users"), _count(home, "lockstep_items")) == (
        100_000, 943, 1682)


@pytest.mark.postgres
def test_the_demo_on_postgresql(tmp_path, postgres_url):
    _demo_twice(tmp_path / "home", LOCKSTEP_RECOMMENDER_DATABASE_URL=postgres_url)


def test_a_users_files_load_and_load_again_as_nothing_new(tmp_path):
    home = tmp_path / "home"
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,genre\nm1,Alien,scifi\nm2,Heat,crime\n", encoding="utf-8")
    inter = tmp_path / "inter.csv"
    inter.write_text(f"user_id,item_id,value,timestamp\nu1,m1,5,{T0}\nu2,m2,3,{T0 + 1}\nu1,m2,,\n", encoding="utf-8")

    first = _lockstep(home, "interactions", "load", "--path", str(inter), "--items", str(items))
    assert first.stdout.splitlines()[0] == "items: 2 new; users: 0 new"
    assert first.stdout.splitlines()[1].startswith("3 interactions at sequences 1..3 ")
    assert first.stdout.splitlines()[2] == (
        "the store holds 3 interactions of 2 users on 2 items; interaction log at sequence 3")

    with inter.open("a", encoding="utf-8") as fh:
        fh.write(f"u3,m1,4,{T0 + 2}\n")
    again = _lockstep(home, "interactions", "load", "--path", str(inter))
    assert again.stdout.splitlines()[0].startswith("1 interactions at sequences 4..4; 3 stored before were skipped")
    assert _count(home, "lockstep_interactions") == 4


def test_a_bad_file_is_refused_naming_its_rows_and_nothing_is_written(tmp_path):
    home = tmp_path / "home"
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\nm1,Alien\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"user_id,item_id,value,timestamp\nu1,m1,5,{T0}\nu2,m1,five,{T0}\n", encoding="utf-8")

    done = _lockstep(home, "interactions", "load", "--path", str(bad), "--items", str(items), check=False)

    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {bad} cannot be loaded, nothing was loaded")
    assert "value is not a number (e.g. 'five'): row 2 (1 in all)" in done.stderr
    assert not (home / "recommender.db").exists() or _count(home, "lockstep_items") == 0


def test_items_missing_from_the_catalogue_are_named_unless_new_items_are_allowed(tmp_path):
    home = tmp_path / "home"
    inter = tmp_path / "inter.jsonl"
    inter.write_text('{"user_id": "u1", "item_id": "m1"}\n{"user_id": "u1", "item_id": "m9"}\n', encoding="utf-8")

    refused = _lockstep(home, "interactions", "load", "--path", str(inter), check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {inter}: 2 item id(s) not in the item catalogue: 'm1', 'm9'")
    assert "nothing was loaded" in refused.stderr and "--allow-new-items" in refused.stderr
    assert _count(home, "lockstep_interactions") == 0

    allowed = _lockstep(home, "interactions", "load", "--path", str(inter), "--allow-new-items")
    assert allowed.stdout.splitlines()[0].startswith("2 interactions at sequences 1..2")
    assert _count(home, "lockstep_items") == 2


def test_usage_errors_exit_2_with_one_line(tmp_path):
    home = tmp_path / "home"
    neither = _lockstep(home, "interactions", "load", check=False)
    both = _lockstep(home, "interactions", "load", "--demo", "--path", "x.csv", check=False)
    items = _lockstep(home, "interactions", "load", "--demo", "--items", "i.csv", check=False)
    for done in (neither, both):
        assert done.returncode == 2 and done.stdout == ""
        assert "Error: Invalid value for '--demo' / '--path': give exactly one of --demo or --path FILE" in done.stderr
    assert items.returncode == 2
    assert "Error: Invalid value for '--items': --items goes with --path" in items.stderr


@pytest.mark.parametrize("system", ["search", "recommender"])
def test_db_upgrade_brings_a_database_from_before_the_interactions_to_the_head(tmp_path, monkeypatch, system):
    """A database left at 0002 by the previous release, with a record in it."""
    home = tmp_path / "home"
    home.mkdir()
    database = home / ("lockstep.db" if system == "search" else "recommender.db")
    monkeypatch.setenv("LOCKSTEP_HOME", str(home))
    engine = get_engine(f"sqlite:///{database}", migrate=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
    RecordStore(engine).upsert("r1", "kept")
    dispose_engines()
    assert _lockstep(home, "db", "current", LOCKSTEP_SYSTEM=system).stdout == f"0002 (head is {HEAD}; lockstep db upgrade)\n"

    done = _lockstep(home, "db", "upgrade", LOCKSTEP_SYSTEM=system)

    assert done.stdout == f"upgraded from 0002 to revision {HEAD} (head)\n"
    assert _lockstep(home, "db", "current", LOCKSTEP_SYSTEM=system).stdout == f"{HEAD} (head)\n"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM lockstep_records").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM lockstep_interactions").fetchone()[0] == 0
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id\nu1,m1\n", encoding="utf-8")
    assert _lockstep(home, "interactions", "load", "--path", str(inter), "--allow-new-items").returncode == 0
