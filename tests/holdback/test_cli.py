"""``lockstep holdback set|show|clear`` on a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lockstep.cli import app
from lockstep.core import clock
from lockstep.store import routing
from lockstep.store.db import get_engine
from tests.holdback.test_report import write


@pytest.fixture
def slots(lockstep_home):
    for v in ("1", "2"):
        routing.register_slot(v, f"models:/m/{v}", f"/idx/v{v}", f"sha256:{v * 8}", state="ready")
    routing.set_weights({"2": 100})
    return lockstep_home


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_set_show_and_clear(slots):
    assert "holdback: 5 % of users on version 1 (routing generation" in _ok("holdback", "set", "1", "5")
    held = routing.read_holdback()
    assert (held.model_version, held.percent, held.set_by) == ("1", 5.0, "lockstep holdback set")
    assert "holdback: 5 % of users on version 1" in _ok("routing", "show")

    engine = get_engine()
    yesterday = (clock.now() - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)  # whole rows on one day
    for i in range(4):
        write(engine, f"h{i}", "1", at=yesterday, n=3, clicks=int(i < 2), holdback=True)
        write(engine, f"c{i}", "2", at=yesterday, n=5, clicks=int(i < 3))
    shown = _ok("holdback", "show", "--days", "3")
    lines = shown.splitlines()
    assert lines[0].startswith("holdback: 5 % of users on version 1 (set ") and "by lockstep holdback set" in lines[0]
    day = next(line for line in lines if line.startswith(yesterday.date().isoformat()))
    # 3 of 4 user-days clicked against 2 of 4: +50 %
    assert day.split()[:8] == [yesterday.date().isoformat(), "v2", "0.750", "4", "v1", "0.500", "4", "+50.0%"]
    days = json.loads(_ok("holdback", "show", "--json"))["days"]
    assert [(d["day"], round(d["lift"], 9)) for d in days] == [(yesterday.date().isoformat(), 0.5)]

    assert "holdback on version 1 (5 % of users) cleared" in _ok("holdback", "clear")
    assert routing.read_holdback() is None
    assert "no holdback was set; nothing changed" in _ok("holdback", "clear")
    assert "holdback: none set" in _ok("holdback", "show")


def test_bad_input_is_one_error_line_and_changes_nothing(slots):
    lockstep = Path(sys.executable).with_name("lockstep")
    env = {**os.environ, "LOCKSTEP_HOME": str(slots)}
    for args, message in ((["9", "5"], "error: no slot for model version 9 (registered slots: 1, 2)"),
                          (["1", "75"], "error: the holdback percent is 75.0; it must be above 0 and at most 50")):
        done = subprocess.run([str(lockstep), "holdback", "set", *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
    usage = subprocess.run([str(lockstep), "holdback", "set", "1", "five"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "Invalid value for 'percent'" in usage.stderr
    assert routing.read_holdback() is None
