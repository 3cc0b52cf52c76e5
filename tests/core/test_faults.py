"""Injected faults: off unless LOCKSTEP_FAULTS names them; a plain fault fires once per
LOCKSTEP_HOME (so a retry succeeds), a qualified one only for its qualifier, a starred
one every time."""

from __future__ import annotations

import pytest

from lockstep.core.faults import InjectedFault, maybe_fail


@pytest.fixture
def faults(lockstep_home, monkeypatch):
    """Set LOCKSTEP_FAULTS for one test (a fresh LOCKSTEP_HOME holds the once-markers)."""

    def set_spec(spec: str) -> None:
        monkeypatch.setenv("LOCKSTEP_FAULTS", spec)

    return set_spec


def fires(point: str, qualifier: object = None) -> bool:
    try:
        maybe_fail(point, qualifier)
    except InjectedFault:
        return True
    return False


@pytest.mark.parametrize("spec", [None, "", " , "])
def test_without_a_spec_nothing_fires_and_nothing_is_written(lockstep_home, monkeypatch, spec):
    if spec is None:
        monkeypatch.delenv("LOCKSTEP_FAULTS", raising=False)
    else:
        monkeypatch.setenv("LOCKSTEP_FAULTS", spec)
    assert not any(fires("reembed.embed", q) for q in (None, 1, "3"))
    assert not (lockstep_home / "faults").exists()


def test_a_plain_fault_fires_once_per_home_so_a_retry_succeeds(faults, lockstep_home, monkeypatch, tmp_path):
    faults("reembed.embed")
    with pytest.raises(InjectedFault, match=r"reembed\.embed .*fires once, a retry succeeds"):
        maybe_fail("reembed.embed", 0)
    assert (lockstep_home / "faults" / "reembed.embed").exists()
    assert not fires("reembed.embed", 0)  # the retry
    assert not fires("reembed.embed", 1)  # any qualifier: the plain point already fired
    monkeypatch.setenv("LOCKSTEP_HOME", str(tmp_path / "another-home"))
    assert fires("reembed.embed")  # a new home has no marker: it fires again


def test_a_qualified_fault_fires_only_for_its_qualifier(faults, lockstep_home):
    faults("reembed.embed:1")
    assert not fires("reembed.embed", 0)
    assert not fires("reembed.embed", 2)
    assert not fires("reembed.embed")
    assert fires("reembed.embed", 1)
    assert (lockstep_home / "faults" / "reembed.embed_1").exists()  # ':' is not kept in the file name
    assert not fires("reembed.embed", 1)  # once


def test_a_starred_fault_fires_every_time(faults, lockstep_home):
    faults("serving.search:3*")
    for _ in range(3):
        with pytest.raises(InjectedFault, match=r"serving\.search:3 .*every time"):
            maybe_fail("serving.search", 3)
    assert not fires("serving.search", 2)
    assert not (lockstep_home / "faults").exists()  # every-time faults keep no marker


def test_a_starred_plain_fault_fires_for_every_qualifier(faults):
    faults("serving.search*")
    assert all(fires("serving.search", q) for q in (None, 1, 2, 1))


def test_the_list_takes_several_points_with_spaces_and_matches_whole_names(faults):
    faults(" drift.check , serving.search:2* ,")
    assert fires("drift.check")
    assert fires("serving.search", 2) and fires("serving.search", 2)
    assert not fires("drift")  # a prefix of a point is another point
    assert not fires("drift.check.more")
    assert not fires("serving.search", 22)


def test_a_qualifier_with_a_slash_makes_a_flat_marker_file(faults, lockstep_home):
    faults("index.save:a/b")
    assert fires("index.save", "a/b")
    assert (lockstep_home / "faults" / "index.save_a_b").is_file()
    assert not fires("index.save", "a/b")


def test_an_injected_fault_is_a_runtime_error():
    """Callers that catch RuntimeError (Airflow's retry path) treat it like a real failure."""
    assert issubclass(InjectedFault, RuntimeError)
