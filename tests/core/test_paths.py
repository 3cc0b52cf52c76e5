"""core.paths: every value that becomes a path is refused at the boundary when it could escape.

Each refusal names the bad value; the confinement checks resolve symlinks, so a link
inside the root that points out of it is refused like ``..``.
"""

from __future__ import annotations

import pytest

from lockstep.core import paths
from lockstep.core.errors import LockstepError, UnsafePathError

HEX = "0123456789abcdef" * 4


def test_a_digest_is_sha256_with_or_without_its_prefix():
    assert paths.digest(HEX) == paths.digest("sha256:" + HEX) == "sha256:" + HEX
    assert paths.digest(HEX.upper()) == "sha256:" + HEX
    assert paths.hex_digest("sha256:" + HEX) == HEX


@pytest.mark.parametrize(
    "value",
    [
        "sha256:../../../indexes",
        "../../../indexes",
        "sha256:" + HEX[:63],
        "sha256:" + HEX + "0",
        "sha256:" + HEX[:-1] + "/",
        " " + HEX,
        HEX + "\n",
        HEX[:32] + "\0" + HEX[33:],
        "md5:" + HEX,
        "sha256:sha256:" + HEX,
        "",
        None,
        123,
    ],
)
def test_anything_else_is_not_a_digest_and_the_error_names_it(value):
    with pytest.raises(UnsafePathError, match="tag lockstep.model_sha256") as err:
        paths.digest(value, "tag lockstep.model_sha256")
    assert isinstance(err.value, LockstepError)
    if isinstance(value, str) and value:
        assert repr(value)[:40] in str(err.value)


def test_a_version_is_a_plain_positive_integer():
    assert paths.version_number("7") == paths.version_number(7) == 7
    assert paths.version_number(str(paths.MAX_VERSION)) == paths.MAX_VERSION


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "+1", " 1", "1 ", "01", "1.0", "1e3", "1/../..", "../1", "", "١", str(paths.MAX_VERSION + 1), 0, -3,
     True, 1.0, None, "9" * 400],
)
def test_anything_else_is_not_a_version(value):
    with pytest.raises(UnsafePathError, match="model version"):
        paths.version_number(value)


def test_a_name_is_one_plain_component():
    assert paths.name("snapshot-3-5000.parquet") == "snapshot-3-5000.parquet"
    for bad in ["..", ".", "", "a/b", "a\\b", "/etc", ".hidden", "a\0b", "x" * 256]:
        with pytest.raises(UnsafePathError, match="snapshot file"):
            paths.name(bad, "snapshot file")
    assert paths.name("é" * 127) == "é" * 127  # 254 bytes: within NAME_MAX
    with pytest.raises(UnsafePathError, match="longer than 255 bytes"):
        paths.name("é" * 128)


def test_inside_joins_relative_parts_and_resolves_them(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert paths.inside(root, "a", "b.txt") == (root / "a" / "b.txt").resolve()
    assert paths.inside(root, "a/b.txt") == (root / "a" / "b.txt").resolve()
    assert paths.inside(root) == root.resolve()
    # A root reached through a symlink is fine: the root is resolved too.
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert paths.inside(tmp_path / "alias", "a") == (root / "a").resolve()


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        (("..",), "not a plain name"),
        (("a", "../../outside"), "not a plain name"),
        (("a/../../outside",), "not a plain name"),
        (("a\\..\\..\\outside",), "not a plain name"),
        (("/etc/passwd",), "not an absolute path"),
        (("a", "/etc"), "not an absolute path"),
        (("a\0b",), "NUL byte"),
        (("x" * 256,), "longer than 255 bytes"),
        (("a/" * 2100,), "longer than 4096 bytes"),
        (("",), "empty path part"),
    ],
)
def test_inside_refuses_what_could_escape_and_creates_nothing(tmp_path, parts, problem):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafePathError, match=problem):
        paths.inside(root, *parts, what="cache folder")
    assert list(root.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_inside_refuses_a_symlink_that_points_out_of_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("keep")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    for parts in (("link",), ("link", "secret"), ("filelink",)):
        with pytest.raises(UnsafePathError, match="outside"):
            paths.inside(root, *parts)
    # A link that stays inside is resolved to its target, which is inside.
    (root / "real").mkdir()
    (root / "inner").symlink_to(root / "real", target_is_directory=True)
    assert paths.inside(root, "inner") == (root / "real").resolve()
    assert (outside / "secret").read_text() == "keep"


def test_within_checks_a_whole_path_from_outside(tmp_path):
    root = tmp_path / "root"
    (root / "m" / "v1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert paths.within(root, root / "m" / "v1") == (root / "m" / "v1").resolve()
    (root / "m" / "v2").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for bad, problem in [
        (f"{root}/m/../../elsewhere", "outside"),
        (str(root / "m" / "v2"), "outside"),
        ("m/v1", "absolute path"),
        (f"{root}/m\0/v1", "NUL byte"),
        ("/" + "a" * 5000, "longer than 4096 bytes"),
    ]:
        with pytest.raises(UnsafePathError, match=problem):
            paths.within(root, bad, what="index location")
