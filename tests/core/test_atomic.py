"""Atomic writes: a reader sees the old file or the new one, never a torn one, and a
failure leaves the target as it was with no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.core.atomic import atomic_path, atomic_write


def names(folder: Path) -> list[str]:
    """Every entry of ``folder``, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00\x01binary\xff", b"\x00\x01binary\xff"),
        ("text café 日本", "text café 日本".encode()),  # str is written as UTF-8
        ("", b""),
    ],
)
def test_atomic_write_writes_exactly_the_bytes_and_leaves_nothing_else(tmp_path, data, expected):
    target = tmp_path / "out.bin"
    returned = atomic_write(target, data)
    assert returned == target
    assert target.read_bytes() == expected
    assert names(tmp_path) == ["out.bin"]


def test_missing_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "manifest.json"
    atomic_write(str(target), "{}")  # a str path works as well as a Path
    assert target.read_text() == "{}"


def test_an_existing_file_is_replaced_whole(tmp_path):
    target = tmp_path / "index.faiss"
    target.write_bytes(b"old" * 1000)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"  # no tail of the longer old file survives
    assert names(tmp_path) == ["index.faiss"]


def test_a_reader_holding_the_old_file_keeps_reading_the_old_content(tmp_path):
    """The rename swaps directory entries: an open handle still reads the complete old file."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"A" * 10_000)
    with open(target, "rb") as reader:
        first = reader.read(10)
        atomic_write(target, b"B" * 10)
        rest = reader.read()
    assert first + rest == b"A" * 10_000
    assert target.read_bytes() == b"B" * 10


def test_the_temporary_file_is_hidden_beside_the_target_with_the_suffix(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target, suffix=".part") as tmp:
        assert tmp.parent == tmp_path  # same file system: the rename is atomic
        assert tmp.name.startswith(".plot.png.") and tmp.name.endswith(".part")
        assert tmp.exists() and not target.exists()  # the target appears only at the end
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png" and not tmp.exists()


@pytest.mark.parametrize("error", [RuntimeError("writer crashed"), KeyboardInterrupt()])
def test_a_failure_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    target = tmp_path / "report.json"
    target.write_text("old report")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_text("half a rep")
        raise error
    assert target.read_text() == "old report"
    assert names(tmp_path) == ["report.json"]


def test_a_failure_before_anything_existed_leaves_no_file_at_all(tmp_path):
    target = tmp_path / "new.json"
    with pytest.raises(ValueError, match="bad data"), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise ValueError("bad data")
    assert names(tmp_path) == []


def test_a_temporary_the_writer_removed_is_an_error_not_an_empty_target(tmp_path):
    target = tmp_path / "data.npy"
    target.write_bytes(b"keep")
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        tmp.unlink()
    assert target.read_bytes() == b"keep"
    assert names(tmp_path) == ["data.npy"]
