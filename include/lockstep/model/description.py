"""The description of a model version, written for the person who reviews it.

The MLflow UI shows a version's description (markdown) at the top of its page; this
module writes it from plain values, so a reviewer sees on one page what changed (the
model family, the parameters against the champion's, the snapshot trained on), how the
version compared with the champion (each metric with its 95 % interval, and the
difference with its interval), the drift that triggered the training if any, and links
to the run's plots and the Lockstep page. Pure: no MLflow, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_METRIC = re.compile(r"^(ndcg|precision)_at_(\d+)$")
_LABELS = {"ndcg": "nDCG", "precision": "Precision"}
REVIEW_HINT = (
    "To decide, add the version tag `lockstep.review` with the value `approved` or `rejected`; "
    "the rollout waits for it."
)


@dataclass(frozen=True)
class VersionStory:
    """Everything the description tells, as plain values (XCom-able dicts inside)."""

    version: str
    family: str
    params: Mapping[str, Any]
    training: Mapping[str, Any]  # seq, records, train, eval_queries, eval_docs, fit_texts, digest
    evaluation: Mapping[str, Any]  # better, reason, figures, champion_version
    champion_params: Mapping[str, Any] = field(default_factory=dict)
    drift: Mapping[str, Any] | None = None  # the drift asset event's extra that started the run
    links: Mapping[str, str] = field(default_factory=dict)  # run, logged_model, lockstep, artifact paths
    plots: Sequence[str] = ()  # artifact paths of the run's plots


def version_description(story: VersionStory) -> str:
    """The markdown the MLflow UI shows on the version's page."""
    parts = [
        _headline(story),
        _what_changed(story),
        _evaluation(story),
        _trigger(story.drift, story.links),
        _links(story),
        f"### Review\n{REVIEW_HINT}",
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def _headline(story: VersionStory) -> str:
    verdict = "accepted as challenger" if story.evaluation.get("better") else "rejected"
    return f"## Version {story.version}: {verdict}\n{story.evaluation.get('reason', '')}"


def _what_changed(story: VersionStory) -> str:
    t = story.training
    lines = [
        "### What changed",
        f"- **Model family:** {story.family}",
        f"- **Training snapshot:** change-log sequence {t.get('seq')}, {_count(t.get('records'))} records"
        + (f" (digest `{t['digest']}`)" if t.get("digest") else ""),
        f"- **Split:** {_count(t.get('train'))} training records"
        + (f" (fitted on a sample of {_count(t['fit_texts'])})" if _sampled(t) else "")
        + f", {_count(t.get('eval_queries'))} held-out queries over {_count(t.get('eval_docs'))} documents",
    ]
    return "\n".join(lines) + "\n\n" + _param_table(story)


def _param_table(story: VersionStory) -> str:
    """The parameters that differ from the champion's as a table; the rest on one line."""
    champion = story.evaluation.get("champion_version")
    if not story.champion_params:
        rows = ["| parameter | value |", "|---|---|"]
        rows += [f"| `{k}` | {_cell(v)} |" for k, v in sorted(story.params.items())]
        return "\n".join(rows)
    keys = sorted(set(story.params) | set(story.champion_params))
    changed = [k for k in keys if str(story.params.get(k, "")) != str(story.champion_params.get(k, ""))]
    same = ", ".join(f"`{k}={_cell(story.params.get(k, ''))}`" for k in keys if k not in changed)
    if not changed:
        return f"Same parameters as champion v{champion}: {same}."
    rows = [f"| parameter | this version | champion v{champion} |", "|---|---|---|"]
    rows += [f"| `{k}` | {_cell(story.params.get(k, ''))} | {_cell(story.champion_params.get(k, ''))} |" for k in changed]
    return "\n".join(rows) + (f"\n\nUnchanged: {same}." if same else "")


def _evaluation(story: VersionStory) -> str:
    figures = story.evaluation.get("figures") or {}
    champion = story.evaluation.get("champion_version")
    metrics = sorted(k for k in figures if _METRIC.match(k))
    if not metrics:
        return ""
    n = figures.get("n_queries")
    head = f"### Evaluation against {'champion v' + str(champion) if champion else 'no champion (first model)'}"
    head += f"\nOn {_count(n)} held-out queries; 95 % bootstrap intervals" + (
        f"; the gain must be at least {figures['margin']:.4f} with its interval above 0." if "margin" in figures else "."
    )
    if not champion:
        rows = ["| metric | this version |", "|---|---|"]
        rows += [f"| {_label(m)} | {_interval(figures, m)} |" for m in metrics]
        return head + "\n\n" + "\n".join(rows)
    rows = ["| metric | this version | champion | difference | P(better) |", "|---|---|---|---|---|"]
    for m in metrics:
        p_better = figures.get(f"p_better_{m}")
        rows.append(
            f"| {_label(m)} | {_interval(figures, m)} | {_interval(figures, 'champion_' + m)} "
            f"| {_interval(figures, 'delta_' + m, signed=True)} | {'' if p_better is None else f'{p_better:.3f}'} |"
        )
    return head + "\n\n" + "\n".join(rows)


def _trigger(drift: Mapping[str, Any] | None, links: Mapping[str, str]) -> str:
    if not drift:
        return "### Why it was trained\nA scheduled or manual run: no drift event started it."
    why = "a forced drift check" if drift.get("forced") else "drift"
    run_id = drift.get("mlflow_run_id")
    check = f"[drift check run]({links['drift_run']})" if links.get("drift_run") else f"drift check run `{run_id}`"
    lines = [
        "### Why it was trained",
        f"Started by {why} against champion v{drift.get('model_version')}"
        + (f", window ending {drift['window_end']}" if drift.get("window_end") else "")
        + (f" ({check})" if run_id else "")
        + ":",
    ]
    lines += [f"- {reason}" for reason in drift.get("reasons") or []] or ["- no reasons recorded"]
    segment = drift.get("segment") or {}
    if isinstance(segment, Mapping) and segment.get("top_words"):
        words = ", ".join(str(w[0] if isinstance(w, list | tuple) else w) for w in segment["top_words"][:8])
        share = segment.get("current_share")
        lines.append(
            "- the segment that moved" + (f" ({share:.0%} of the window)" if isinstance(share, float) else "") + f": {words}"
        )
    return "\n".join(lines)


def _links(story: VersionStory) -> str:
    named = {"run": "The training run", "logged_model": "The logged model (metrics, params)", "lockstep": "The Lockstep page"}
    lines = [f"- [{title}]({story.links[key]})" for key, title in named.items() if story.links.get(key)]
    lines += [
        f"- Plot [`{path}`]({story.links[path]})" if story.links.get(path) else f"- Plot `{path}` (run artifact)"
        for path in story.plots
    ]
    return "### Links\n" + "\n".join(lines) if lines else ""


def _interval(figures: Mapping[str, Any], key: str, *, signed: bool = False) -> str:
    if key not in figures:
        return ""
    fmt = "{:+.4f}" if signed else "{:.4f}"
    low, high = figures.get(key + "_ci_low"), figures.get(key + "_ci_high")
    text = fmt.format(figures[key])
    if low is not None and high is not None:
        text += f" ({fmt.format(low)} to {fmt.format(high)})"
    return text


def _label(metric: str) -> str:
    match = _METRIC.match(metric)
    return f"{_LABELS[match.group(1)]}@{match.group(2)}" if match else metric


def _sampled(training: Mapping[str, Any]) -> bool:
    fit, train = training.get("fit_texts"), training.get("train")
    return fit is not None and train is not None and int(fit) < int(train)


def _count(value: Any) -> str:
    try:
        return f"{int(float(value)):,}"
    except (TypeError, ValueError):
        return "?"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
