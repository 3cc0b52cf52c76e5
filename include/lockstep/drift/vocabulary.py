"""Vocabulary drift: unseen words and the Jensen-Shannon distance, tested by permutation.

Both figures depend heavily on the window size (20 documents of the very same
distribution show a JS distance above 0.5), so each is tested by permutation: documents
of the reference sample and the window are reshuffled between the two sides (sizes kept)
and the figure recomputed, all permutations at once as one sparse product (see
``lockstep.drift.statistics`` for the tail p-value). The *excess* over a same-sized
reference sample is still reported, because a person reads it more easily than a p-value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from lockstep.drift.statistics import DriftError, permutation_tail_p

Analyzer = Callable[[str], Iterable[str]]

TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens: letters and digits, with inner apostrophes kept (don't)."""
    return TOKEN_PATTERN.findall(text.lower())


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
