"""A user's interactions and items files (CSV, JSONL, Parquet): what is read, and every kind
of bad row refused with the file, the rows and the problem named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lockstep.recommender.interactions_file import (
    InteractionsFileError,
    read_interactions_file,
    read_items_file,
)
from lockstep.store.interactions import prepare_interactions

T0 = 1_700_000_000
ISO_T0 = datetime.fromtimestamp(T0, UTC).isoformat()  # 2023-11-14T22:13:20+00:00


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_a_csv_is_read_with_ids_as_text_and_defaults_filled(tmp_path):
    path = _write(tmp_path / "inter.csv", (
        "user_id,item_id,value,timestamp,comment\n"
        f"007,0042,4.5,{T0},ignored\n"
        f"7,42,,{ISO_T0},\n"
        "u3,i3,2,,\n"
        "u4,i4,1,2023-11-14T22:13:20Z,\n"
        "u5,i5,1,2023-11-14T23:13:20+01:00,\n"
        "u6,i6,1,2023-11-14T22:13:20,\n"
    ))
    before = int(datetime.now(UTC).timestamp())

    frame = read_interactions_file(path)

    assert frame["user_id"].tolist() == ["007", "7", "u3", "u4", "u5", "u6"]
    assert frame["item_id"].tolist()[:2] == ["0042", "42"]
    assert frame["value"].tolist() == [4.5, 1.0, 2.0, 1.0, 1.0, 1.0]
    stamps = frame["timestamp"].tolist()
    assert stamps[:2] == [T0, T0] and stamps[3:] == [T0, T0, T0]  # ISO with Z, an offset, or none (UTC)
    assert before <= stamps[2] <= int(datetime.now(UTC).timestamp())  # no timestamp: the load time
    assert frame["timestamp"].dtype == np.int64 and frame["value"].dtype == np.float64
    prepare_interactions(frame)  # what the store checks again passes


def test_jsonl_and_parquet_read_the_same_interactions(tmp_path):
    rows = [{"user_id": 1, "item_id": "a", "value": 3, "timestamp": T0},
            {"user_id": "2", "item_id": 5, "value": None, "timestamp": ISO_T0},
            {"user_id": "3", "item_id": "c"}]
    from_jsonl = read_interactions_file(_jsonl(tmp_path / "inter.jsonl", rows))
    table = pa.table({"user_id": [1, 2], "item_id": ["a", "5"], "value": [3.0, None],
                      "timestamp": pa.array([datetime.fromtimestamp(T0, UTC)] * 2, pa.timestamp("s", tz="UTC"))})
    pq.write_table(table, tmp_path / "inter.parquet")
    from_parquet = read_interactions_file(tmp_path / "inter.parquet")

    assert from_jsonl["user_id"].tolist() == ["1", "2", "3"] and from_jsonl["item_id"].tolist() == ["a", "5", "c"]
    assert from_jsonl["value"].tolist() == [3.0, 1.0, 1.0]
    assert from_jsonl["timestamp"].tolist()[:2] == [T0, T0]
    cols = ["user_id", "item_id", "value", "timestamp", "source_message_id"]
    assert from_parquet[cols].to_dict("records") == from_jsonl[cols].iloc[:2].to_dict("records")


def test_every_bad_row_is_named_with_its_problem_and_nothing_is_returned(tmp_path):
    path = _write(tmp_path / "bad.csv", (
        "user_id,item_id,value,timestamp\n"
        f"u1,i1,1,{T0}\n"          # row 1: fine
        f",i1,1,{T0}\n"            # row 2: empty user
        f"u3, ,1,{T0}\n"           # row 3: blank item
        f"u4,i4,lots,{T0}\n"       # row 4: value not a number
        f"u5,i5,NaN,{T0}\n"        # row 5: NaN
        f"u6,i6,inf,{T0}\n"        # row 6: infinite
        "u7,i7,1,yesterday\n"      # row 7: not a time
        f"u8,i8,1,{T0 * 1000}\n"   # row 8: milliseconds
        f"u9,i9,1,{T0}.5\n"        # row 9: not an integer, not ISO 8601
    ))

    with pytest.raises(InteractionsFileError) as caught:
        read_interactions_file(path)

    message = str(caught.value)
    assert message.startswith(f"{path} cannot be loaded, nothing was loaded (rows counted from 1, header not counted)")
    assert "user_id is missing or empty: row 2 (1 in all)" in message
    assert "item_id is missing or empty: row 3 (1 in all)" in message
    assert "value is not a number (e.g. 'lots'): row 4 (1 in all)" in message
    assert "value is NaN or infinite (e.g. 'NaN'): rows 5, 6 (2 in all)" in message
    assert "timestamp is neither whole seconds nor an ISO 8601 time (e.g. 'yesterday'): rows 7, 9 (2 in all)" in message
    assert "timestamp is outside 1970-01-01 .. 9999-12-31 in seconds (milliseconds?)" in message and "row 8" in message
    assert "row 1 " not in message and "row 1," not in message


def test_jsonl_problems_name_their_lines(tmp_path):
    path = _write(tmp_path / "bad.jsonl", (
        json.dumps({"user_id": "u1", "item_id": "i1"}) + "\n"
        "\n"
        "{not json\n"
        "[1, 2]\n"
    ))
    with pytest.raises(InteractionsFileError, match=r"not JSON \(.*\): line 3 .*\n.*not a JSON object: line 4"):
        read_interactions_file(path)

    typed = _jsonl(tmp_path / "typed.jsonl", [
        {"user_id": "u1", "item_id": "i1", "value": True},
        {"user_id": 1.5, "item_id": "i1"},
        {"user_id": "u\u0007", "item_id": "i1"},
        {"user_id": "u4", "item_id": "i1", "timestamp": 1.5},
    ])
    with pytest.raises(InteractionsFileError) as caught:
        read_interactions_file(typed)
    message = str(caught.value)
    assert "value is not a number (e.g. True): line 1" in message
    assert "user_id is not text or a whole number (e.g. 1.5): line 2" in message
    assert "user_id contains a control character" in message and "line 3" in message
    assert "timestamp is not whole seconds (e.g. 1.5): line 4" in message


def test_a_file_that_cannot_be_read_at_all_gets_one_clear_error(tmp_path):
    with pytest.raises(InteractionsFileError, match=r"missing column 'item_id' \(columns found: 'user_id', 'value'\)"):
        read_interactions_file(_write(tmp_path / "a.csv", "user_id,value\nu1,1\n"))
    with pytest.raises(InteractionsFileError, match="unknown file type '.txt'"):
        read_interactions_file(_write(tmp_path / "a.txt", "x"))
    with pytest.raises(InteractionsFileError, match="no such file"):
        read_interactions_file(tmp_path / "missing.csv")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(InteractionsFileError, match="is a folder"):
        read_interactions_file(tmp_path / "folder.csv")
    with pytest.raises(InteractionsFileError, match="the file is empty"):
        read_interactions_file(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(InteractionsFileError, match="no rows"):
        read_interactions_file(_write(tmp_path / "header.csv", "user_id,item_id\n"))
    (tmp_path / "latin.jsonl").write_bytes(b'{"user_id": "u1", "item_id": "i1"}\n{"user_id": "caf\xe9"}\n')
    with pytest.raises(InteractionsFileError, match="not UTF-8 text \\(line 2"):
        read_interactions_file(tmp_path / "latin.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InteractionsFileError, match="cannot read it as Parquet"):
        read_interactions_file(tmp_path / "broken.parquet")


def test_message_ids_follow_the_content_so_a_reload_or_a_longer_file_repeats_none(tmp_path):
    rows = "user_id,item_id,value,timestamp\n" + f"u1,i1,5,{T0}\n" + f"u1,i1,5,{T0}\n" + "u2,i2,1,\n"
    first = read_interactions_file(_write(tmp_path / "a.csv", rows))["source_message_id"].tolist()
    again = read_interactions_file(tmp_path / "a.csv")["source_message_id"].tolist()
    longer = read_interactions_file(_write(tmp_path / "b.csv", rows + f"u3,i3,1,{T0}\n"))["source_message_id"].tolist()
    as_iso = read_interactions_file(_write(tmp_path / "c.csv", (
        "user_id,item_id,value,timestamp\n" f"u1,i1,5.0,{ISO_T0}\n")))["source_message_id"].tolist()

    assert len(set(first)) == 3 and first[0].endswith("#1") and first[1].endswith("#2")
    assert again == first  # the row without a timestamp too: its id does not hash the load time
    assert longer[:3] == first and longer[3] not in first
    assert as_iso == first[:1]  # the same event however its time and value are spelled


def test_an_items_file_gives_titles_and_metadata_and_refuses_repeated_ids(tmp_path):
    frame = read_items_file(_write(tmp_path / "items.csv", "item_id,title,year\n0042,Alien,1979\n7,,\n"))
    assert frame.to_dict("records") == [{"item_id": "0042", "title": "Alien", "year": "1979"},
                                        {"item_id": "7", "title": None, "year": None}]

    with pytest.raises(InteractionsFileError) as caught:
        read_items_file(_jsonl(tmp_path / "items.jsonl", [
            {"item_id": "a", "title": "A"}, {"item_id": "b", "title": 3}, {"item_id": "a"}, {"title": "no id"}]))
    message = str(caught.value)
    assert "title is not text (e.g. 3): line 2" in message
    assert "item_id is repeated (first on line 1) (e.g. 'a'): line 3" in message
    assert "item_id is missing or empty: line 4" in message
    with pytest.raises(InteractionsFileError, match="missing column 'item_id'"):
        read_items_file(_write(tmp_path / "x.csv", "title\nAlien\n"))
