"""Segment drift: the part of the embedding space the window over-fills.

k-means clusters of the pooled embeddings never see the side labels, so a chi-square
test on the cluster-by-side table is valid; the cluster where the window is most
over-represented is reported as *the part that moved*, with examples and its words.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lockstep.drift.statistics import DriftError, as_vectors, single_threaded_blas
from lockstep.drift.vocabulary import Analyzer, tokenize


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

    ref = as_vectors(reference_vectors, "reference_vectors")
    cur = as_vectors(current_vectors, "current_vectors")
    if len(current_texts) != len(cur):
        raise DriftError(
            f"segment drift needs one text per current vector, got {len(current_texts)} texts "
            f"for {len(cur)} vectors"
        )
    k = max(2, min(n_clusters, (len(ref) + len(cur)) // 20))
    if min(len(ref), len(cur)) < k:
        raise DriftError(f"segment drift needs at least {k} vectors per side")
    both = np.vstack([ref, cur]).astype(np.float64)
    with single_threaded_blas():
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
