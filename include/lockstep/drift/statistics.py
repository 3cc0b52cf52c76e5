"""Drift: has recent data moved away from what the champion was trained on?

Every signal is a **calibrated test**: a p-value under "the window is a sample of the
reference distribution", and drift is declared when the p-values, corrected together
(Holm), fall below the configured false-alarm rate. No fixed floor on an effect size
decides: a floor like "classifier AUC above 0.70" cannot see a new segment that is 20 %
of the window, because a mixture with share s caps the AUC near 0.5 + s/2.

* **Vocabulary** (``vocabulary_drift``): the share of current tokens never seen in the
  reference texts and the Jensen-Shannon distance between the two token distributions.
  Both depend heavily on the window size (20 documents of the very same distribution
  show a JS distance above 0.5), so each is tested by permutation: documents of the
  reference sample and the window are reshuffled between the two sides (sizes kept) and
  the figure recomputed, all permutations at once as one sparse product. The p-value is
  the normal tail of the observed figure under the permutations' mean and spread, so a
  handful of permutations can resolve the small levels a day of hourly checks needs.
  The *excess* over a same-sized reference sample is still reported (a person reads it
  more easily than a p-value).
* **Embeddings** (``embedding_drift``): a domain classifier tries to tell reference
  vectors from current ones; its cross-validated ROC AUC is 0.5 when it cannot. Its
  p-value comes from the same classifier under shuffled domain labels, computed in
  closed form (one factorisation per fold for all permutations; see the function).
  The reference vectors must embed texts the model was *not fitted on*: a TF-IDF +
  SVD model fits its own training texts more closely than new ones, and on 20
  Newsgroups training texts vs held-out texts of the same period give an AUC of
  0.71-0.75 with no drift at all.
* **Segment** (``segment_drift``): k-means clusters of the pooled embeddings; the
  window's share of each cluster against the reference's (a chi-square test on the
  cluster-by-side table, valid because the clusters never see the side labels), and
  the cluster where the window is most over-represented is reported as *the part that
  moved*: its share, a few example texts and the words that set it apart.
* **Click-through** (``click_through_drift``): a one-sided z-test for a drop in CTR,
  per user (the delta-method variance of per-user sums: a user's searches are one
  unit, not independent trials), plus a minimum relative drop, so "significant" alone
  (easy with much traffic) is not enough to call drift.

Each family has its module: ``lockstep.drift.vocabulary``, ``lockstep.drift.classifier``,
``lockstep.drift.segments`` and ``lockstep.drift.click_through``; ``lockstep.drift.verdict``
(``assess``) turns them into one ``DriftReport`` with reasons a person can act on, and
``lockstep.drift.plots`` draws it. This module holds what the tests share: their error,
the permutation tail p-value, and the checks and sampling of embedding vectors.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from lockstep.core.errors import LockstepError


class DriftError(LockstepError, ValueError):
    """The drift inputs cannot be compared (empty window, mismatched dimensions)."""


def permutation_tail_p(observed: float, null: np.ndarray) -> float:
    """One-sided p-value of ``observed`` against permutation draws ``null``.

    The normal upper tail at (observed - mean) / sd of the draws: permutation moments
    with a normal shape, which resolves levels far below 1 / (draws + 1) (an hourly
    check spending a 1 % daily budget tests at 0.04 % or less). Whether the resulting
    false-alarm rate holds is what benchmarks/bench_drift.py measures on control windows.
    """
    from scipy.stats import norm

    null = np.asarray(null, dtype=np.float64)
    sd = float(null.std(ddof=1)) if null.size > 1 else 0.0
    mean = float(null.mean()) if null.size else observed
    if sd <= 1e-12:
        return 1.0 if observed <= mean + 1e-12 else 0.0
    return float(norm.sf((observed - mean) / sd))


def single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread: the matrices here are small (256 x 256), and on a shared
    machine OpenBLAS's thread hand-offs made each factorisation 10-50x slower."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    return threadpool_limits(limits=1, user_api="blas")


def subsample(x: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_rows`` rows, in their order: caps a test's cost on a busy window."""
    if max_rows < 1:
        raise DriftError(f"max_samples must be >= 1, got {max_rows}")
    if len(x) <= max_rows:
        return x
    return x[np.sort(rng.choice(len(x), size=max_rows, replace=False))]


def as_vectors(values: Any, name: str) -> np.ndarray:
    """The vectors as a finite (n, dim) float32 array, or an error naming the input: a NaN
    would otherwise surface as a meaningless AUC deep inside a test."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DriftError(f"{name} must be a 2-D (n, dim) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DriftError(f"{name} holds NaN or infinite values; re-embed those rows")
    return arr
