"""Training a candidate: the node functions the retrain DAG wires and the CLI runs in a row.

Each step is a plain function over plain values (a snapshot, a fitted model, an
evaluation), so the same code runs in ``lockstep train`` and in Airflow tasks, and
each step is tested on its own. The held-out queries are chosen by a stable hash of
the record id, so the champion and every later challenger are judged on the same
queries, none of which either of them was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.model.contract import Embedder
from lockstep.store.records import Record
from lockstep.training.config import TrainConfig, TrainingError


@dataclass(frozen=True)
class Holdout:
    """The training texts, and the labelled queries and documents of the evaluation."""

    train: list[Record]
    queries: list[Record]
    docs: list[Record]

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "eval_queries": len(self.queries), "eval_docs": len(self.docs)}


@dataclass(frozen=True)
class EvalSet:
    """Only what an evaluation reads: the texts and labels of the queries and documents.

    Built from a ``Holdout`` so the snapshot's ``Record`` objects (most of its memory at
    a million records) can be freed before the models embed anything.
    """

    query_texts: list[str]
    query_labels: list[Any]
    doc_texts: list[str]
    doc_labels: list[Any]
    summary: dict[str, int] = field(default_factory=dict)
    # The record ids of the texts and the snapshot's sequence: what lets the champion's side
    # read the vectors its index holds for records unchanged since (``champion_side``).
    query_ids: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    seq: int | None = None

    @classmethod
    def from_holdout(cls, holdout: Holdout, label_key: str, seq: int | None = None) -> EvalSet:
        return cls(
            query_texts=[r.text for r in holdout.queries],
            query_labels=[_label(r, label_key) for r in holdout.queries],
            doc_texts=[r.text for r in holdout.docs],
            doc_labels=[_label(r, label_key) for r in holdout.docs],
            summary=holdout.summary(),
            query_ids=[r.id for r in holdout.queries],
            doc_ids=[r.id for r in holdout.docs],
            seq=seq,
        )


@dataclass(frozen=True)
class EvalReport:
    """Challenger against champion on the same queries, ready to log."""

    better: bool
    reason: str
    figures: dict[str, float]
    champion_version: str | None
    holdout: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def is_holdout(record_id: str, percent: int) -> bool:
    """Stable membership: the same id is held out in every run, whatever the corpus order."""
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < percent


def split_holdout(records: Sequence[Record], config: TrainConfig) -> Holdout:
    """Hold out labelled records as queries; train on the rest; evaluate over all labelled."""
    if not records:
        raise TrainingError("the snapshot has no records: load a corpus first (lockstep corpus load --demo)")
    labelled = [r for r in records if _label(r, config.label_key) is not None]
    queries = [r for r in labelled if is_holdout(r.id, config.holdout_percent)]
    if len(queries) > config.max_eval_queries:
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(len(queries), config.max_eval_queries, replace=False))
        queries = [queries[i] for i in keep]
    held = {r.id for r in labelled if is_holdout(r.id, config.holdout_percent)}
    train = [r for r in records if r.id not in held]
    docs = [r for r in labelled if r.id not in held]
    return Holdout(train=train, queries=queries, docs=docs)


def snapshot_digest(records: Sequence[Record]) -> str:
    """'sha256:<hex>' of the snapshot's content (ids, texts, metadata, in id order).

    Two trainings on the same records get the same digest, whatever the sequence number;
    it is what the run's dataset input carries instead of the records.
    """
    h = hashlib.sha256()
    for r in records:
        meta = json.dumps(r.metadata, sort_keys=True, default=str) if r.metadata else ""
        h.update(f"{len(r.id)}:{r.id}{len(r.text)}:{r.text}{len(meta)}:{meta}".encode())
    return "sha256:" + h.hexdigest()


def fit_texts(train: Sequence[Record], config: TrainConfig) -> list[str]:
    """The texts the model is fitted on: all training records, or a seeded sample of them.

    A sample of ``fit_sample`` records learns the same vocabulary and directions as the
    whole corpus to within noise, at a bounded cost in memory and time.
    """
    n = len(train)
    if config.fit_sample is None or n <= config.fit_sample:
        return [r.text for r in train]
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(n, int(config.fit_sample), replace=False))
    return [train[i].text for i in rows.tolist()]


def fit_embedder(texts: Sequence[str], config: TrainConfig) -> Embedder:
    """The config's family fitted on the texts; a bad parameter is a TrainingError naming it."""
    if len(texts) < 2:
        raise TrainingError(f"need at least 2 training texts, got {len(texts)}")
    try:
        return config.embedder().fit(list(texts))
    except ValueError as exc:
        raise TrainingError(f"cannot fit the {config.family} model: {exc}") from exc


def evaluate_embedder(embedder: Embedder, holdout: Holdout | EvalSet, config: TrainConfig):
    """Precision@k and nDCG@k per held-out query; relevance is "same label".

    The documents are embedded in batches (the model's ``transform``) and searched
    exactly in bounded blocks (``evaluate_retrieval``).
    """
    data = holdout if isinstance(holdout, EvalSet) else EvalSet.from_holdout(holdout, config.label_key)
    check_evaluable(data, config)
    q = embedder.transform(data.query_texts)
    d = embedder.transform(data.doc_texts)
    return evaluate_vectors(q, d, data, config)


def check_evaluable(data: EvalSet, config: TrainConfig) -> None:
    """Refuse an evaluation set that cannot give a figure, saying what it lacks."""
    if not data.query_texts or len(data.doc_texts) <= config.k:
        raise TrainingError(
            f"cannot evaluate: {len(data.query_texts)} labelled queries and {len(data.doc_texts)} labelled "
            f"documents (need queries and more than k={config.k} documents with a "
            f"'{config.label_key}' metadata field)"
        )


def evaluate_vectors(queries: np.ndarray, docs: np.ndarray, data: EvalSet, config: TrainConfig):
    """Precision@k and nDCG@k per query from vectors already made (embedded or read from an index)."""
    from lockstep.model.evaluation import evaluate_retrieval

    return evaluate_retrieval(queries, data.query_labels, docs, data.doc_labels, k=config.k)


def judge(
    challenger_eval,
    champion_eval,
    config: TrainConfig,
    champion_version: str | None,
    holdout: Holdout | EvalSet,
) -> EvalReport:
    from lockstep.model.evaluation import compare

    verdict = compare(
        challenger_eval, champion_eval, config.margin, config.metric, n_boot=config.n_boot, seed=config.seed
    )
    return EvalReport(
        better=verdict.better,
        reason=verdict.reason,
        figures=verdict.figures,
        champion_version=champion_version,
        holdout=holdout.summary if isinstance(holdout, EvalSet) else holdout.summary(),
    )


def write_eval_artifacts(report: EvalReport, challenger_eval, champion_eval, folder: str | Path) -> dict[str, Path]:
    """The evaluation report (JSON) and its plot (PNG) for the MLflow run."""
    from lockstep.core.atomic import atomic_write
    from lockstep.model.evaluation_plot import plot_evaluation

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report_path = folder / "evaluation.json"
    atomic_write(report_path, report.to_json())
    plot_path = plot_evaluation(challenger_eval, champion_eval, folder / "evaluation.png")
    return {"reports/evaluation.json": report_path, "plots/evaluation.png": Path(plot_path)}


def _label(record: Record, key: str) -> Any:
    meta = record.metadata or {}
    value = meta.get(key)
    return None if value in (None, "") else value
