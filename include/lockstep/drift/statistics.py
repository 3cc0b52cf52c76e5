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
* **Click-through** (``click_through_drift``): a one-sided two-proportion z-test for a
  drop in CTR, plus a minimum relative drop, so "significant" alone (easy with much
  traffic) is not enough to call drift.

``assess`` turns them into one ``DriftReport`` with reasons a person can act on.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lockstep.core.errors import LockstepError

Analyzer = Callable[[str], Iterable[str]]

TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


class DriftError(LockstepError, ValueError):
    """The drift inputs cannot be compared (empty window, mismatched dimensions)."""


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens: letters and digits, with inner apostrophes kept (don't)."""
    return TOKEN_PATTERN.findall(text.lower())


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


# --- vocabulary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabularyDrift:
    """Token-level comparison of a current window with the reference texts.

    ``baseline_*`` are the same figures for reference samples of the window's size
    against the rest of the reference (NaN when the reference is too small to split);
    ``*_excess`` subtract them (or nothing, when there is no baseline). ``*_p_value``
    are the permutation tests' (NaN when not run: ``n_permutations=0``).
    """

    unseen_token_share: float
    js_distance: float
    baseline_unseen_token_share: float
    baseline_js_distance: float
    n_reference_tokens: int
    n_current_tokens: int
    reference_vocabulary_size: int
    top_unseen: tuple[tuple[str, int], ...] = ()
    js_p_value: float = math.nan
    unseen_p_value: float = math.nan
    n_permutations: int = 0

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
    n_permutations: int = 100,
) -> VocabularyDrift:
    """Compare the token distribution of ``current_texts`` with ``reference_texts``.

    Tokens are mapped to integer ids once, and each text is kept as a small id array,
    so a million-token reference costs a few megabytes and the baseline samples and
    permutations are array sums rather than re-tokenisation. The JS distance (base 2,
    in 0..1) is over the union vocabulary. The two figures get permutation p-values
    (documents reshuffled between the sides; ``n_permutations=0`` skips the test).
    """
    analyze = analyzer or tokenize
    vocab: dict[str, int] = {}
    ref_docs = [_token_ids(analyze(text), vocab) for text in reference_texts]
    n_ref_vocab = len(vocab)
    cur_docs = [_token_ids(analyze(text), vocab) for text in current_texts]
    cur_ids = np.concatenate(cur_docs or [_EMPTY_IDS])
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
    observed_unseen = float(unseen.sum() / cur_ids.size)
    observed_js = _js_distance(ref_counts, cur_counts)
    js_p, unseen_p = math.nan, math.nan
    if n_permutations > 0:
        js_p, unseen_p = _vocabulary_permutation_p(
            ref_docs, cur_docs, n_union, observed_js, observed_unseen, n_permutations, seed
        )
    return VocabularyDrift(
        unseen_token_share=observed_unseen,
        js_distance=observed_js,
        baseline_unseen_token_share=baseline_unseen,
        baseline_js_distance=baseline_js,
        n_reference_tokens=int(ref_ids.size),
        n_current_tokens=int(cur_ids.size),
        reference_vocabulary_size=n_ref_vocab,
        top_unseen=top_unseen,
        js_p_value=js_p,
        unseen_p_value=unseen_p,
        n_permutations=int(max(0, n_permutations)),
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


def _vocabulary_permutation_p(
    ref_docs: list[np.ndarray],
    cur_docs: list[np.ndarray],
    n_terms: int,
    observed_js: float,
    observed_unseen: float,
    n_permutations: int,
    seed: int,
) -> tuple[float, float]:
    """Permutation p-values of the JS distance and the unseen share.

    A document-by-term count matrix times a (documents x permutations) side matrix
    gives every permutation's current-side counts in one sparse product; the reference
    side is the total minus that.
    """
    from scipy import sparse
    from scipy.spatial.distance import jensenshannon

    docs = ref_docs + cur_docs
    lengths = np.array([d.size for d in docs], dtype=np.int64)
    counts = sparse.csr_matrix(
        (np.ones(int(lengths.sum())), np.concatenate(docs), np.r_[0, np.cumsum(lengths)]),
        shape=(len(docs), n_terms),
    )
    counts.sum_duplicates()
    rng = np.random.default_rng(seed + 7919)
    side = np.zeros(len(docs))
    side[len(ref_docs) :] = 1.0
    sides = rng.permuted(np.broadcast_to(side[:, None], (side.size, n_permutations)), axis=0)
    cur = np.asarray(counts.T @ sides)  # (terms, permutations)
    total = np.asarray(counts.sum(axis=0)).ravel()[:, None]
    ref = total - cur
    with np.errstate(invalid="ignore", divide="ignore"):
        js = jensenshannon(ref, cur, base=2, axis=0)
        unseen = ((ref == 0) * cur).sum(axis=0) / cur.sum(axis=0)
    js = js[np.isfinite(js)]
    unseen = unseen[np.isfinite(unseen)]
    return permutation_tail_p(observed_js, js), permutation_tail_p(observed_unseen, unseen)


def _js_distance(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon distance in bits (0..1) of two count vectors."""
    from scipy.spatial.distance import jensenshannon

    # Identical distributions can round to the square root of a tiny negative: NaN, so 0.
    return float(np.nan_to_num(jensenshannon(p_counts, q_counts, base=2), nan=0.0))


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


# --- embeddings ---------------------------------------------------------------------------


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
        threshold=null_q,
        null_auc_quantile=null_q,
        p_value=p_value,
        mean_cosine_distance=distance,
        n_reference=len(ref),
        n_current=len(cur),
        n_permutations=n_permutations,
        tail_p_value=permutation_tail_p(observed, null),
    )


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread: the matrices here are small (256 x 256), and on a shared
    machine OpenBLAS's thread hand-offs made each factorisation 10-50x slower."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    return threadpool_limits(limits=1, user_api="blas")


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


# --- segment ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentDrift:
    """The part of the window that moved: the cluster where it is most over-represented.

    ``p_value`` is the chi-square test of "window and reference spread over the clusters
    alike" (any cluster, any direction); the segment is reported whatever the p-value,
    and ``assess`` decides whether it counts.
    """

    p_value: float
    n_clusters: int
    cluster: int
    current_share: float  # share of the window's records in the segment
    reference_share: float  # share of the reference's records in it
    n_current: int  # window records in the segment
    moved_share: float  # total variation between the two cluster histograms
    examples: tuple[str, ...] = ()
    top_words: tuple[tuple[str, int], ...] = ()
    current_members: tuple[int, ...] = ()  # indices into the window of the segment's records

    @property
    def excess_share(self) -> float:
        return self.current_share - self.reference_share


def segment_drift(
    reference_vectors: np.ndarray,
    current_vectors: np.ndarray,
    current_texts: Sequence[str],
    reference_texts: Sequence[str] = (),
    *,
    n_clusters: int = 10,
    seed: int = 0,
    n_examples: int = 3,
    n_words: int = 8,
    analyzer: Analyzer | None = None,
) -> SegmentDrift:
    """Cluster both sides together (k-means, which never sees the side labels) and test
    whether the window fills the clusters in the reference's proportions.

    The reported segment is the cluster with the largest window excess; its examples
    are the window records nearest its centre, and its top words those most
    over-represented in them against ``reference_texts``.
    """
    from scipy.stats import chi2_contingency
    from sklearn.cluster import KMeans

    ref = _as_vectors(reference_vectors, "reference_vectors")
    cur = _as_vectors(current_vectors, "current_vectors")
    if len(current_texts) != len(cur):
        raise DriftError(
            f"segment drift needs one text per current vector, got {len(current_texts)} texts "
            f"for {len(cur)} vectors"
        )
    k = max(2, min(n_clusters, (len(ref) + len(cur)) // 20))
    if min(len(ref), len(cur)) < k:
        raise DriftError(f"segment drift needs at least {k} vectors per side")
    both = np.vstack([ref, cur]).astype(np.float64)
    with _single_threaded_blas():
        model = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(both)
    ref_labels, cur_labels = model.labels_[: len(ref)], model.labels_[len(ref) :]
    ref_hist = np.bincount(ref_labels, minlength=k).astype(np.float64)
    cur_hist = np.bincount(cur_labels, minlength=k).astype(np.float64)
    table = np.vstack([ref_hist, cur_hist])[:, (ref_hist + cur_hist) > 0]
    p_value = float(chi2_contingency(table, correction=False).pvalue) if table.shape[1] > 1 else 1.0
    ref_share, cur_share = ref_hist / len(ref), cur_hist / len(cur)
    cluster = int(np.argmax(cur_share - ref_share))
    members = np.flatnonzero(cur_labels == cluster)
    centre = model.cluster_centers_[cluster]
    nearest = members[np.argsort(-(cur[members] @ centre), kind="stable")][:n_examples]
    seg_ref_texts = [t for t, lab in zip(reference_texts, ref_labels, strict=False) if lab == cluster]
    return SegmentDrift(
        p_value=p_value,
        n_clusters=k,
        cluster=cluster,
        current_share=float(cur_share[cluster]),
        reference_share=float(ref_share[cluster]),
        n_current=int(members.size),
        moved_share=float(0.5 * np.abs(cur_share - ref_share).sum()),
        examples=tuple(_snippet(current_texts[i]) for i in nearest),
        top_words=_distinctive_words(
            [current_texts[i] for i in members], reference_texts or seg_ref_texts, n_words, analyzer
        ),
        current_members=tuple(int(i) for i in members),
    )


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


def _snippet(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _distinctive_words(
    segment: Sequence[str], reference: Sequence[str], n_words: int, analyzer: Analyzer | None
) -> tuple[tuple[str, int], ...]:
    """Words far more frequent in the segment than in the reference (smoothed log ratio,
    weighted by the count, seen at least three times), most distinctive first."""
    analyze = analyzer or tokenize
    seg = Counter(t for text in segment for t in analyze(text))
    ref = Counter(t for text in reference for t in analyze(text))
    n_seg, n_ref = max(sum(seg.values()), 1), max(sum(ref.values()), 1)
    scored = [
        (count * math.log(((count + 1) / n_seg) / ((ref.get(word, 0) + 1) / n_ref)), word, count)
        for word, count in seg.items()
        if count >= 3 and len(word) > 2 and word not in _stop_words()
    ]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return tuple((word, count) for score, word, count in scored[:n_words] if score > 0)


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
    """When the signals count as drift. Defaults and why:

    * ``false_alarm_rate`` 0.01 over ``checks_per_day`` 1: the chance that a check of
      data with no drift says drift. The rate is a daily budget spent evenly over the
      day's checks (Bonferroni alpha spending: each check tests at rate / checks, so by
      the union bound the day's chance of any false alarm stays within the rate); the
      hourly DAG passes 24. Within one check the several tests share that level by
      Holm's procedure, so testing more statistics does not add false alarms.
    * ``unseen_token_share_excess`` 0.05: search queries only. Queries are not
      documents (three words against three hundred), so they cannot be permuted with
      the reference texts; their unseen share is compared with a same-sized reference
      sample's instead, and this excess is the floor.
    * ``embedding_mean_cosine_distance``: None, reported only; the classifier already
      sees a shift of the mean, and the right value depends on the model.
    * ``ctr_relative_drop`` 0.20, with at least ``min_impressions`` 100 per side (the
      usual minimum per arm before a rate is trusted): a drop must be large as well as
      significant, because with much traffic a trivial drop is significant.
    """

    false_alarm_rate: float = 0.01
    checks_per_day: int = 1
    unseen_token_share_excess: float = 0.05
    embedding_mean_cosine_distance: float | None = None
    ctr_relative_drop: float = 0.20
    min_impressions: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise DriftError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if int(self.checks_per_day) != self.checks_per_day or self.checks_per_day < 1:
            raise DriftError(f"checks_per_day must be a whole number >= 1, got {self.checks_per_day}")

    @property
    def per_check_rate(self) -> float:
        """The false-alarm level one check spends: the daily rate over the day's checks."""
        return self.false_alarm_rate / self.checks_per_day


@dataclass(frozen=True)
class Finding:
    """One calibrated test: its p-value and the sentence to give when it is significant."""

    name: str
    p_value: float
    reason: str


@dataclass(frozen=True)
class DriftReport:
    """The decision, a sentence per test that fired, and flat figures for MLflow."""

    drifted: bool
    reasons: list[str]
    figures: dict[str, float]
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    notes: list[str] = field(default_factory=list)  # signals that could not be judged
    segment: dict[str, Any] | None = None  # the part of the window that moved

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (asset metadata, XCom, a version tag)."""
        return {
            "drifted": self.drifted,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "figures": dict(self.figures),
            "thresholds": asdict(self.thresholds),
            "segment": dict(self.segment) if self.segment else None,
        }


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses to reject at family-wise rate alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if not p_values[i] <= alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def assess(
    vocab: VocabularyDrift | None,
    emb: EmbeddingDrift | None,
    ctr: ClickThroughDrift | None,
    thresholds: DriftThresholds | None = None,
    *,
    segment: SegmentDrift | None = None,
    extra: Sequence[Finding] = (),
) -> DriftReport:
    """Drift when any test is significant after Holm's correction at the per-check rate.

    None means not measured. ``extra`` adds findings measured elsewhere (the check's
    accumulated window), so they share the same false-alarm level.
    """
    limits = thresholds or DriftThresholds()
    notes: list[str] = []
    figures: dict[str, float] = {}
    findings: list[Finding] = list(extra)
    reasons: list[str] = []

    if vocab is None:
        notes.append("vocabulary not measured")
    else:
        findings += vocabulary_findings(vocab, figures, notes)
    if emb is None:
        notes.append("embeddings not measured")
    else:
        findings += embedding_findings(emb, figures)
        reasons += _mean_shift_reason(emb, limits)
    if segment is not None:
        findings += segment_findings(segment, figures)
    if ctr is None:
        notes.append("click-through not measured")
    else:
        findings += _click_through_findings(ctr, limits, notes, figures)

    level = limits.per_check_rate
    rejected = holm([f.p_value for f in findings], level)
    for finding, significant in zip(findings, rejected, strict=True):
        figures[f"{finding.name}_p_value"] = finding.p_value
        if significant:
            reasons.append(f"{finding.reason} (p = {finding.p_value:.2g}; {_level_text(limits, len(findings))})")
    figures["false_alarm_level"] = level
    figures["tests"] = float(len(findings))
    figures["drifted"] = 1.0 if reasons else 0.0
    return DriftReport(
        drifted=bool(reasons),
        reasons=reasons,
        figures=figures,
        thresholds=limits,
        notes=notes,
        segment=segment_summary(segment) if segment is not None else None,
    )


def _level_text(limits: DriftThresholds, n_tests: int) -> str:
    per_day = f" ({limits.false_alarm_rate:g} a day over {limits.checks_per_day} checks)" if limits.checks_per_day > 1 else ""
    return f"false-alarm level {limits.per_check_rate:.2g} per check{per_day}, Holm over {n_tests} tests"


def vocabulary_findings(
    vocab: VocabularyDrift, figures: dict[str, float], notes: list[str], prefix: str = ""
) -> list[Finding]:
    """Figures for the report and the two permutation tests (when they were run)."""
    key = f"{prefix}vocabulary"
    figures[f"{key}_unseen_token_share"] = vocab.unseen_token_share
    figures[f"{key}_unseen_token_share_excess"] = vocab.unseen_token_share_excess
    figures[f"{key}_js_distance"] = vocab.js_distance
    figures[f"{key}_js_distance_excess"] = vocab.js_distance_excess
    figures[f"{key}_current_tokens"] = float(vocab.n_current_tokens)
    if not math.isnan(vocab.baseline_js_distance):
        figures[f"{key}_unseen_token_share_baseline"] = vocab.baseline_unseen_token_share
        figures[f"{key}_js_distance_baseline"] = vocab.baseline_js_distance
    if vocab.n_permutations < 1:
        notes.append(f"{_where(prefix)}vocabulary reported, not tested (no permutations run)")
        return []
    examples = ", ".join(word for word, _ in vocab.top_unseen[:5])
    return [
        Finding(
            f"{key}_unseen",
            vocab.unseen_p_value,
            f"{_where(prefix)}{vocab.unseen_token_share:.1%} of current tokens are unseen in the "
            f"reference ({vocab.unseen_token_share_excess:+.1%} over a same-sized reference sample)"
            + (f"; most frequent new words: {examples}" if examples else ""),
        ),
        Finding(
            f"{key}_js",
            vocab.js_p_value,
            f"{_where(prefix)}token distribution moved: Jensen-Shannon distance "
            f"{vocab.js_distance:.3f}, {vocab.js_distance_excess:+.3f} over a same-sized "
            "reference sample",
        ),
    ]


def embedding_findings(emb: EmbeddingDrift, figures: dict[str, float], prefix: str = "") -> list[Finding]:
    key = f"{prefix}embedding"
    figures[f"{key}_auc"] = emb.auc
    figures[f"{key}_auc_null_q95"] = emb.null_auc_quantile
    figures[f"{key}_permutation_p_value"] = emb.p_value
    figures[f"{key}_mean_cosine_distance"] = emb.mean_cosine_distance
    figures[f"{key}_n_reference"] = float(emb.n_reference)
    figures[f"{key}_n_current"] = float(emb.n_current)
    return [
        Finding(
            f"{key}_classifier",
            emb.tail_p_value,
            f"{_where(prefix)}a classifier tells current from reference embeddings with ROC AUC "
            f"{emb.auc:.3f} (shuffled labels reach {emb.null_auc_quantile:.3f} 5 % of the time; "
            f"{emb.n_reference} vs {emb.n_current} vectors, {emb.n_permutations} permutations)",
        )
    ]


def segment_findings(seg: SegmentDrift, figures: dict[str, float], prefix: str = "") -> list[Finding]:
    key = f"{prefix}segment"
    figures[f"{key}_current_share"] = seg.current_share
    figures[f"{key}_reference_share"] = seg.reference_share
    figures[f"{key}_excess_share"] = seg.excess_share
    figures[f"{key}_moved_share"] = seg.moved_share
    words = ", ".join(word for word, _ in seg.top_words[:6])
    return [
        Finding(
            f"{key}_clusters",
            seg.p_value,
            f"{_where(prefix)}a segment grew: {seg.current_share:.1%} of the window ({seg.n_current} "
            f"records) sits in a part of the embedding space that holds {seg.reference_share:.1%} "
            f"of the reference ({seg.moved_share:.1%} of the window moved between "
            f"{seg.n_clusters} clusters)" + (f"; its words: {words}" if words else ""),
        )
    ]


def segment_summary(seg: SegmentDrift) -> dict[str, Any]:
    """The segment as the report shows it (no member indices: they belong to the plot)."""
    return {
        "current_share": seg.current_share,
        "reference_share": seg.reference_share,
        "excess_share": seg.excess_share,
        "moved_share": seg.moved_share,
        "n_current": seg.n_current,
        "p_value": seg.p_value,
        "n_clusters": seg.n_clusters,
        "examples": list(seg.examples),
        "top_words": [[word, count] for word, count in seg.top_words],
    }


def _where(prefix: str) -> str:
    return f"over the accumulated window ({prefix.rstrip('_')}): " if prefix else ""


def _mean_shift_reason(emb: EmbeddingDrift, limits: DriftThresholds) -> list[str]:
    """The optional effect-size rule a user can add on top of the tests."""
    limit = limits.embedding_mean_cosine_distance
    if limit is None or emb.mean_cosine_distance <= limit:
        return []
    return [
        f"the mean embedding moved: cosine distance {emb.mean_cosine_distance:.3f} "
        f"(threshold {limit:.3f})"
    ]


def _click_through_findings(
    ctr: ClickThroughDrift,
    limits: DriftThresholds,
    notes: list[str],
    figures: dict[str, float],
) -> list[Finding]:
    figures["ctr_reference"] = ctr.ctr_reference
    figures["ctr_current"] = ctr.ctr_current
    figures["ctr_relative_drop"] = ctr.relative_drop
    figures["ctr_z"] = ctr.z
    figures["ctr_reference_impressions"] = float(ctr.reference_impressions)
    figures["ctr_current_impressions"] = float(ctr.current_impressions)
    fewest = min(ctr.reference_impressions, ctr.current_impressions)
    if fewest < limits.min_impressions:
        notes.append(
            f"click-through not judged: {fewest} impressions on one side, "
            f"fewer than {limits.min_impressions}"
        )
        return []
    if ctr.relative_drop <= limits.ctr_relative_drop:
        figures["ctr_one_sided_p"] = ctr.p_value  # reported; too small a drop to test
        return []
    return [
        Finding(
            "ctr",
            ctr.p_value,
            f"click-through fell from {ctr.ctr_reference:.2%} to {ctr.ctr_current:.2%} "
            f"({ctr.relative_drop:.0%} drop, more than {limits.ctr_relative_drop:.0%})",
        )
    ]


# --- plot ---------------------------------------------------------------------------------

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

    from lockstep.model.evaluation import _save_png

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
    return _save_png(fig, Path(path))


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
    ref = _subsample(_as_vectors(reference, "reference_vectors"), PLOT_SAMPLES, rng)
    cur_all = _as_vectors(current, "current_vectors")
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
