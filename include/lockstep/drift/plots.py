"""The drift plot: both samples on two principal components, and each test's p-value
against the false-alarm level, so a reader sees at a glance what moved and how far."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.drift.statistics import as_vectors, subsample
from lockstep.drift.verdict import DriftReport

PLOT_SAMPLES = 1000  # points per side in the scatter


def plot_drift(
    report: DriftReport,
    reference_vectors: np.ndarray | None,
    current_vectors: np.ndarray | None,
    path: str | Path,
    *,
    seed: int = 0,
    segment_members: Sequence[int] = (),
) -> Path:
    """A PNG: both samples on their first two principal components (when vectors are
    given) with the segment that moved highlighted, and each test's p-value against the
    per-check false-alarm level (red when significant), on a log scale.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lockstep.model.evaluation_plot import save_png

    have_vectors = reference_vectors is not None and current_vectors is not None
    fig = Figure(figsize=(12 if have_vectors else 6, 5))
    FigureCanvasAgg(fig)
    if have_vectors:
        _scatter(fig.add_subplot(1, 2, 1), report, reference_vectors, current_vectors, segment_members, seed)
    ax2 = fig.add_subplot(1, 2, 2) if have_vectors else fig.add_subplot(1, 1, 1)
    _p_value_bars(ax2, report)
    verdict = "DRIFT" if report.drifted else "no drift"
    ax2.set_title(f"Tests: -log10 p vs the false-alarm level: {verdict}")
    fig.tight_layout()
    return save_png(fig, Path(path))


def _scatter(ax: Any, report: DriftReport, ref_vectors: Any, cur_vectors: Any, members: Sequence[int], seed: int) -> None:
    ref_2d, cur_2d, cur_rows = _pca_2d(ref_vectors, cur_vectors, seed)
    in_segment = np.isin(cur_rows, np.asarray(list(members), dtype=np.int64))
    ax.scatter(ref_2d[:, 0], ref_2d[:, 1], s=6, alpha=0.4, label="reference", c="tab:blue")
    rest = cur_2d[~in_segment]
    ax.scatter(rest[:, 0], rest[:, 1], s=6, alpha=0.4, label="current", c="tab:orange")
    if in_segment.any():
        seg = report.segment or {}
        share = seg.get("current_share")
        label = "segment" + (f" ({share:.0%} of window)" if share is not None else "")
        ax.scatter(cur_2d[in_segment, 0], cur_2d[in_segment, 1], s=10, alpha=0.8, label=label, c="tab:red")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Embeddings, first two principal components")
    ax.legend(loc="best", markerscale=3)


def _p_value_bars(ax: Any, report: DriftReport) -> None:
    tests = sorted(k for k in report.figures if k.endswith("_p_value") and not k.endswith("permutation_p_value"))
    level = report.figures.get("false_alarm_level")
    if not tests or level is None:
        ax.text(0.5, 0.5, "no test run", ha="center", va="center")
        return
    heights = [-math.log10(max(report.figures[k], 1e-300)) for k in tests]
    y = np.arange(len(tests))
    cut = -math.log10(level / len(tests))  # Holm's strictest step: a conservative guide line
    colours = ["tab:red" if h > cut else "tab:green" for h in heights]
    ax.barh(y, heights, color=colours, height=0.6)
    ax.axvline(cut, color="black", linestyle="--", label=f"level / tests = {level / len(tests):.1e}")
    for yi, (name, h) in enumerate(zip(tests, heights, strict=True)):
        ax.text(h, yi, f" p={report.figures[name]:.2g}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([k.removesuffix("_p_value") for k in tests], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("-log10 p")
    ax.legend(loc="lower right")


def _pca_2d(
    reference: Sequence[Any] | np.ndarray, current: Sequence[Any] | np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both samples on the first two principal components of their union, and which
    current rows were plotted (the scatter shows at most PLOT_SAMPLES per side)."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    ref = subsample(as_vectors(reference, "reference_vectors"), PLOT_SAMPLES, rng)
    cur_all = as_vectors(current, "current_vectors")
    cur_rows = np.arange(len(cur_all))
    if len(cur_all) > PLOT_SAMPLES:
        cur_rows = np.sort(rng.choice(len(cur_all), size=PLOT_SAMPLES, replace=False))
    cur = cur_all[cur_rows]
    both = np.vstack([ref, cur]).astype(np.float64)
    n_components = min(2, both.shape[0], both.shape[1])
    projected = PCA(n_components=n_components, random_state=seed).fit_transform(both)
    if projected.shape[1] < 2:
        projected = np.hstack([projected, np.zeros((projected.shape[0], 2 - projected.shape[1]))])
    return projected[: len(ref)], projected[len(ref) :], cur_rows
