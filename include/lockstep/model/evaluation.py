"""Offline evaluation: is a challenger embedding model better than the champion?

Both models answer the same queries over the same labelled documents; a document is
relevant to a query when it carries the query's label (for 20 Newsgroups: the same
category). Per-query precision@k and nDCG@k are kept, not just their means, because
the decision is a *paired* one: the two models are judged on the same queries, so
the per-query differences cancel the spread between easy and hard queries and a
small real improvement shows up with far fewer queries than two independent
intervals would need.

The decision rule (``compare``) is deliberately conservative, so a retrain that only
moves the figures by noise never replaces a working champion:

    better  <=>  lower bound of the paired-bootstrap confidence interval of
                 mean(challenger - champion) > 0   AND   mean difference >= margin

With no champion yet, any challenger is better (there is nothing to protect).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from lockstep.core.errors import LockstepError

DEFAULT_K = 10
SEARCH_BATCH = 256  # queries per matrix product at most
# Scores held at once: the batch shrinks as the collection grows (at 900k documents, 17
# queries a batch), so the scores and argpartition's int64 positions stay near 200 MB.
SCORE_BUDGET_ELEMENTS = 16_000_000
BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000  # resampled values held in memory at once

METRICS = ("precision", "ndcg")


class EvaluationError(LockstepError, ValueError):
    """The evaluation inputs cannot give a meaningful figure (shapes, empty sets, k)."""


# --- metrics on ranked relevance ----------------------------------------------------------


def precision_at_k(retrieved_labels: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Share of the first ``k`` results that are relevant, one value per query.

    ``retrieved_labels`` is an (n_queries, >=k) array of relevance flags in rank order.
    The denominator is always ``k``, so a ranking that cannot fill k relevant slots
    (a category with fewer than k documents) scores below 1, as in trec_eval.
    """
    rel = _ranked_matrix(retrieved_labels, k, "retrieved_labels")
    return (rel[:, :k] > 0).sum(axis=1) / float(k)


