"""Drift: has recent data moved away from what the champion was trained on?

Three independent signals, each cheap enough for a scheduled DAG run:

* **Vocabulary** (``vocabulary_drift``): the share of current tokens never seen in the
  reference texts, and the Jensen-Shannon distance between the two token
  distributions. Both depend heavily on the window size: 20 documents from the very
  same distribution show a JS distance above 0.5 against their own corpus, because the
  window cannot contain the corpus's long tail. So each figure comes with a
  *baseline*: the same figure for random reference samples of the current window's
  size against the rest of the reference. Thresholds apply to the excess over that
  baseline, so one threshold serves windows of a hundred or a hundred thousand
  documents. Measured on 20 Newsgroups (train split as reference, 100 to 2,000
  documents of the later test split as window): the same categories give a JS excess
  of 0.00-0.03 and an unseen-share excess of 0.00-0.03; switching from comp/rec to
  talk/soc/alt categories gives 0.15-0.22 and 0.06-0.09. Below about 50 documents even
  that topic switch hides in the sampling noise (excess 0.01-0.07).
* **Embeddings** (``embedding_drift``): a domain classifier tries to tell reference
  vectors from current ones; its cross-validated ROC AUC is 0.5 when it cannot. The
  threshold is the 95th percentile of the AUC under shuffled domain labels (a
  permutation test), never below 0.55 (Evidently's default), so a large sample's
  tiny but real shift is not flagged just because it is detectable.
  The reference vectors must embed texts the model was *not fitted on*: a TF-IDF +
  SVD model fits its own training texts more closely than new ones, and on 20
  Newsgroups the training texts vs held-out texts of the same period already give an
  AUC of 0.71-0.75, which would flag drift on every run. Held-out reference texts vs
  the later test split give 0.57-0.62 (real, mild drift over time); a change of topic
  gives 0.97.
* **Click-through** (``click_through_drift``): a one-sided two-proportion z-test for a
  drop in CTR, plus the relative drop, so "significant" alone (easy with much traffic)
  is not enough to call drift.

``assess`` turns the three into one ``DriftReport`` with reasons a person can act on.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LockstepError

Analyzer = Callable[[str], Iterable[str]]

TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


class DriftError(LockstepError, ValueError):
    """The drift inputs cannot be compared (empty window, mismatched dimensions)."""


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens: letters and digits, with inner apostrophes kept (don't)."""
    return TOKEN_PATTERN.findall(text.lower())


# --- vocabulary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabularyDrift:
    """Token-level comparison of a current window with the reference texts.

    ``baseline_*`` are the same figures for reference samples of the window's size
    against the rest of the reference (NaN when the reference is too small to split);
    ``*_excess`` subtract them (or nothing, when there is no baseline).
    """

    unseen_token_share: float
    js_distance: float
    baseline_unseen_token_share: float
    baseline_js_distance: float
    n_reference_tokens: int
    n_current_tokens: int
    reference_vocabulary_size: int
    top_unseen: tuple[tuple[str, int], ...] = ()

    @property
    def unseen_token_share_excess(self) -> float:
        return self.unseen_token_share - _zero_if_nan(self.baseline_unseen_token_share)

    @property
    def js_distance_excess(self) -> float:
        return self.js_distance - _zero_if_nan(self.baseline_js_distance)


