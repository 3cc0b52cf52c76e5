"""What a ``lockstep_reembed`` run is told (``ReembedOptions``): each field is a Param of the DAG.

The defaults of the early verdict are ``lockstep.index.first_slice``'s (``lockstep index
build`` takes the same). Kept free of heavy imports: the DAG's form is built from these
fields when its file is parsed (``lockstep.ops.dag_support``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.core.config.knobs import knob
from lockstep.index.first_slice import (
    ACTIONS,
    DEFAULT_ACTION,
    DEFAULT_MARGIN,
    DEFAULT_SHARE,
    MAX_SHARE,
)

# The sections of the reembed DAG's form, in the order it shows them.
VERSION, INDEX, VALIDATION, EARLY_VERDICT = "Version", "Index", "Validation", "Early verdict"
INDEX_CHOICES = ("auto", "flat", "ivf", "hnsw", "ivfpq")  # auto: lockstep.index.vector_index.choose_spec


@dataclass(frozen=True)
class ReembedOptions:
    """One re-embed run's choices: the version, the index, its validation and the early verdict."""

    model_version: str | None = knob(
        None, "Model version", VERSION,
        "Registered version to index. Empty: the version from the challenger asset, else alias 'challenger'.",
        type=["null", "string"],
    )
    allow_rejected: bool = knob(
        False, "Build a rejected version", VERSION,
        "Build the index of a version its offline evaluation rejected (refused otherwise). A version never "
        "evaluated is built with a warning.", type="boolean",
    )
    promote_if_first: bool = knob(
        True, "Make the first version champion", VERSION,
        "With no champion yet, make this version champion at 100 % once its index is ready.", type="boolean",
    )
    index_type: str = knob(
        "auto", "Index type", INDEX,
        "auto: exact flat below LOCKSTEP_ANN_THRESHOLD records, HNSW above. flat is exact; ivf and hnsw are "
        "approximate (validated by recall@10).",
        enum=list(INDEX_CHOICES),
    )
    shard_size: int | None = knob(
        None, "Records per shard", INDEX,
        "Records per shard (one mapped task each). Empty: chosen from the record count to give about target_shards shards.",
        type=["null", "integer"], minimum=100, maximum=1_000_000,
    )
    target_shards: int | None = knob(
        None, "Shards to aim for", INDEX,
        "Shards to aim for when shard_size is empty. Empty: 4 per embedding process (LOCKSTEP_REEMBED_WORKERS, "
        "default the core count; each task costs Airflow ~3 s).",
        type=["null", "integer"], minimum=1, maximum=1000,
    )
    min_recall: float = knob(0.95, "Least recall@10", VALIDATION,
                             "Minimum recall@10 against exact search for approximate index types.",
                             type="number", minimum=0, maximum=1)
    sample_size: int = knob(200, "Vectors re-embedded to compare", VALIDATION,
                            "Stored vectors compared with fresh embeddings during validation.", type="integer", minimum=1)
    early_verdict_share: float = knob(
        DEFAULT_SHARE, "First slice", EARLY_VERDICT,
        "Share of the records embedded first, as a uniform sample (a seeded hash of the id), and judged before "
        "the rest is embedded.",
        type="number", exclusiveMinimum=0, maximum=MAX_SHARE,
    )
    early_verdict_action: str = knob(
        DEFAULT_ACTION, "When the candidate is worse", EARLY_VERDICT,
        "warn: continue the load and warn; stop: stop it (slot retired, version rejected, its files deleted). "
        "Worse: the 95 % CI's upper bound of the nDCG@10 difference lies below -margin.",
        enum=list(ACTIONS),
    )
    early_verdict_margin: float = knob(
        DEFAULT_MARGIN, "Margin (nDCG@10)", EARLY_VERDICT,
        "How much worse than the champion, in nDCG@10 on the loaded records, the candidate must be beyond doubt "
        "before the action applies.",
        type="number", minimum=0, maximum=1,
    )
