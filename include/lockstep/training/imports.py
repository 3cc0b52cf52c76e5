"""The offline evaluation of an imported (or ONNX) version, when it is registered.

A retrain judges its model against the champion before registering it; a model trained
elsewhere (``lockstep model import``, ``--onnx``) came in with no evaluation at all, so a
worse model went on to the re-embed without a word (issue 24). ``offline_evaluator``
gives ``lockstep.model.importing.import_model`` the same comparison a retrain runs:
the held-out queries of the record store's current snapshot (``split_holdout``: the same
stable id hash, cap and seed), nDCG@10 with the paired bootstrap interval, the same
margin, the same verdict tags. The evaluation settings are the champion's run params
where it has them (a retrained champion), else ``TrainConfig``'s defaults, so an import
is judged as the champion's successors are. The champion's side reads its index's
vectors (``champion_side``).

Skipped, with the reason on the version, when there is no champion (nothing to compare
with) or no evaluation corpus (an empty record store, or too few records with the label).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lockstep.model.offline_verdict import SKIPPED, OfflineOutcome, verdict_of_evaluation
from lockstep.model.stored_vectors import StoredVectorReader
from lockstep.store.records import RecordStore
from lockstep.training.config import TrainConfig, TrainingError
from lockstep.training.fit import EvalSet, check_evaluable, evaluate_embedder, judge, split_holdout

log = logging.getLogger("lockstep.training")

# The fields of TrainConfig that define an evaluation (read from the champion's run when it has them).
EVALUATION_FIELDS = ("holdout_percent", "max_eval_queries", "k", "margin", "metric", "label_key", "n_boot", "seed")


def offline_evaluator(
    config: Mapping[str, Any] | None = None, *, stored: StoredVectorReader | None = None, store: RecordStore | None = None,
):
    """A ``VersionEvaluator`` for ``import_model``: (registry, info) -> ``OfflineOutcome``.

    ``config`` overrides evaluation settings (``EVALUATION_FIELDS``); ``stored`` reads the
    champion's vectors from its index (``lockstep.index.champion_vectors.read_stored_vectors``).
    """
    overrides = dict(config or {})
    unknown = set(overrides) - set(EVALUATION_FIELDS)
    if unknown:
        raise TrainingError(f"unknown evaluation settings {sorted(unknown)}; use {', '.join(EVALUATION_FIELDS)}")

    def evaluate(registry, info) -> OfflineOutcome:
        return evaluate_version(registry, info, overrides, stored=stored, store=store or RecordStore())

    return evaluate


def evaluate_version(registry, info, overrides: Mapping[str, Any], *, stored: StoredVectorReader | None,
                     store: RecordStore) -> OfflineOutcome:
    """The version against the champion on the store's current snapshot (or why it was skipped)."""
    from lockstep.training.champion_side import evaluate_champion

    champion = registry.version_for_alias("champion")
    if champion is None:
        return _skipped("no champion yet: there is nothing to compare it with")
    if champion.version == info.version:
        return _skipped(f"v{info.version} is the champion itself", champion.version)
    cfg = _settings(registry, champion, overrides)
    snapshot = store.snapshot()
    if not snapshot.records:
        return _skipped("no evaluation corpus: the record store is empty (lockstep corpus load)", champion.version)
    data = EvalSet.from_holdout(split_holdout(snapshot.records, cfg), cfg.label_key, seq=snapshot.seq)
    del snapshot
    try:
        check_evaluable(data, cfg)
    except TrainingError as exc:
        return _skipped(f"no evaluation corpus: {exc}", champion.version)
    challenger = evaluate_embedder(registry.load_embedder(info.version), data, cfg)
    champion_eval, reuse = evaluate_champion(
        lambda: registry.load_embedder(champion.version), champion, data, cfg, reader=stored, store=store,
    )
    report = judge(challenger, champion_eval, cfg, champion.version, data)
    figures = {**report.figures, **reuse.figures()}
    log.info("offline evaluation of v%s: %s", info.version, report.reason)
    return OfflineOutcome(verdict_of_evaluation(report.better), report.reason, figures, champion.version)


def _settings(registry, champion, overrides: Mapping[str, Any]) -> TrainConfig:
    """The evaluation settings: the champion's run params for ``EVALUATION_FIELDS``, then ``overrides``."""
    defaults = TrainConfig()
    params = registry.run_params(champion.run_id) if champion.run_id else {}
    chosen: dict[str, Any] = {}
    for name in EVALUATION_FIELDS:
        raw = params.get(name)
        default = getattr(defaults, name)
        try:
            chosen[name] = type(default)(raw) if raw not in (None, "", "None") else default
        except ValueError:
            chosen[name] = default
    return TrainConfig.from_dict({**chosen, **overrides})


def _skipped(reason: str, champion: str | None = None) -> OfflineOutcome:
    log.info("offline evaluation skipped: %s", reason)
    return OfflineOutcome(SKIPPED, f"skipped: {reason}", {}, champion)
