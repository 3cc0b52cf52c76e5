"""The offline evaluation's figure: both models' metrics with intervals, and per category.

``plot_evaluation`` draws what ``evaluation.compare`` decided on, for the training run's
artifacts in MLflow; ``save_png`` writes any matplotlib figure atomically (the drift
check's plots use it too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.model.evaluation import (
    METRICS,
    EvalResult,
    bootstrap_ci,
    display_name,
    metric_key,
    plain,
)

MAX_PLOTTED_LABELS = 40


def plot_evaluation(
    challenger: EvalResult,
    champion: EvalResult | None,
    path: str | Path,
    *,
    label_names: Mapping[Any, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Path:
    """A PNG for the MLflow run: both metrics with 95% CI error bars for both models,
    and precision@k per query label (when there are between 2 and 40 labels).

    Uses matplotlib's Agg canvas directly (no pyplot), so it is safe in worker threads
    and never opens a window. Written to a temporary name and renamed into place.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models: list[tuple[str, EvalResult]] = [("challenger", challenger)]
    if champion is not None:
        models.append(("champion", champion))
    labels = np.unique(challenger.query_labels)
    show_labels = 2 <= len(labels) <= MAX_PLOTTED_LABELS

    fig = Figure(
        figsize=(
            12 if show_labels else 6,
            max(4.5, 0.28 * len(labels) + 1.5) if show_labels else 4.5,
        )
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1) if show_labels else fig.add_subplot(1, 1, 1)
    width = 0.8 / len(models)
    colours = {"challenger": "tab:orange", "champion": "tab:blue"}
    for i, (who, result) in enumerate(models):
        means, errs = [], [[], []]
        for name in METRICS:
            mean, low, high = bootstrap_ci(
                result.values(metric_key(name, result.k)), n_boot=n_boot, seed=seed
            )
            means.append(mean)
            errs[0].append(mean - low)
            errs[1].append(high - mean)
        x = np.arange(len(METRICS)) + (i - (len(models) - 1) / 2) * width
        ax.bar(x, means, width, yerr=errs, capsize=4, label=who, color=colours[who])
        for xi, m in zip(x, means, strict=True):
            ax.text(xi, m / 2, f"{m:.3f}", ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(np.arange(len(METRICS)))
    ax.set_xticklabels([display_name(name, challenger.k) for name in METRICS])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("mean over queries (95% CI)")
    ax.set_title(f"Offline evaluation, {challenger.n_queries} queries")
    ax.legend(loc="upper center", ncol=2)

    if show_labels:
        ax2 = fig.add_subplot(1, 2, 2)
        y = np.arange(len(labels))
        height = 0.8 / len(models)
        for i, (who, result) in enumerate(models):
            per_label = result.per_label_precision()
            vals = [per_label.get(plain(label), math.nan) for label in labels]
            ax2.barh(
                y + (i - (len(models) - 1) / 2) * height,
                vals,
                height,
                label=who,
                color=colours[who],
            )
        names = [
            str(label_names.get(plain(label), label)) if label_names else str(label)
            for label in labels
        ]
        ax2.set_yticks(y)
        ax2.set_yticklabels(names, fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xlim(0, 1)
        ax2.set_xlabel(f"precision@{challenger.k}")
        ax2.set_title("Per category (colours as on the left)")
    fig.tight_layout()
    return save_png(fig, Path(path))


def save_png(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG atomically (a temporary name renamed into place)."""
    from lockstep.core.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