def ndcg_at_k(
    relevance: np.ndarray,
    n_relevant_per_query: np.ndarray | Sequence[int] | int,
    k: int = DEFAULT_K,
    *,
    ideal_gains: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised discounted cumulative gain at ``k``, one value per query.

    Gains are linear (a relevance of 1 gains 1) with the usual 1/log2(rank + 1)
    discount. The ideal ranking for binary relevance puts min(k, n_relevant) relevant
    documents first: it uses the number of relevant documents in the whole collection,
    not only among the retrieved ones, so missing a relevant document is penalised.
    Graded relevance (values above 1) needs ``ideal_gains``, the best possible gains
    per query (any order, any length), because a count cannot describe them.
    A query with no relevant document at all scores 0.
    """
    rel = _ranked_matrix(relevance, k, "relevance")[:, :k]
    n_queries = rel.shape[0]
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = rel @ discounts

    if ideal_gains is not None:
        ideal = np.asarray(ideal_gains, dtype=np.float64)
        if ideal.ndim != 2 or ideal.shape[0] != n_queries:
            raise EvaluationError(
                f"ideal_gains must be (n_queries={n_queries}, m), got shape {ideal.shape}"
            )
        best = -np.sort(-ideal, axis=1)[:, :k]
        idcg = best @ discounts[: best.shape[1]]
    else:
        if rel.max(initial=0.0) > 1.0:
            raise EvaluationError(
                "graded relevance above 1 needs ideal_gains (the best gains per query); "
                "pass them or use binary relevance"
            )
        n_rel = np.broadcast_to(np.asarray(n_relevant_per_query, dtype=np.int64), (n_queries,))
        if (n_rel < 0).any():
            raise EvaluationError("n_relevant_per_query must be >= 0")
        found = (rel > 0).sum(axis=1)
        if (found > n_rel).any():
            q = int(np.argmax(found > n_rel))
            raise EvaluationError(
                f"query {q} has {found[q]} relevant results in its top {k} but "
                f"n_relevant_per_query says {n_rel[q]}: the counts must cover the whole collection"
            )
        cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
        idcg = cumulative[np.minimum(n_rel, k)]

    out = np.zeros(n_queries, dtype=np.float64)
    np.divide(dcg, idcg, out=out, where=idcg > 0)
    return out


def _ranked_matrix(values: np.ndarray, k: int, name: str) -> np.ndarray:
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise EvaluationError(f"{name} must be a 2-D (n_queries, k) array, got shape {arr.shape}")
    if arr.shape[1] < k:
        raise EvaluationError(f"{name} has {arr.shape[1]} ranks per query; k={k} needs at least k")
    arr = arr.astype(np.float64)
    if (arr < 0).any() or not np.isfinite(arr).all():
        raise EvaluationError(f"{name} must hold finite, non-negative relevance values")
    return arr


# --- retrieval evaluation -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Per-query figures of one model on one query set (same order as the queries)."""

    k: int
    precision: np.ndarray  # precision@k per query
    ndcg: np.ndarray  # nDCG@k per query
    query_labels: np.ndarray
    n_relevant: np.ndarray  # relevant documents in the collection, per query

    @property
    def n_queries(self) -> int:
        return int(self.precision.shape[0])

    @property
    def mean_precision(self) -> float:
        return float(self.precision.mean())

    @property
    def mean_ndcg(self) -> float:
        return float(self.ndcg.mean())

    def values(self, metric: str) -> np.ndarray:
        """The per-query array of ``metric`` ("ndcg@10", "precision_at_10", ...)."""
        name, k = parse_metric(metric)
        if k != self.k:
            raise EvaluationError(f"metric {metric!r} asks for k={k}, this result has k={self.k}")
        return self.ndcg if name == "ndcg" else self.precision

    def per_label_precision(self) -> dict[Any, float]:
        """Mean precision@k per query label: shows which categories a model serves badly."""
        labels = np.unique(self.query_labels)
        return {
            plain(label): float(self.precision[self.query_labels == label].mean())
            for label in labels
        }


def evaluate_retrieval(
    query_vectors: np.ndarray,
    query_labels: np.ndarray | Sequence[Any],
    doc_vectors: np.ndarray,
    doc_labels: np.ndarray | Sequence[Any],
    k: int = DEFAULT_K,
    exclude_self_ids: np.ndarray | Sequence[Any] | None = None,
    *,
    doc_ids: np.ndarray | Sequence[Any] | None = None,
    batch_size: int = SEARCH_BATCH,
) -> EvalResult:
    """Exact inner-product top-k search of every query; relevance is "same label".

    The search is exact (a matrix product per batch of queries), so the figures measure
    the embedding model alone, not an approximate index. When the queries are documents
    of the collection themselves, ``exclude_self_ids`` names each query's own document
    so it is neither returned nor counted as relevant: row positions in ``doc_vectors``
    (-1 for none), or values of ``doc_ids`` when that is given (None for none).
    """
    queries = _as_matrix(query_vectors, "query_vectors")
    docs = _as_matrix(doc_vectors, "doc_vectors")
    if queries.shape[1] != docs.shape[1]:
        raise EvaluationError(
            f"query_vectors have dimension {queries.shape[1]} but doc_vectors {docs.shape[1]}: "
            "embed both with the same model"
        )
    q_labels = _as_labels(query_labels, queries.shape[0], "query_labels")
    d_labels = _as_labels(doc_labels, docs.shape[0], "doc_labels")
    self_rows = _self_rows(exclude_self_ids, queries.shape[0], docs.shape[0], doc_ids)
    available = docs.shape[0] - (1 if (self_rows >= 0).any() else 0)
    if k < 1 or k > available:
        raise EvaluationError(
            f"k={k} but only {available} documents can be returned per query; lower k"
        )
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")

    top = _exact_top_k(queries, docs, k, self_rows, batch_size)
    relevant = d_labels[top] == q_labels[:, None]
    n_relevant = _count_relevant(q_labels, d_labels, self_rows)
    return EvalResult(
        k=k,
        precision=precision_at_k(relevant, k),
        ndcg=ndcg_at_k(relevant, n_relevant, k),
        query_labels=q_labels,
        n_relevant=n_relevant,
    )


def _exact_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, self_rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """Row positions of the k best documents per query, best first."""
    n = queries.shape[0]
    top = np.empty((n, k), dtype=np.int64)
    batch_size = max(1, min(batch_size, SCORE_BUDGET_ELEMENTS // max(docs.shape[0], 1)))
    docs_t = docs.T  # a view: BLAS reads the transpose in place, no second copy of the docs
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        scores = queries[start:stop] @ docs_t
        rows = np.arange(stop - start)
        own = self_rows[start:stop]
        scores[rows[own >= 0], own[own >= 0]] = -np.inf
        if k < scores.shape[1]:
            part = np.argpartition(scores, -k, axis=1)[:, -k:]
        else:
            part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        part_scores = np.take_along_axis(scores, part, axis=1)
        # Sort by score, then by position, so ties rank the same way on every run.
        order = np.lexsort((part, -part_scores), axis=1)
        top[start:stop] = np.take_along_axis(part, order, axis=1)
    return top


def _count_relevant(
    q_labels: np.ndarray, d_labels: np.ndarray, self_rows: np.ndarray
) -> np.ndarray:
    labels, counts = np.unique(d_labels, return_counts=True)
    pos = np.searchsorted(labels, q_labels)
    pos_clipped = np.minimum(pos, len(labels) - 1)
    found = (pos < len(labels)) & (labels[pos_clipped] == q_labels)
    n_rel = np.where(found, counts[pos_clipped], 0).astype(np.int64)
    has_self = self_rows >= 0
    self_relevant = np.zeros_like(has_self)
    self_relevant[has_self] = d_labels[self_rows[has_self]] == q_labels[has_self]
    return n_rel - self_relevant.astype(np.int64)


def _self_rows(exclude_self_ids: Any, n_queries: int, n_docs: int, doc_ids: Any) -> np.ndarray:
    if exclude_self_ids is None:
        return np.full(n_queries, -1, dtype=np.int64)
    if len(exclude_self_ids) != n_queries:
        raise EvaluationError(
            f"exclude_self_ids has {len(exclude_self_ids)} entries for {n_queries} queries"
        )
    if doc_ids is not None:
        ids = list(doc_ids)
        if len(ids) != n_docs:
            raise EvaluationError(f"doc_ids has {len(ids)} entries for {n_docs} documents")
        position = {doc_id: i for i, doc_id in enumerate(ids)}
        return np.array(
            [-1 if own is None else position.get(plain(own), -1) for own in exclude_self_ids],
            dtype=np.int64,
        )
    rows = np.asarray(exclude_self_ids)
    if rows.dtype.kind not in "iu":
        raise EvaluationError(
            "exclude_self_ids must be row positions in doc_vectors (integers, -1 for none), "
            "or pass doc_ids to give them as document ids"
        )
    rows = rows.astype(np.int64)
    if (rows >= n_docs).any() or (rows < -1).any():
        raise EvaluationError(f"exclude_self_ids must lie in -1..{n_docs - 1}")
    return rows


def _as_matrix(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise EvaluationError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    for start in range(0, arr.shape[0], 65_536):  # a bool mask per block, not per matrix
        if not np.isfinite(arr[start : start + 65_536]).all():
            raise EvaluationError(f"{name} holds NaN or infinite values; re-embed those rows")
    return arr


def _as_labels(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise EvaluationError(f"{name} must be 1-D with {n} entries, got shape {arr.shape}")
    return arr


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so dict keys and JSON behave."""
    return value.item() if isinstance(value, np.generic) else value


# --- confidence intervals -----------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap interval.

    The percentile bootstrap makes no normality assumption, which matters for
    precision@k: it takes only k + 1 values and piles up at 0 and 1.
    """
    arr = _as_sample(values, "values")
    low, high, _ = _bootstrap_mean(arr, n_boot, alpha, seed)
    return float(arr.mean()), low, high


def paired_bootstrap_diff(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """(mean_diff, low, high, p_better) for ``a - b`` measured on the same queries.

    Queries are resampled as pairs (resampling the per-query differences is the same
    thing), so the interval reflects only how consistently ``a`` beats ``b``.
    ``p_better`` is the share of bootstrap resamples whose mean difference is positive
    (ties count half): a quick "how sure" figure, not a p-value.
    """
    x = _as_sample(a, "a")
    y = _as_sample(b, "b")
    if x.shape != y.shape:
        raise EvaluationError(
            f"paired comparison needs the same queries: a has {x.size} values, b {y.size}"
        )
    diff = x - y
    low, high, means = _bootstrap_mean(diff, n_boot, alpha, seed)
    p_better = float(((means > 0).sum() + 0.5 * (means == 0).sum()) / means.size)
    return float(diff.mean()), low, high, p_better


def _bootstrap_mean(values: np.ndarray, n_boot: int, alpha: float, seed: int) -> tuple[float, float, np.ndarray]:
    """(low, high, resampled means): scipy's percentile bootstrap of the mean, seeded.

    ``batch`` bounds the resampled values held at once (BOOTSTRAP_CHUNK_ELEMENTS), so a
    large evaluation set does not allocate n_boot x n indices in one go.
    """
    if n_boot < 1:
        raise EvaluationError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise EvaluationError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if values.size == 1:  # scipy needs two values; every resample of one value is that value
        return float(values[0]), float(values[0]), np.full(n_boot, values[0])
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        batch=max(1, BOOTSTRAP_CHUNK_ELEMENTS // values.size),
        vectorized=True,
        confidence_level=1.0 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high), result.bootstrap_distribution


def _as_sample(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise EvaluationError(f"{name} is empty: evaluate at least one query")
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{name} holds NaN or infinite values")
    return arr


# --- challenger vs champion ---------------------------------------------------------------


@dataclass(frozen=True)
class OfflineVerdict:
    """The outcome of ``compare``: a decision, the sentence behind it, and its figures.

    ``figures`` uses flat names that are valid MLflow metric keys, e.g.
    ``ndcg_at_10``, ``ndcg_at_10_ci_low``, ``champion_ndcg_at_10``,
    ``delta_ndcg_at_10``, ``delta_ndcg_at_10_ci_low``, ``p_better_ndcg_at_10``.
    """

    better: bool
    reason: str
    figures: dict[str, float]
    metric: str = "ndcg_at_10"  # the key the decision was made on


def parse_metric(metric: str) -> tuple[str, int]:
    """'ndcg@10' / 'ndcg_at_10' / 'precision@5' -> (name, k)."""
    match = re.fullmatch(r"\s*(ndcg|precision)\s*(?:@|_at_)\s*(\d+)\s*", metric.lower())
    if not match:
        raise EvaluationError(
            f"unknown metric {metric!r}; use 'ndcg@K' or 'precision@K' (e.g. 'ndcg@10')"
        )
    return match.group(1), int(match.group(2))


def metric_key(name: str, k: int) -> str:
    """The MLflow-friendly key of a metric: ('ndcg', 10) -> 'ndcg_at_10'."""
    return f"{name}_at_{k}"


def compare(
    challenger: EvalResult,
    champion: EvalResult | None,
    margin: float,
    metric: str = "ndcg@10",
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> OfflineVerdict:
    """Decide whether ``challenger`` should replace ``champion``.

    Rule: better when the lower bound of the (1 - alpha) paired-bootstrap interval of
    the mean per-query difference in ``metric`` is above 0 *and* the mean difference is
    at least ``margin``. Both must hold: the first says the gain is real, the second
    that it is worth a migration. With no champion, better is True ("no champion yet").
    Both results must come from the same queries in the same order.
    """
    name, k = parse_metric(metric)
    label = display_name(name, k)
    challenger.values(metric)  # checks k
    figures = _result_figures(challenger, "", n_boot, alpha, seed)
    figures["n_queries"] = float(challenger.n_queries)
    figures["margin"] = float(margin)
    ci_pct = round(100 * (1 - alpha))

    if champion is None:
        figures["better"] = 1.0
        mean = figures[metric_key(name, k)]
        low = figures[metric_key(name, k) + "_ci_low"]
        high = figures[metric_key(name, k) + "_ci_high"]
        reason = (
            f"no champion yet: the challenger's {label} is {mean:.4f} "
            f"({ci_pct}% CI {low:.4f} to {high:.4f}) over {challenger.n_queries} queries"
        )
        return OfflineVerdict(better=True, reason=reason, figures=figures, metric=metric_key(name, k))

    _check_same_queries(challenger, champion)
    figures.update(_result_figures(champion, "champion_", n_boot, alpha, seed))
    for other in METRICS:
        key = metric_key(other, challenger.k)
        diff, low, high, p_better = paired_bootstrap_diff(
            challenger.values(key), champion.values(key), n_boot=n_boot, alpha=alpha, seed=seed
        )
        figures[f"delta_{key}"] = diff
        figures[f"delta_{key}_ci_low"] = low
        figures[f"delta_{key}_ci_high"] = high
        figures[f"p_better_{key}"] = p_better

    key = metric_key(name, k)
    diff = figures[f"delta_{key}"]
    low = figures[f"delta_{key}_ci_low"]
    high = figures[f"delta_{key}_ci_high"]
    significant = low > 0.0
    large_enough = diff >= margin
    better = significant and large_enough
    figures["better"] = 1.0 if better else 0.0

    head = (
        f"challenger {label} {figures[key]:.4f} vs champion {figures['champion_' + key]:.4f}: "
        f"difference {diff:+.4f} ({ci_pct}% CI {low:+.4f} to {high:+.4f}) "
        f"over {challenger.n_queries} queries"
    )
    if better:
        reason = (
            f"better: {head}; the interval is above 0 and the gain meets the margin {margin:.4f}"
        )
    elif not significant and not large_enough:
        reason = (
            f"not better: {head}; the interval reaches down to {low:+.4f} (not above 0) "
            f"and the gain is below the margin {margin:.4f}"
        )
    elif not significant:
        reason = f"not better: {head}; the interval reaches down to {low:+.4f}, not above 0"
    else:
        reason = f"not better: {head}; the gain is below the margin {margin:.4f}"
    return OfflineVerdict(better=better, reason=reason, figures=figures, metric=key)


def _result_figures(
    result: EvalResult, prefix: str, n_boot: int, alpha: float, seed: int
) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name in METRICS:
        key = metric_key(name, result.k)
        mean, low, high = bootstrap_ci(result.values(key), n_boot=n_boot, alpha=alpha, seed=seed)
        figures[prefix + key] = mean
        figures[prefix + key + "_ci_low"] = low
        figures[prefix + key + "_ci_high"] = high
    return figures


def _check_same_queries(challenger: EvalResult, champion: EvalResult) -> None:
    if challenger.k != champion.k:
        raise EvaluationError(
            f"challenger was evaluated at k={challenger.k}, champion at k={champion.k}; "
            "evaluate both with the same k"
        )
    if challenger.n_queries != champion.n_queries or not np.array_equal(
        challenger.query_labels, champion.query_labels
    ):
        raise EvaluationError(
            "challenger and champion were evaluated on different queries "
            f"({challenger.n_queries} vs {champion.n_queries}); a paired comparison "
            "needs the same queries in the same order"
        )


def display_name(name: str, k: int) -> str:
    """How a metric is written for a person: ('ndcg', 10) -> 'nDCG@10'."""
    return f"nDCG@{k}" if name == "ndcg" else f"precision@{k}"