def vocabulary_drift(
    reference_texts: Iterable[str],
    current_texts: Iterable[str],
    analyzer: Analyzer | None = None,
    *,
    n_baseline: int = 5,
    seed: int = 0,
    n_top_unseen: int = 10,
) -> VocabularyDrift:
    """Compare the token distribution of ``current_texts`` with ``reference_texts``.

    Tokens are mapped to integer ids once, and each reference text is kept as a small
    id array, so a million-token reference costs a few megabytes and the baseline
    samples are array sums rather than re-tokenisation. The JS distance (base 2, in
    0..1) is over the union vocabulary.
    """
    analyze = analyzer or tokenize
    vocab: dict[str, int] = {}
    ref_docs = [_token_ids(analyze(text), vocab) for text in reference_texts]
    n_ref_vocab = len(vocab)
    cur_ids = np.concatenate(
        [_token_ids(analyze(text), vocab) for text in current_texts] or [_EMPTY_IDS]
    )
    ref_ids = np.concatenate(ref_docs or [_EMPTY_IDS])
    if ref_ids.size == 0:
        raise DriftError("the reference texts contain no tokens; give the training snapshot")
    if cur_ids.size == 0:
        raise DriftError("the current texts contain no tokens; there is nothing to compare")

    n_union = len(vocab)
    ref_counts = np.bincount(ref_ids, minlength=n_union).astype(np.float64)
    cur_counts = np.bincount(cur_ids, minlength=n_union).astype(np.float64)
    unseen = cur_counts[n_ref_vocab:]
    words = _inverse(vocab, n_ref_vocab)
    top = np.argsort(-unseen, kind="stable")[: max(0, n_top_unseen)]
    top_unseen = tuple((words[i], int(unseen[i])) for i in top if unseen[i] > 0)

    baseline_unseen, baseline_js = _vocabulary_baseline(
        ref_docs, ref_counts[:n_ref_vocab], int(cur_ids.size), n_baseline, seed
    )
    return VocabularyDrift(
        unseen_token_share=float(unseen.sum() / cur_ids.size),
        js_distance=_js_distance(ref_counts, cur_counts),
        baseline_unseen_token_share=baseline_unseen,
        baseline_js_distance=baseline_js,
        n_reference_tokens=int(ref_ids.size),
        n_current_tokens=int(cur_ids.size),
        reference_vocabulary_size=n_ref_vocab,
        top_unseen=top_unseen,
    )


_EMPTY_IDS = np.zeros(0, dtype=np.int32)


def _token_ids(tokens: Iterable[str], vocab: dict[str, int]) -> np.ndarray:
    ids = [vocab.setdefault(token, len(vocab)) for token in tokens]
    return np.asarray(ids, dtype=np.int32) if ids else _EMPTY_IDS


def _inverse(vocab: dict[str, int], start: int) -> dict[int, str]:
    return {i - start: word for word, i in vocab.items() if i >= start}


