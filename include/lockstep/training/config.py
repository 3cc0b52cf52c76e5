"""What defines a training run (``TrainConfig``), and the knobs the retrain DAG's form shows.

Kept free of heavy imports: the retrain DAG builds its Params from these fields when its
file is parsed (``lockstep.ops.dag_support``), so the model families are looked up
(``lockstep.model.families``, which loads scikit-learn) only when a config is built.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lockstep.core.config.knobs import knob
from lockstep.core.errors import LockstepError

if TYPE_CHECKING:
    from lockstep.model.contract import Embedder

# The built-in families (lockstep.model.families.families(), which imports scikit-learn and
# so cannot run at parse time; tests/dags/test_family_switch.py checks the two agree).
FAMILIES = ("tfidf_svd", "word_vectors")
# The sections of the retrain DAG's form, in the order it shows them.
MODEL, EVALUATION, RECOMMENDER, DATA = "Model", "Evaluation", "Recommender", "Data"


class TrainingError(LockstepError):
    """Training cannot go on: no records, no labels to evaluate with, a bad parameter."""


@dataclass(frozen=True)
class TrainConfig:
    """What defines a training run; the retrain DAG's Params set the model's fields.

    ``family`` picks the built-in model family (``families.families()``); ``dim``, the
    vocabulary size ``max_features`` and ``seed`` apply to every family, ``min_df``,
    ``max_df`` and ``ngram_max`` to ``tfidf_svd``, ``window``, ``min_count``, ``epochs``
    and ``sif_a`` to ``word_vectors``. A field made with ``knob`` is a Param of the
    retrain DAG too (its title, section, description and schema are the form's).
    """

    family: str = knob(
        "tfidf_svd", "Model family", MODEL,
        "The kind of model to train: tfidf_svd (TF-IDF + TruncatedSVD) or word_vectors (Word2Vec trained on "
        "the corpus, SIF pooling). A switch rolls out like any new version.",
        type="string", enum=list(FAMILIES),
    )
    dim: int = knob(256, "Embedding dimension", MODEL, "Embedding dimension (SVD components, or word-vector size).",
                    type="integer", minimum=8, maximum=2048)
    max_features: int | None = knob(50_000, "Vocabulary size", MODEL, "Vocabulary size (the most frequent words are kept).",
                                    type="integer", minimum=100)
    min_df: int = knob(2, "Least document frequency", MODEL,
                       "tfidf_svd: minimum number of documents a term must appear in.", type="integer", minimum=1)
    max_df: float = knob(0.5, "Largest document share", MODEL, "tfidf_svd: drop terms in more than this share of documents.",
                         type="number", exclusiveMinimum=0, maximum=1)
    ngram_max: int = 1
    holdout_percent: int = knob(  # share of labelled records held out as evaluation queries
        10, "Held-out queries (%)", EVALUATION,
        "Percent of labelled records held out as evaluation queries (stable by id).", type="integer", minimum=1, maximum=50,
    )
    max_eval_queries: int = knob(1500, "Most evaluation queries", EVALUATION, "At most this many evaluation queries.",
                                 type="integer", minimum=10)
    k: int = 10
    margin: float = knob(  # nDCG@10 gain the challenger must show over the champion
        0.005, "Required nDCG@10 gain", EVALUATION,
        "nDCG@10 gain the challenger must show over the champion (and its CI lower bound must be > 0).",
        type="number", minimum=0,
    )
    metric: str = "ndcg@10"
    label_key: str = "category"
    n_boot: int = 1000
    seed: int = 0
    # The vocabulary and the SVD are learned on at most this many training records (a
    # seeded sample; None: all). At a million records the full fit peaked near 9 GB.
    fit_sample: int | None = knob(
        200_000, "Records to fit on", MODEL,
        "Records the vocabulary and the SVD are fitted on (a seeded sample; bounds training memory at millions "
        "of records); empty: all.",
        type=["null", "integer"], minimum=2,
    )
    # word_vectors: Word2Vec's context window, least word count, passes, and SIF's a
    window: int = knob(10, "Context window", MODEL, "word_vectors: words on each side that Word2Vec learns a word from.",
                       type="integer", minimum=1, maximum=50)
    min_count: int = knob(2, "Least word count", MODEL,
                          "word_vectors: words seen fewer times in the training texts get no vector.", type="integer", minimum=1)
    epochs: int = knob(10, "Training passes", MODEL, "word_vectors: passes of Word2Vec over the training texts.",
                       type="integer", minimum=1, maximum=100)
    sif_a: float = knob(
        1e-3, "SIF weight a", MODEL,
        "word_vectors: a word weighs a / (a + its share of the training tokens); smaller a mutes frequent words more.",
        type="number", exclusiveMinimum=0,
    )

    def __post_init__(self) -> None:
        from lockstep.model.families import families

        if self.family not in families():
            raise TrainingError(
                f"unknown model family {self.family!r}; choose one of: {', '.join(sorted(families()))}"
            )
        if self.fit_sample is not None and (
            isinstance(self.fit_sample, bool) or not isinstance(self.fit_sample, numbers.Integral) or self.fit_sample < 2
        ):
            raise TrainingError(f"fit_sample must be at least 2 records (a whole number, or None for all), got {self.fit_sample!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise TrainingError(f"unknown training parameters: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def embedder(self) -> Embedder:
        """The family's unfitted estimator, built from this config's fields."""
        from lockstep.model.families import family_class

        cls = family_class(self.family)
        if self.family == "word_vectors":
            return cls(
                dim=self.dim, window=self.window, min_count=self.min_count, epochs=self.epochs,
                max_vocab=self.max_features, sif_a=self.sif_a, seed=self.seed,
            )
        return cls(
            dim=self.dim,
            max_features=self.max_features,
            min_df=self.min_df,
            max_df=self.max_df,
            ngram_range=(1, self.ngram_max),
            random_state=self.seed,
        )


@dataclass(frozen=True)
class RetrainOptions:
    """What a retrain run is told besides the model's fields."""

    skip_validation: bool = knob(False, "Skip data validation", DATA, "Skip the Great Expectations suite (not recommended).",
                                 type="boolean")
