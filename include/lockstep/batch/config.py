"""What a ``lockstep_batch`` run is told (``BatchOptions``): each field is a Param of the DAG.

Kept free of heavy imports: the DAG's form is built from these fields when its file is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.core.config.knobs import knob

RUN = "Run"  # the batch DAG's form has one section


@dataclass(frozen=True)
class BatchOptions:
    """One batch run: top-k per key, keys per shard, full or incremental, which versions."""

    k: int = knob(10, "Results per key", RUN, "Top-k kept per key. Changing it recomputes every version in full.",
                  type="integer", minimum=1, maximum=100)
    shard_size: int = knob(50_000, "Keys per shard", RUN, "Keys per mapped compute task.",
                           type="integer", minimum=100, maximum=1_000_000)
    full: bool = knob(False, "Full recompute", RUN,
                      "Recompute every key of every version (each takes no batch traffic until its run finishes).",
                      type="boolean")
    model_versions: str | None = knob(None, "Model versions", RUN,
                                      "Comma-separated serving versions to compute. Empty: every serving version.",
                                      type=["null", "string"])