def _vocabulary_baseline(
    ref_docs: list[np.ndarray], ref_counts: np.ndarray, n_tokens: int, n_draws: int, seed: int
) -> tuple[float, float]:
    """Mean (unseen share, JS distance) of reference samples of ~n_tokens vs the rest.

    A sample takes whole texts in random order until it holds n_tokens tokens, but at
    most half the reference, so the rest stays a fair reference. When the window is
    larger than that, the baseline overstates the noise a little (smaller samples look
    further away), which errs towards not flagging drift.
    """
    lengths = np.array([doc.size for doc in ref_docs], dtype=np.int64)
    total = int(lengths.sum())
    if len(ref_docs) < 2 or n_draws < 1:
        return math.nan, math.nan
    target = min(n_tokens, total // 2)
    rng = np.random.default_rng(seed)
    unseen_shares, distances = [], []
    for _ in range(n_draws):
        order = rng.permutation(len(ref_docs))
        cumulative = np.cumsum(lengths[order])
        take = int(np.searchsorted(cumulative, max(target, 1))) + 1
        take = min(take, len(ref_docs) - 1)
        sample = np.concatenate([ref_docs[i] for i in order[:take]])
        if sample.size == 0 or sample.size == total:
            continue
        held = np.bincount(sample, minlength=ref_counts.size).astype(np.float64)
        rest = ref_counts - held
        unseen_shares.append(float(held[rest == 0].sum() / sample.size))
        distances.append(_js_distance(rest, held))
    if not distances:
        return math.nan, math.nan
    return float(np.mean(unseen_shares)), float(np.mean(distances))


def _js_distance(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon distance in bits (0..1), as scipy's ``jensenshannon(base=2)``.

    Written out because importing scipy.spatial costs 0.5-2 s in every DAG task.
    """
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = 0.5 * (p + q)
    divergence = 0.5 * (_kl_bits(p, m) + _kl_bits(q, m))
    return float(math.sqrt(max(divergence, 0.0)))


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    present = p > 0  # 0 log 0 = 0; m > 0 wherever p > 0
    return float(np.sum(p[present] * np.log2(p[present] / m[present])))


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


# --- embeddings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingDrift:
    """Domain-classifier test between reference and current embeddings."""

    auc: float  # cross-validated ROC AUC of telling current from reference
    threshold: float  # max(auc_floor, null_auc_quantile): drift when auc is above it
    null_auc_quantile: float  # 95th percentile of the AUC under shuffled labels
    p_value: float  # permutation p-value of the AUC, >= 1 / (n_permutations + 1)
    mean_cosine_distance: float  # 1 - cos(mean reference vector, mean current vector)
    n_reference: int  # rows used after subsampling
    n_current: int
    n_permutations: int

    @property
    def drifted(self) -> bool:
        return self.auc > self.threshold


def embedding_drift(
    reference_vectors: np.ndarray,
    current_vectors: np.ndarray,
    n_permutations: int = 100,
    seed: int = 0,
    max_samples: int = 2000,
    *,
    auc_floor: float = 0.55,
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

    Folds are stratified (each holds the same share of both domains), and the labels
    are permuted within each fold, which keeps the folds stratified under the null.
    """
    ref = _as_vectors(reference_vectors, "reference_vectors")
    cur = _as_vectors(current_vectors, "current_vectors")
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
    ref = _subsample(ref, max_samples, rng)
    cur = _subsample(cur, max_samples, rng)
    x = np.vstack([ref, cur]).astype(np.float64)
    y = np.concatenate([np.zeros(len(ref)), np.ones(len(cur))])
    folds = _stratified_folds(y, n_folds, rng)
    labels = _permuted_labels(y, folds, n_permutations, rng)
    with _single_threaded_blas():
        aucs = _cross_validated_aucs(x, labels, folds, ridge)

    observed, null = float(aucs[0]), aucs[1:]
    null_q = float(np.quantile(null, quantile))
    p_value = float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))
    return EmbeddingDrift(
        auc=observed,
        threshold=max(auc_floor, null_q),
        null_auc_quantile=null_q,
        p_value=p_value,
        mean_cosine_distance=distance,
        n_reference=len(ref),
        n_current=len(cur),
        n_permutations=n_permutations,
    )


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread: the matrices here are small (256 x 256), and on a shared
    machine OpenBLAS's thread hand-offs made each factorisation 10-50x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency, but not ours
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _stratified_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number per row: each class shuffled and dealt round-robin."""
    folds = np.empty(y.size, dtype=np.int64)
    offset = 0
    for cls in (0.0, 1.0):
        rows = rng.permutation(np.flatnonzero(y == cls))
        folds[rows] = (np.arange(rows.size) + offset) % n_folds
        offset += rows.size  # so the folds' sizes stay within one of each other
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
    """ROC AUC per column via the Mann-Whitney rank sum (ties get average ranks)."""
    ranks = np.empty_like(scores)
    for col in range(scores.shape[1]):
        ranks[:, col] = _average_ranks(scores[:, col])
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    rank_sum = (ranks * labels).sum(axis=0)
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank (scipy's rankdata, unimported)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (upper - (counts - 1) / 2.0)[inverse]


def _mean_cosine_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    a = ref.mean(axis=0, dtype=np.float64)
    b = cur.mean(axis=0, dtype=np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 0.0 if not (a.any() or b.any()) else 1.0
    return float(1.0 - np.dot(a, b) / norms)


def _subsample(x: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if max_rows < 1:
        raise DriftError(f"max_samples must be >= 1, got {max_rows}")
    if len(x) <= max_rows:
        return x
    return x[np.sort(rng.choice(len(x), size=max_rows, replace=False))]


def _as_vectors(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DriftError(f"{name} must be a 2-D (n, dim) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DriftError(f"{name} holds NaN or infinite values; re-embed those rows")
    return arr


# --- click-through ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickThroughDrift:
    """CTR of the reference period vs the current one."""

    ctr_reference: float
    ctr_current: float
    relative_drop: float  # (reference - current) / reference; negative is a rise
    z: float  # positive when the current CTR is lower
    p_value: float  # one-sided: probability of a drop this large with no real change
    reference_impressions: int
    current_impressions: int


def click_through_drift(
    ref_clicks: int, ref_impressions: int, cur_clicks: int, cur_impressions: int
) -> ClickThroughDrift:
    """One-sided pooled two-proportion z-test for "the current CTR is lower".

    One-sided because only a drop calls for retraining. With no impressions on a side
    the CTR is reported as 0 and the p-value as 1: no evidence, never a NaN that a
    gate could misread.
    """
    for name, value in (
        ("ref_clicks", ref_clicks),
        ("ref_impressions", ref_impressions),
        ("cur_clicks", cur_clicks),
        ("cur_impressions", cur_impressions),
    ):
        if value < 0:
            raise DriftError(f"{name} must be >= 0, got {value}")
    if ref_clicks > ref_impressions or cur_clicks > cur_impressions:
        raise DriftError(
            f"more clicks than impressions (reference {ref_clicks}/{ref_impressions}, "
            f"current {cur_clicks}/{cur_impressions}); count one impression per shown result list"
        )
    ctr_ref = ref_clicks / ref_impressions if ref_impressions else 0.0
    ctr_cur = cur_clicks / cur_impressions if cur_impressions else 0.0
    drop = (ctr_ref - ctr_cur) / ctr_ref if ctr_ref > 0 else 0.0
    z, p_value = 0.0, 1.0
    if ref_impressions and cur_impressions:
        pooled = (ref_clicks + cur_clicks) / (ref_impressions + cur_impressions)
        se = math.sqrt(pooled * (1 - pooled) * (1 / ref_impressions + 1 / cur_impressions))
        if se > 0:
            z = (ctr_ref - ctr_cur) / se
            p_value = 0.5 * math.erfc(z / math.sqrt(2.0))  # normal upper tail
    return ClickThroughDrift(
        ctr_reference=float(ctr_ref),
        ctr_current=float(ctr_cur),
        relative_drop=float(drop),
        z=float(z),
        p_value=p_value,
        reference_impressions=int(ref_impressions),
        current_impressions=int(cur_impressions),
    )


# --- the verdict --------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    """When each signal counts as drift. Defaults and why:

    * ``unseen_token_share_excess`` 0.05 and ``js_distance_excess`` 0.10: above what a
      same-sized reference sample shows (see the module docstring for the 20 Newsgroups
      measurements: 0.00-0.03 without drift, 0.06-0.09 and 0.15-0.22 with a topic shift).
    * ``embedding_auc_floor`` 0.55: Evidently's domain-classifier threshold; the
      permutation test's 95th percentile applies when higher (small samples).
    * ``embedding_mean_cosine_distance``: None, reported only; the classifier already
      sees a shift of the mean, and the right value depends on the model.
    * ``ctr_relative_drop`` 0.20 with ``ctr_p_value`` 0.01, and at least
      ``min_impressions`` 100 per side (the usual minimum per arm before a bandit or a
      canary analysis trusts a rate): a drop must be both large and clear.
    """

    unseen_token_share_excess: float = 0.05
    js_distance_excess: float = 0.10
    embedding_auc_floor: float = 0.55
    embedding_mean_cosine_distance: float | None = None
    ctr_relative_drop: float = 0.20
    ctr_p_value: float = 0.01
    min_impressions: int = 100


@dataclass(frozen=True)
class DriftReport:
    """The decision, a sentence per signal that fired, and flat figures for MLflow."""

    drifted: bool
    reasons: list[str]
    figures: dict[str, float]
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    notes: list[str] = field(default_factory=list)  # signals that could not be judged

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (asset metadata, XCom, a version tag)."""
        return {
            "drifted": self.drifted,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "figures": dict(self.figures),
            "thresholds": asdict(self.thresholds),
        }


