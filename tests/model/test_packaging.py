"""A registered model loads where only its own requirements are installed.

What a user of the MLflow registry does: read the model's ``requirements.txt``, install
it into a fresh virtual environment (no Lockstep there), then ``mlflow.pyfunc.
load_model("models:/...").predict([...])``. The vectors must be Lockstep's own. One
virtual environment for the session (one ``pip install``, about a minute and a half):
``model_environment`` hands a later model (tests/model/test_word_vectors.py) the same one
only when that model's own requirements install exactly the same distributions into an
empty environment, so each test still proves "its requirements alone suffice".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lockstep.model.embedding import TextEmbedder
from lockstep.model.registry import ModelVersionInfo, Registry
from tests.model.test_registry import synthetic_texts

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["refund for my card charge", "courier lost the parcel", "reset password", "zzz unknown words"]

PREDICT = """
import importlib.util, json, sys
import mlflow
if importlib.util.find_spec("lockstep") is not None:
    sys.exit("lockstep is importable in the model's environment")
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(json.loads(sys.argv[2]))
print(json.dumps({"dtype": str(out.dtype), "rows": out.tolist()}))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Registry, TextEmbedder, ModelVersionInfo]:
    """One registered version in a SQLite store of its own."""
    folder = tmp_path_factory.mktemp("packaging-store")
    registry = Registry(f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "artifacts")
    embedder = TextEmbedder(dim=16, min_df=1).fit(synthetic_texts())
    info = registry.log_and_register(embedder, params={}, metrics={"ndcg_at_10": 0.5}, snapshot_seq=7)
    return registry, embedder, info


@pytest.fixture(scope="module")
def requirements(store, tmp_path_factory) -> Path:
    """The registered model's requirements.txt, fetched the way MLflow documents it."""
    import mlflow

    registry, _, info = store
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
        return Path(mlflow.pyfunc.get_model_dependencies(info.model_uri))


@pytest.fixture(scope="module")
def model_venv(tmp_path_factory, requirements) -> Path:
    """A fresh virtual environment with the model's requirements and nothing else."""
    return model_environment(tmp_path_factory, requirements)


# The session's model environments (their pythons): pip-installing MLflow's ~90 distributions
# takes a minute and a half on CI's two cores, and the registered models of the tests declare
# requirements whose closures are the same set (mlflow itself depends on scikit-learn, scipy,
# numpy, pandas and so joblib). Each is reused only where it holds exactly that set.
_ENVIRONMENTS: list[Path] = []

# Run by an environment's own python: which distributions the requirements file's closure
# (through the installed distributions' Requires-Dist, with markers and extras) lacks, and
# which installed ones it does not reach. Both empty: a fresh install of the file alone
# would hold these very distributions (pip's own, pip and setuptools, aside).
CLOSURE = r"""
import json, sys
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
lines = [line.strip() for line in open(sys.argv[1]).read().splitlines()]
todo = [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]
seen, needed = set(), set()
while todo:
    req = todo.pop()
    key = (canonicalize_name(req.name), frozenset(req.extras))
    if key in seen:
        continue
    seen.add(key)
    needed.add(key[0])
    for spec in (installed[key[0]].requires or []) if key[0] in installed else []:
        sub = Requirement(spec)
        if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
            todo.append(sub)
print(json.dumps({"missing": sorted(needed - installed.keys()),
                  "unrequired": sorted(installed.keys() - needed - {"pip", "setuptools"})}))
"""


def model_environment(tmp_path_factory, requirements: Path) -> Path:
    """A virtual environment holding exactly what ``requirements`` installs into an empty one.

    An environment of an earlier model is reused when it holds exactly this file's closure
    and pip, asked to install the file there, would install nothing; otherwise a new one is
    created (``python -m venv``, then ``pip install -r``) as a user would.
    """
    for python in _ENVIRONMENTS:
        if _holds_exactly(python, requirements):
            return python
    venv = tmp_path_factory.mktemp("model-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_clean_env(), timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
        capture_output=True, text=True, env=_clean_env(), timeout=1800,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    _ENVIRONMENTS.append(python)
    return python


def _holds_exactly(python: Path, requirements: Path) -> bool:
    """True when the environment of ``python`` is what installing ``requirements`` alone gives."""
    closure = subprocess.run([str(python), "-c", CLOSURE, str(requirements)], capture_output=True, text=True,
                             env=_clean_env(), timeout=300, check=True)
    gap = json.loads(closure.stdout)
    if gap["missing"] or gap["unrequired"]:
        return False
    report = python.parent / "dry-run.json"
    dry = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report), "-r", str(requirements)],
        capture_output=True, text=True, env=_clean_env(), timeout=600,
    )
    return dry.returncode == 0 and json.loads(report.read_text())["install"] == []


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would leak Lockstep in."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _predict_in(python: Path, registry: Registry, uri: str, texts: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", PREDICT, uri, json.dumps(texts)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
        env=_clean_env(MLFLOW_TRACKING_URI=registry.tracking_uri),
    )


def test_the_model_declares_pinned_requirements_and_not_lockstep(requirements):
    declared = [line.strip() for line in requirements.read_text().splitlines() if line.strip()]
    pins = dict(
        re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", line.strip())
    )
    assert sorted(declared) == sorted(f"{name}=={pins[name]}" for name in TextEmbedder.MODEL_REQUIREMENTS)
    assert not any("lockstep" in line for line in declared)


def test_a_fresh_environment_with_only_the_requirements_loads_and_predicts_lockstep_vectors(store, model_venv, tmp_path):
    registry, embedder, info = store

    done = _predict_in(model_venv, registry, f"models:/{registry.model_name}/{info.version}", TEXTS, tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dtype"] == "float32"
    rows = np.asarray(result["rows"], dtype=np.float32)
    np.testing.assert_allclose(rows, embedder.transform(TEXTS), atol=1e-5)
    served = registry.load_embedder(info.version)  # Lockstep's own path: serving, re-embedding
    np.testing.assert_allclose(rows, np.stack([served.embed_query(t) for t in TEXTS]), atol=1e-5)
    assert not rows[-1].any()  # out-of-vocabulary text embeds to zero in both


def test_a_swapped_artifact_is_refused_in_the_fresh_environment_too(store, model_venv, tmp_path):
    import joblib

    registry, embedder, _ = store
    info = registry.log_and_register(embedder, params={}, metrics={}, snapshot_seq=8)
    model_id = info.source.removeprefix("models:/")
    [stored] = [p for p in registry.artifact_root.rglob("embedder.joblib") if model_id in p.parts]
    joblib.dump({"format": "lockstep.text-embedder/2", "pipeline": None}, stored)  # someone swapped it

    done = _predict_in(model_venv, registry, f"models:/{registry.model_name}/{info.version}", TEXTS, tmp_path)

    assert done.returncode != 0
    assert "ArtifactChecksumError" in done.stderr and "fails its checksum" in done.stderr
    assert info.tags["lockstep.model_sha256"] in done.stderr
