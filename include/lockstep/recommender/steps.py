"""The recommender's training run: snapshot, evaluate against the champion, fit, register.

What ``lockstep train --system recommender`` runs, on the recommender deployment's own
interaction store and registered model (``LOCKSTEP_SYSTEM=recommender``):

1. snapshot the interaction log at its head (sequence S);
2. split it per user by time and fit the candidate's parameters on the training part;
   the champion's parameters are refitted on the same part (the champion's own fit has
   seen the held-out interactions, so judging it as is would favour it);
3. recall@10 and nDCG@10 of both, paired bootstrap CI of the difference
   (``recommender.evaluation``), and the popularity baseline;
4. fit the candidate on the whole snapshot (what serves), register it with the figures
   and snapshot sequence S (serving folds in every interaction after S), alias
   ``challenger`` when it is not worse than the champion beyond ``margin``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockstep.core.errors import LockstepError
from lockstep.model.registry import CHALLENGER, Registry
from lockstep.recommender.config import RecommenderTrainConfig
from lockstep.recommender.evaluation import K, evaluate, time_split
from lockstep.recommender.factorization import ALSRecommender
from lockstep.recommender.registration import load_version, recommender_registry, register_fit
from lockstep.store.interactions import InteractionStore


@dataclass(frozen=True)
class TrainOutcome:
    version: str
    accepted: bool
    reason: str
    figures: dict[str, float]
    fingerprint: str


def train(config: RecommenderTrainConfig | None = None, *, store: InteractionStore | None = None,
          registry: Registry | None = None, set_challenger: bool = True) -> TrainOutcome:
    """One training run (see the module docstring); the registered version and the verdict.

    ``set_challenger`` False leaves the alias to the caller (the retrain DAG's accept step).
    """
    config = config or RecommenderTrainConfig()
    store = store or InteractionStore()
    registry = registry or recommender_registry()
    snapshot = store.snapshot()
    if snapshot.empty:
        raise LockstepError("the interaction store is empty: load interactions first (lockstep interactions load --demo)")
    split = time_split(snapshot, config.holdout_fraction)
    candidate = config.model().fit(split.train)
    champion_info = registry.version_for_alias("champion")
    champion = None
    if champion_info is not None:
        champion_model, _ = load_version(champion_info.version, registry)
        champion = ALSRecommender(**champion_model.get_params()).fit(split.train)
    figures = _degenerate_ci_as_zero(evaluate(candidate, split, champion))
    accepted, reason = _verdict(figures, champion_info.version if champion_info else None, config.margin)
    if champion is not None and champion.get_params() == candidate.get_params():
        reason += " (the champion's parameters: offline the two are the same model; the new data is judged online)"
    model = config.model().fit(snapshot)
    tags = {**config.extra_tags, "lockstep.accepted": str(accepted).lower(), "lockstep.reason": reason}
    info = register_fit(model, figures, registry=registry, snapshot_seq=int(snapshot.attrs["seq"]), tags=tags)
    if accepted and set_challenger:
        registry.set_alias(CHALLENGER, info.version)
    return TrainOutcome(info.version, accepted, reason, figures, info.fingerprint)


def train_for_dag(params: dict[str, Any], drift: dict[str, Any] | None = None) -> dict[str, Any]:
    """The retrain DAG's step on a recommender deployment: train, register, no alias yet.

    A run started by the drift asset tags the version with the drift that triggered it.
    """
    tags = {"lockstep.trigger": "drift" if drift else "manual"}
    if drift:
        tags["lockstep.drift_run_id"] = str(drift.get("mlflow_run_id") or "")
        tags["lockstep.drift_reasons"] = "; ".join(map(str, drift.get("reasons") or []))[:5000]
    config = RecommenderTrainConfig(
        factors=int(params["factors"]), iterations=int(params["iterations"]), margin=float(params["margin"]), extra_tags=tags
    )
    outcome = train(config, set_challenger=False)
    from lockstep.core import jsonio

    return jsonio.plain({"version": outcome.version, "accepted": outcome.accepted, "reason": outcome.reason,
                         "fingerprint": outcome.fingerprint, "figures": outcome.figures})


def _degenerate_ci_as_zero(figures: dict[str, float]) -> dict[str, float]:
    """A bootstrap of differences that are all zero has no BCa interval (NaN): the interval is [0, 0].

    That happens when the candidate has the champion's parameters: refitted on the same
    training part, the two give the same lists to every user.
    """
    out = dict(figures)
    for key, value in figures.items():
        if key.endswith(("_ci_low", "_ci_high")) and value != value:  # NaN
            delta = out.get(key.rsplit("_ci_", 1)[0])
            if delta == 0.0:
                out[key] = 0.0
    return out


def _verdict(figures: dict[str, float], champion: str | None, margin: float) -> tuple[bool, str]:
    ndcg = f"ndcg_at_{K}"
    if champion is None:
        return True, f"first version: nDCG@{K} {figures[ndcg]:.4f} (popularity {figures[f'popularity_ndcg_at_{K}']:.4f})"
    delta, low, high = (figures[f"delta_{ndcg}"], figures[f"delta_{ndcg}_ci_low"], figures[f"delta_{ndcg}_ci_high"])
    text = f"nDCG@{K} {figures[ndcg]:.4f} vs champion v{champion} {delta:+.4f} (95 % CI {low:+.4f}..{high:+.4f})"
    if high < -margin:
        return False, f"worse than the champion: {text}"
    return True, text


def build_requested(requested: str | None, asset_extra: dict[str, Any] | None, registry: Registry | None = None,
                    *, promote_if_first: bool = True) -> dict[str, Any]:
    """The reembed DAG's step on a recommender deployment: build the version a run asks for.

    Same resolution as search (Param, else the challenger asset's event, else alias
    challenger); the answer is the index-ready asset's extra.
    """
    from lockstep.model.registry import requested_version
    from lockstep.recommender.build import build_version

    registry = registry or recommender_registry()
    version = requested_version(requested, asset_extra, registry, purpose="build")
    became = promote_if_first and registry.version_for_alias("champion") is None
    manifest = build_version(version, registry=registry, promote_if_first=promote_if_first)
    location = registry.get_version(version).tags.get("lockstep.index_location")
    return {
        "model_version": manifest.model_version,
        "fingerprint": manifest.fingerprint,
        "index_location": location,
        "users": manifest.users,
        "items": manifest.items,
        "applied_seq": manifest.snapshot_seq,
        "became_champion": became,
    }