def assess(
    vocab: VocabularyDrift | None,
    emb: EmbeddingDrift | None,
    ctr: ClickThroughDrift | None,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Drift when any measured signal crosses its threshold; None means not measured."""
    limits = thresholds or DriftThresholds()
    reasons: list[str] = []
    notes: list[str] = []
    figures: dict[str, float] = {}

    if vocab is None:
        notes.append("vocabulary not measured")
    else:
        _vocabulary_verdict(vocab, limits, reasons, notes, figures)
    if emb is None:
        notes.append("embeddings not measured")
    else:
        _embedding_verdict(emb, limits, reasons, figures)
    if ctr is None:
        notes.append("click-through not measured")
    else:
        _click_through_verdict(ctr, limits, reasons, notes, figures)

    figures["drifted"] = 1.0 if reasons else 0.0
    return DriftReport(
        drifted=bool(reasons), reasons=reasons, figures=figures, thresholds=limits, notes=notes
    )


def _vocabulary_verdict(
    vocab: VocabularyDrift,
    limits: DriftThresholds,
    reasons: list[str],
    notes: list[str],
    figures: dict[str, float],
) -> None:
    figures["vocabulary_unseen_token_share"] = vocab.unseen_token_share
    figures["vocabulary_unseen_token_share_excess"] = vocab.unseen_token_share_excess
    figures["vocabulary_js_distance"] = vocab.js_distance
    figures["vocabulary_js_distance_excess"] = vocab.js_distance_excess
    figures["vocabulary_current_tokens"] = float(vocab.n_current_tokens)
    if math.isnan(vocab.baseline_js_distance):
        notes.append("vocabulary baseline unavailable (reference too small); raw figures used")
    else:
        figures["vocabulary_unseen_token_share_baseline"] = vocab.baseline_unseen_token_share
        figures["vocabulary_js_distance_baseline"] = vocab.baseline_js_distance
    if vocab.unseen_token_share_excess > limits.unseen_token_share_excess:
        examples = ", ".join(word for word, _ in vocab.top_unseen[:5])
        reasons.append(
            f"{vocab.unseen_token_share:.1%} of current tokens are unseen in the reference "
            f"({vocab.unseen_token_share_excess:+.1%} over a same-sized reference sample, "
            f"threshold {limits.unseen_token_share_excess:.1%})"
            + (f"; most frequent new words: {examples}" if examples else "")
        )
    if vocab.js_distance_excess > limits.js_distance_excess:
        reasons.append(
            f"token distribution moved: Jensen-Shannon distance {vocab.js_distance:.3f}, "
            f"{vocab.js_distance_excess:+.3f} over a same-sized reference sample "
            f"(threshold {limits.js_distance_excess:.3f})"
        )


def _embedding_verdict(
    emb: EmbeddingDrift, limits: DriftThresholds, reasons: list[str], figures: dict[str, float]
) -> None:
    threshold = max(emb.threshold, limits.embedding_auc_floor)
    figures["embedding_auc"] = emb.auc
    figures["embedding_auc_threshold"] = threshold
    figures["embedding_p_value"] = emb.p_value
    figures["embedding_mean_cosine_distance"] = emb.mean_cosine_distance
    figures["embedding_n_reference"] = float(emb.n_reference)
    figures["embedding_n_current"] = float(emb.n_current)
    if emb.auc > threshold:
        floor = (
            f": none of {emb.n_permutations} permutations reached it"
            if round(emb.p_value * (emb.n_permutations + 1)) <= 1
            else ""
        )
        reasons.append(
            f"a classifier tells current from reference embeddings with ROC AUC {emb.auc:.3f} "
            f"(threshold {threshold:.3f}, permutation p = {emb.p_value:.3g}{floor}, "
            f"{emb.n_reference} vs {emb.n_current} vectors)"
        )
    limit = limits.embedding_mean_cosine_distance
    if limit is not None and emb.mean_cosine_distance > limit:
        reasons.append(
            f"the mean embedding moved: cosine distance {emb.mean_cosine_distance:.3f} "
            f"(threshold {limit:.3f})"
        )


def _click_through_verdict(
    ctr: ClickThroughDrift,
    limits: DriftThresholds,
    reasons: list[str],
    notes: list[str],
    figures: dict[str, float],
) -> None:
    figures["ctr_reference"] = ctr.ctr_reference
    figures["ctr_current"] = ctr.ctr_current
    figures["ctr_relative_drop"] = ctr.relative_drop
    figures["ctr_z"] = ctr.z
    figures["ctr_p_value"] = ctr.p_value
    figures["ctr_reference_impressions"] = float(ctr.reference_impressions)
    figures["ctr_current_impressions"] = float(ctr.current_impressions)
    fewest = min(ctr.reference_impressions, ctr.current_impressions)
    if fewest < limits.min_impressions:
        notes.append(
            f"click-through not judged: {fewest} impressions on one side, "
            f"fewer than {limits.min_impressions}"
        )
        return
    if ctr.relative_drop > limits.ctr_relative_drop and ctr.p_value < limits.ctr_p_value:
        reasons.append(
            f"click-through fell from {ctr.ctr_reference:.2%} to {ctr.ctr_current:.2%} "
            f"({ctr.relative_drop:.0%} drop, threshold {limits.ctr_relative_drop:.0%}; "
            f"one-sided p = {ctr.p_value:.2g} < {limits.ctr_p_value:g})"
        )


# --- plot ---------------------------------------------------------------------------------

PLOT_SAMPLES = 1000  # points per side in the scatter


def plot_drift(
    report: DriftReport,
    reference_vectors: np.ndarray | None,
    current_vectors: np.ndarray | None,
    path: str | Path,
    *,
    seed: int = 0,
) -> Path:
    """A PNG: both samples on their first two principal components (when vectors are
    given), and each measured figure as a bar against its threshold (red when over).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .evaluation import _save_png

    have_vectors = reference_vectors is not None and current_vectors is not None
    fig = Figure(figsize=(12 if have_vectors else 6, 5))
    FigureCanvasAgg(fig)
    if have_vectors:
        ax = fig.add_subplot(1, 2, 1)
        ref_2d, cur_2d = _pca_2d(reference_vectors, current_vectors, seed)
        ax.scatter(ref_2d[:, 0], ref_2d[:, 1], s=6, alpha=0.4, label="reference", c="tab:blue")
        ax.scatter(cur_2d[:, 0], cur_2d[:, 1], s=6, alpha=0.4, label="current", c="tab:orange")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title("Embeddings, first two principal components")
        ax.legend(loc="best", markerscale=3)
    bars = _bars(report)
    ax2 = fig.add_subplot(1, 2, 2) if have_vectors else fig.add_subplot(1, 1, 1)
    if bars:
        names = [name for name, _, _ in bars]
        values = [value for _, value, _ in bars]
        limits = [limit for _, _, limit in bars]
        y = np.arange(len(bars))
        colours = ["tab:red" if v > t else "tab:green" for v, t in zip(values, limits, strict=True)]
        ax2.barh(y, values, color=colours, height=0.6)
        ax2.scatter(limits, y, marker="|", s=900, c="black", label="threshold", zorder=3)
        for yi, value in zip(y, values, strict=True):
            ax2.text(value, yi + 0.38, f" {value:.3f}", va="center", fontsize=8)
        ax2.set_yticks(y)
        ax2.set_yticklabels(names, fontsize=9)
        ax2.invert_yaxis()
        ax2.legend(loc="lower right", markerscale=0.4)
    else:
        ax2.text(0.5, 0.5, "no signal measured", ha="center", va="center")
    verdict = "DRIFT" if report.drifted else "no drift"
    ax2.set_title(f"Figures vs thresholds: {verdict}")
    fig.tight_layout()
    return _save_png(fig, Path(path))


def _bars(report: DriftReport) -> list[tuple[str, float, float]]:
    f, t = report.figures, report.thresholds
    bars = []
    if "vocabulary_unseen_token_share_excess" in f:
        bars.append(
            (
                "unseen tokens, excess",
                f["vocabulary_unseen_token_share_excess"],
                t.unseen_token_share_excess,
            )
        )
        bars.append(
            ("JS distance, excess", f["vocabulary_js_distance_excess"], t.js_distance_excess)
        )
    if "embedding_auc" in f:
        bars.append(("classifier ROC AUC", f["embedding_auc"], f["embedding_auc_threshold"]))
        if t.embedding_mean_cosine_distance is not None:
            bars.append(
                (
                    "mean cosine distance",
                    f["embedding_mean_cosine_distance"],
                    t.embedding_mean_cosine_distance,
                )
            )
    if "ctr_relative_drop" in f:
        bars.append(("CTR relative drop", f["ctr_relative_drop"], t.ctr_relative_drop))
    return bars


def _pca_2d(
    reference: Sequence[Any] | np.ndarray, current: Sequence[Any] | np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = _subsample(_as_vectors(reference, "reference_vectors"), PLOT_SAMPLES, rng)
    cur = _subsample(_as_vectors(current, "current_vectors"), PLOT_SAMPLES, rng)
    both = np.vstack([ref, cur]).astype(np.float64)
    centred = both - both.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2].T
    if axes.shape[1] < 2:
        axes = np.hstack([axes, np.zeros((axes.shape[0], 2 - axes.shape[1]))])
    projected = centred @ axes
    return projected[: len(ref)], projected[len(ref) :]
