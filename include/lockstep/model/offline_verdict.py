"""The offline verdict on a version: what its evaluation against the champion decided, and what it gates.

A retrained version is evaluated before it is registered (``lockstep.training.steps``), an
imported or ONNX version when it is registered (``lockstep.model.importing.import_model``
with the evaluator of ``lockstep.training.imports``). Either way the verdict is written
on the version as tags:

================================  ==============================================
``lockstep.offline_verdict``      ``accepted``, ``rejected`` or ``skipped``
``lockstep.offline_verdict.reason``  the sentence behind it (which metric, which interval;
                                  for ``skipped``: no champion, no evaluation corpus, or
                                  ``--no-evaluate``)
``lockstep.offline_verdict.champion``  the champion it was compared with, or ``none``
``lockstep.offline_verdict.at``   ISO time of the verdict
``eval.<figure>``                 the figures (``eval.ndcg_at_10``, ``eval.delta_ndcg_at_10_ci_low``, ...)
================================  ==============================================

A version registered before these tags existed has only ``eval.better`` (1.0 or 0.0):
``offline_verdict_of`` reads that as accepted or rejected.

``check_buildable`` is the gate of the re-embed plan (``lockstep_reembed``'s ``prepare``
and ``lockstep index build``): a version the evaluation rejected is refused unless the
run says ``allow_rejected``; a version never evaluated (or skipped) is built with a
warning line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockstep.core import clock
from lockstep.core.errors import LockstepError
from lockstep.model.registry.tags import EVAL_TAG_PREFIX

if TYPE_CHECKING:
    from lockstep.model.registry import ModelVersionInfo

log = logging.getLogger("lockstep.offline_verdict")

TAG = "lockstep.offline_verdict"
ACCEPTED, REJECTED, SKIPPED = "accepted", "rejected", "skipped"
VERDICTS = (ACCEPTED, REJECTED, SKIPPED)
OVERRIDE_HINT = "set the reembed DAG's Param allow_rejected, or run lockstep index build --allow-rejected"


class RejectedVersionError(LockstepError):
    """A build of a version its offline evaluation rejected, without the override."""


@dataclass(frozen=True)
class OfflineOutcome:
    """One offline evaluation's result as a version keeps it: the verdict, why, and the figures."""

    verdict: str  # ACCEPTED | REJECTED | SKIPPED
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    champion_version: str | None = None
    at: str = field(default_factory=clock.now_iso)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"offline verdict {self.verdict!r}: use one of {', '.join(VERDICTS)}")

    @property
    def better(self) -> bool:
        return self.verdict == ACCEPTED

    def tags(self) -> dict[str, str]:
        """The version tags of this verdict (the figures as ``eval.<figure>``, finite ones only)."""
        tags = {
            TAG: self.verdict,
            f"{TAG}.reason": self.reason[:5000],
            f"{TAG}.champion": self.champion_version or "none",
            f"{TAG}.at": self.at,
        }
        tags.update({f"{EVAL_TAG_PREFIX}{k}": repr(float(v)) for k, v in self.figures.items() if _finite(v)})
        return tags

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics (finite ones only)."""
        return {k: float(v) for k, v in self.figures.items() if _finite(v)}


def verdict_of_evaluation(better: bool) -> str:
    """A retrain's ``better`` as a verdict."""
    return ACCEPTED if better else REJECTED


def offline_verdict_of(info: ModelVersionInfo) -> tuple[str | None, str]:
    """(verdict or None when never evaluated, its reason) from the version's tags."""
    tags = info.tags
    verdict = tags.get(TAG)
    if verdict in VERDICTS:
        return verdict, tags.get(f"{TAG}.reason", "")
    legacy = tags.get(f"{EVAL_TAG_PREFIX}better")
    if legacy is not None:
        try:
            better = float(legacy) >= 0.5
        except ValueError:
            return None, ""
        return verdict_of_evaluation(better), tags.get("lockstep.evaluation", "") or tags.get("lockstep.rejected_reason", "")
    return None, ""


def check_buildable(info: ModelVersionInfo, allow_rejected: bool = False) -> str | None:
    """Refuse to build a version the offline evaluation rejected (unless allowed); a warning otherwise.

    Returns None for an accepted version, else the warning line it also logs: a rejected
    version built with ``allow_rejected``, or one never evaluated (or evaluated with the
    result ``skipped``), which is built all the same.
    """
    verdict, reason = offline_verdict_of(info)
    if verdict == ACCEPTED:
        return None
    if verdict == REJECTED:
        why = f" ({reason})" if reason else ""
        if not allow_rejected:
            raise RejectedVersionError(
                f"version {info.version} has the offline verdict 'rejected'{why}; nothing was built. "
                f"To build its index anyway, {OVERRIDE_HINT}"
            )
        warning = f"building version {info.version} although its offline verdict is 'rejected'{why}: allow_rejected is set"
    elif verdict == SKIPPED:
        warning = f"version {info.version} was not evaluated offline ({reason or 'skipped'}); building it all the same"
    else:
        warning = f"version {info.version} has no offline verdict (it was never evaluated against a champion); building it all the same"
    log.warning("%s", warning)
    return warning


def evaluation_block(outcome: OfflineOutcome) -> str:
    """The markdown a reviewer reads on the version's MLflow page: the verdict, nDCG@k of both sides, the difference."""
    lines = [f"### Offline evaluation: {outcome.verdict}", outcome.reason]
    f = outcome.figures
    keys = sorted(k for k in f if (k.startswith("ndcg_at_") or k.startswith("precision_at_")) and k.count("_") == 2)
    if keys:
        champion = outcome.champion_version
        rows = ["| metric | this version | " + (f"champion v{champion} | difference |" if champion else ""),
                "|---|---|" + ("---|---|" if champion else "")]
        for key in keys:
            row = f"| {_label(key)} | {_interval(f, key)} |"
            if champion:
                row += f" {_interval(f, 'champion_' + key)} | {_interval(f, 'delta_' + key, signed=True)} |"
            rows.append(row)
        lines += ["", f"95 % bootstrap intervals over {int(f.get('n_queries', 0))} held-out queries.", "", *rows]
    if "champion_vectors_reused" in f:
        lines += ["", f"Champion vectors: {int(f['champion_vectors_reused'])} read from its index, "
                      f"{int(f.get('champion_vectors_embedded', 0))} embedded."]
    return "\n".join(lines)


def _label(key: str) -> str:
    name, _, k = key.partition("_at_")
    return f"nDCG@{k}" if name == "ndcg" else f"precision@{k}"


def _interval(figures: Mapping[str, Any], key: str, signed: bool = False) -> str:
    if key not in figures:
        return ""
    fmt = "{:+.4f}" if signed else "{:.4f}"
    text = fmt.format(figures[key])
    low, high = figures.get(key + "_ci_low"), figures.get(key + "_ci_high")
    return text + (f" ({fmt.format(low)} to {fmt.format(high)})" if low is not None and high is not None else "")


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def verdict_line(info: ModelVersionInfo) -> str:
    """One line for a person: the version's offline verdict and why (the CLI prints it)."""
    verdict, reason = offline_verdict_of(info)
    if verdict is None:
        return f"version {info.version}: no offline evaluation"
    tail = "; build its index anyway with lockstep index build --allow-rejected" if verdict == REJECTED else ""
    return f"version {info.version}: offline verdict {verdict}: {reason}{tail}"
