"""Embedding drift: can a domain classifier tell current embeddings from the reference?

Its cross-validated ROC AUC is 0.5 when it cannot. The p-value comes from the same
classifier under shuffled domain labels, computed in closed form (one factorisation per
fold for all permutations; see ``embedding_drift``): this closed-form permutation test is
what makes a calibrated hourly check affordable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lockstep.drift.statistics import (
    DriftError,
    as_vectors,
    permutation_tail_p,
    single_threaded_blas,
    subsample,
)


@dataclass(frozen=True)
class EmbeddingDrift:
    """Domain-classifier test between reference and current embeddings."""

    auc: float  # cross-validated ROC AUC of telling current from reference
    threshold: float  # null_auc_quantile: the AUC a shuffled labelling reaches 5 % of the time
    null_auc_quantile: float  # 95th percentile of the AUC under shuffled labels
    p_value: float  # empirical permutation p-value, >= 1 / (n_permutations + 1)
    mean_cosine_distance: float  # 1 - cos(mean reference vector, mean current vector)
    n_reference: int  # rows used after subsampling
    n_current: int
    n_permutations: int
    tail_p_value: float = math.nan  # normal tail under the permutations' moments: the test's

    @property
    def drifted(self) -> bool:
        """Significant at 1 % on its own (``assess`` applies the configured rate)."""
        return self.tail_p_value < 0.01


def embedding_drift(
    reference_vectors: np.ndarray,
    current_vectors: np.ndarray,
    n_permutations: int = 100,
    seed: int = 0,
    max_samples: int = 2000,
    *,
    quantile: float = 0.95,
    n_folds: int = 5,
    ridge: float = 1.0,
) -> EmbeddingDrift:
    """Can a linear classifier tell the current embeddings from the reference ones?

    The classifier is regularised least squares on the domain label (the same
    direction as linear discriminant analysis), not logistic regression: its weights
    are ``solve(X'X + lambda I, X'y)``, and X'X does not depend on the labels, so one
    factorisation per fold serves the observed labels and every permutation at once.
    2000 x 256 per side with 100 permutations takes 0.3-0.7 s here, where one 5-fold
    logistic regression alone takes 0.5-1 s, so a permutation test with it would take
    minutes. Its AUC stays within about 0.03 of logistic regression's (measured on 20
    Newsgroups embeddings and checked by the tests on Gaussians). ``ridge`` is lambda
    relative to the mean eigenvalue of X'X; 0.1 to 100 give nearly the same AUCs.

    Folds are scikit-learn's stratified folds, and the labels are permuted within each
    fold, which keeps the folds stratified under the null.
    """
    ref = as_vectors(reference_vectors, "reference_vectors")
    cur = as_vectors(current_vectors, "current_vectors")
    if ref.shape[1] != cur.shape[1]:
        raise DriftError(
            f"reference vectors have dimension {ref.shape[1]} but current ones {cur.shape[1]}: "
            "embed both with the same model version"
        )
    if n_permutations < 1:
        raise DriftError(f"n_permutations must be >= 1, got {n_permutations}")
    if n_folds < 2:
        raise DriftError(f"n_folds must be >= 2, got {n_folds}")
    min_rows = 2 * n_folds
    if min(len(ref), len(cur)) < min_rows:
        raise DriftError(
            f"embedding drift needs at least {min_rows} vectors per side, got "
            f"{len(ref)} reference and {len(cur)} current; wait for a larger window"
        )

    rng = np.random.default_rng(seed)
    distance = _mean_cosine_distance(ref, cur)
    ref = subsample(ref, max_samples, rng)
    cur = subsample(cur, max_samples, rng)
    x = np.vstack([ref, cur]).astype(np.float64)
    y = np.concatenate([np.zeros(len(ref)), np.ones(len(cur))])
    folds = _stratified_folds(y, n_folds, rng)
    labels = _permuted_labels(y, folds, n_permutations, rng)
    with single_threaded_blas():
        aucs = _cross_validated_aucs(x, labels, folds, ridge)

    observed, null = float(aucs[0]), aucs[1:]
    null_q = float(np.quantile(null, quantile))
    p_value = float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))
    return EmbeddingDrift(
        auc=observed,
        threshold=null_q,
        null_auc_quantile=null_q,
        p_value=p_value,
        mean_cosine_distance=distance,
        n_reference=len(ref),
        n_current=len(cur),
        n_permutations=n_permutations,
        tail_p_value=permutation_tail_p(observed, null),
    )


def _stratified_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number per row, from scikit-learn's shuffled StratifiedKFold."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=int(rng.integers(2**31)))
    folds = np.empty(y.size, dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(y.size), y)):
        folds[test] = fold
    return folds


def _permuted_labels(
    y: np.ndarray, folds: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """(n, 1 + n_permutations): the observed labels, then labels shuffled within folds."""
    labels = np.empty((y.size, 1 + n_permutations), dtype=np.float64)
    labels[:, 0] = y
    for fold in np.unique(folds):
        rows = np.flatnonzero(folds == fold)
        block = np.broadcast_to(y[rows][:, None], (rows.size, n_permutations))
        labels[rows, 1:] = rng.permuted(block, axis=0)
    return labels


def _cross_validated_aucs(
    x: np.ndarray, labels: np.ndarray, folds: np.ndarray, ridge: float
) -> np.ndarray:
    """Mean over folds of the held-out ROC AUC, for every label column at once."""
    n_folds = int(folds.max()) + 1
    total = np.zeros(labels.shape[1])
    for fold in range(n_folds):
        test = folds == fold
        train = ~test
        mean = x[train].mean(axis=0)
        xc = x[train] - mean
        gram = xc.T @ xc
        lam = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
        gram[np.diag_indices_from(gram)] += lam
        weights = np.linalg.solve(gram, xc.T @ labels[train])
        scores = (x[test] - mean) @ weights
        total += _column_aucs(scores, labels[test])
    return total / n_folds


def _column_aucs(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC per column via the Mann-Whitney rank sum (ties get average ranks).

    Closed form for the permutation columns (scikit-learn's ``roc_auc_score`` per
    column would be a Python loop over hundreds of them); the observed column is
    scikit-learn's own figure.
    """
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    ranks = rankdata(scores, axis=0)
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    rank_sum = (ranks * labels).sum(axis=0)
    aucs = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    aucs[0] = roc_auc_score(labels[:, 0], scores[:, 0])
    return aucs


def _mean_cosine_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    a = ref.mean(axis=0, dtype=np.float64)
    b = cur.mean(axis=0, dtype=np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 0.0 if not (a.any() or b.any()) else 1.0
    return float(1.0 - np.dot(a, b) / norms)
