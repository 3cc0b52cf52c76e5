"""The HNSW search beam (``efSearch``) chosen per index at validation, from a recall target.

Why: a fixed beam is wrong in both directions. On an easy corpus it searches wider than
the recall target needs, and every query pays for it (at 1M vectors the search is most
of a request's CPU: efSearch 128 costs ~2x efSearch 48); on a hard one it falls short of
the target and the build fails validation although a wider beam would have passed.
FAISS's own auto-tuning (``ParameterSpace``) does the same walk over a parameter; the
walk here is simpler because recall grows with the beam: the smallest beam of a ladder
whose recall@k reaches the target on two query sets is the choice.

The two query sets are the validation's sample of stored records (the vectors the index
holds, embedded again) and short fragments of the same records' texts (3 to 8 words,
like a search box's queries): fragments land between clusters and need the wider beam,
so a beam tuned on stored vectors alone would be too narrow for real traffic. Truth is
exact search over the index's own vectors (``recall.exact_kth_scores``); ties count
as found.

The choice is kept in the index version's manifest (``spec.ef_search``) and applied
when the index is loaded (``storage.load_index``): it is a search-time setting, not part
of the built graph.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lockstep.index.recall import exact_kth_scores, recall_given_kth
from lockstep.index.vector_index import VectorIndex

EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
FRAGMENT_WORDS = (3, 8)  # a fragment query is 3 to 8 consecutive words of a record's text
FRAGMENTS_PER_TEXT = 3  # 200 sampled records give 600 fragment queries: less noise than 200
TUNING_MARGIN = 0.005  # the beam is chosen for target + margin: a sample's recall is noisy


@dataclass(frozen=True)
class BeamChoice:
    """The chosen beam, its recall on both query sets, and the walk that led there."""

    ef_search: int
    recall_records: float
    recall_queries: float
    reached: bool  # False: even the widest beam of the ladder missed the target
    walk: list[tuple[int, float, float]] = field(default_factory=list)  # (ef, records, queries)

    @property
    def recall(self) -> float:
        """The lower of the two recalls: what validation holds against its floor."""
        return min(self.recall_records, self.recall_queries)


def fragment_queries(texts: Sequence[str], seed: int = 0, per_text: int = 1) -> list[str]:
    """``per_text`` seeded windows of 3-8 words of each text (texts shorter than that are used whole).

    At 1M records, 200 fragment queries measured recall 0.951 at a beam where another 200
    measured 0.964: one fragment per text is too noisy to choose a beam on, so validation
    asks for ``FRAGMENTS_PER_TEXT``.
    """
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        for _ in range(per_text):
            size = min(len(words), rng.randint(*FRAGMENT_WORDS))
            start = rng.randrange(len(words) - size + 1) if words else 0
            out.append(" ".join(words[start : start + size]))
    return [q for q in out if q.strip()]


def choose_ef_search(
    index: VectorIndex,
    record_vectors: np.ndarray,
    query_vectors: np.ndarray,
    *,
    target: float,
    k: int = 10,
    ladder: Sequence[int] = EF_LADDER,
) -> BeamChoice:
    """The smallest beam of ``ladder`` whose recall@k reaches ``target`` on both sets.

    The index's beam is left as it was; the caller applies the choice
    (``VectorIndex.set_ef_search``). When no beam of the ladder reaches the target, the
    widest is returned with ``reached`` False, and validation reports the recall it got.
    """
    sets = [np.asarray(v, dtype=np.float32).reshape(-1, index.dim) for v in (record_vectors, query_vectors)]
    kth = [exact_kth_scores(index, v, k) for v in sets]
    walk: list[tuple[int, float, float]] = []
    for ef in ladder:
        records, queries = (recall_given_kth(index, v, t, k, ef_search=ef) for v, t in zip(sets, kth, strict=True))
        walk.append((int(ef), records, queries))
        if min(records, queries) >= target:
            return BeamChoice(int(ef), records, queries, True, walk)
    ef, records, queries = walk[-1]
    return BeamChoice(ef, records, queries, False, walk)


def choose_for_records(index: VectorIndex, record_vectors: np.ndarray, texts: Sequence[str], embedder, *,
                       min_recall: float, seed: int = 0) -> BeamChoice:
    """The beam for ``min_recall`` (plus ``TUNING_MARGIN``) on sampled records and fragments of their texts."""
    fragments = fragment_queries(texts, seed, per_text=FRAGMENTS_PER_TEXT)
    queries = embedder.transform(fragments) if fragments else np.zeros((0, index.dim), dtype=np.float32)
    return choose_ef_search(index, record_vectors, queries, target=min(1.0, min_recall + TUNING_MARGIN))

