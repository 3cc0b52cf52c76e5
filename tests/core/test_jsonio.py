"""The one JSON helper: strict JSON out of numpy, datetimes, Paths and NaN, by one policy."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from lockstep.core import jsonio


def test_plain_turns_every_kind_of_value_into_json_values():
    value = {
        "int": np.int64(3), "float": np.float32(0.5), "bool": np.bool_(True), "array": np.arange(3),
        "matrix": np.ones((2, 2)), "nan": float("nan"), "inf": np.float64("inf"), "when": datetime(2026, 5, 1, 12, tzinfo=UTC),
        "day": date(2026, 5, 1), "clock": time(12, 30), "path": Path("/srv/index"), "money": Decimal("1.25"),
        "tuple": (1, "a"), "set": {7}, 4: "int key", "none": None, "text": "ok",
    }
    assert jsonio.plain(value) == {
        "int": 3, "float": 0.5, "bool": True, "array": [0, 1, 2], "matrix": [[1.0, 1.0], [1.0, 1.0]], "nan": None,
        "inf": None, "when": "2026-05-01T12:00:00+00:00", "day": "2026-05-01", "clock": "12:30:00", "path": "/srv/index",
        "money": 1.25, "tuple": [1, "a"], "set": [7], "4": "int key", "none": None, "text": "ok",
    }
    assert type(jsonio.plain(np.int64(3))) is int and type(jsonio.plain(True)) is bool


def test_unknown_objects_become_text_unless_strict():
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert jsonio.plain({"x": Odd()}) == {"x": "odd"}
    with pytest.raises(TypeError, match="a Odd value is not JSON"):
        jsonio.plain({"x": [Odd()]}, strict=True)
    with pytest.raises(TypeError, match="a bytes value is not JSON"):
        jsonio.plain(b"raw", strict=True)


def test_dumps_writes_strict_json_and_loads_reads_it_back():
    text = jsonio.dumps({"b": float("nan"), "a": np.float64(1.5)}, indent=2, sort_keys=True)
    assert "NaN" not in text and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == jsonio.loads(text) == {"a": 1.5, "b": None}
    assert jsonio.loads(b'{"x": 1}') == {"x": 1}
    with pytest.raises(ValueError, match="the report is not valid JSON"):
        jsonio.loads("{nope", what="the report")


def test_finite_floats_pass_unchanged():
    for x in (0.0, -1e-300, 1e300, math.pi):
        assert jsonio.plain(x) == x
