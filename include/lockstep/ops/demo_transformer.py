"""The family switch as a demo: a transformer challenges the TF-IDF champion, rolled out like any version.

``lockstep demo --family onnx_text`` tells the story a team meets when it moves from a cheap
model to a transformer, on the embedded stack and through Airflow's REST API like the main
demo (``lockstep.ops.demo``):

1. load 10 newsgroups (``--per-category`` posts each), start the stack, train the first
   model (TF-IDF + SVD) with ``lockstep_retrain``; it is re-embedded and becomes champion;
2. traffic: simulated users who differ search and click;
3. the shipped all-MiniLM-L6-v2 (int8 ONNX, from the pinned packages of
   requirements-models.txt) is imported as an ``onnx_text`` version: its contract proved on
   the probe set, offline-evaluated against the champion (the champion's side read from its
   index), alias ``challenger``. On a small subset the evaluation may call it "not better"
   (MiniLM gains ~+0.02 nDCG@10 at 5,000 records, an interval that still touches 0:
   docs/benchmarks.md); the demo then builds it with ``allow_rejected`` and says so, and the
   canary with live users decides;
4. ``lockstep_reembed`` builds its index (the early verdict on the first slice compares it
   with the champion before the rest is embedded), then ``lockstep_rollout`` canaries it
   under the user-level gates with live traffic until it serves 100 % and is champion.

The transformer answers a search in ~10 ms of CPU where TF-IDF needs ~0.2 ms: a deliberate
cost of the switch. The latency gate compares medians as a share of the champion's, so the
demo's rollout tolerates the transformer's median up to ``TRANSFORMER_LATENCY_TOLERANCE``
times the champion's (a production rollout of a family switch would set its own budget);
the click and error gates judge as in the main demo. Likewise the shadow phase's overlap gate
(a guard against a broken candidate) expects a candidate of the champion's family; a
transformer's top 10 shares ~16 % with TF-IDF's, so the demo asks for 5 % (``TRANSFORMER_MIN_OVERLAP``).

At the default 150 posts per newsgroup the transformer embeds 1,500 posts (~1-2 minutes
here at ~20 texts/s); the whole story takes about ten minutes on 2 cores.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lockstep.ops.demo import (
    DEMO_ROLLOUT,
    DemoOptions,
    DemoRun,
    LifecycleReport,
)

# The candidate's median search time may be this many times the champion's (see the docstring).
TRANSFORMER_LATENCY_TOLERANCE = 200.0
# The shadow phase's overlap gate guards against a broken candidate (a random model's top 10
# shares ~1 % with the champion's); the default 0.2 assumes a candidate of the same family. A
# transformer finds other neighbours than TF-IDF: 16 % mean top-10 overlap in the demo, measured.
TRANSFORMER_MIN_OVERLAP = 0.05
TRANSFORMER_ROLLOUT = {**DEMO_ROLLOUT, "latency_tolerance": TRANSFORMER_LATENCY_TOLERANCE,
                       "min_overlap": TRANSFORMER_MIN_OVERLAP}


class TransformerDemoRun(DemoRun):
    """The main demo's first lifecycle, then the shipped transformer as the challenger."""

    def __init__(self, options: DemoOptions, say: Callable[[str], None] = print) -> None:
        if options.rollout == DEMO_ROLLOUT:  # the demo's own rollout: the switch's latency budget added
            options = replace(options, rollout=dict(TRANSFORMER_ROLLOUT))
        super().__init__(options, say)

    def import_transformer(self) -> str:
        """The shipped MiniLM registered as an onnx_text version, alias challenger."""
        from lockstep.index.champion_vectors import read_stored_vectors
        from lockstep.model.minilm import minilm_folder
        from lockstep.model.offline_verdict import offline_verdict_of, verdict_line
        from lockstep.model.onnx_text import import_onnx
        from lockstep.model.registry import Registry
        from lockstep.training.imports import offline_evaluator

        registry = Registry()
        with tempfile.TemporaryDirectory(prefix="lockstep-demo-minilm-") as tmp:
            folder = minilm_folder(Path(tmp) / "minilm")
            info = import_onnx(registry, folder, set_challenger=True, evaluator=offline_evaluator(stored=read_stored_vectors))
        info = registry.get_version(info.version)
        self.facts["challenger"] = info.version
        self.facts["offline_verdict"] = offline_verdict_of(info)[0]
        return f"all-MiniLM-L6-v2 (int8 ONNX) registered as onnx_text v{info.version} (dim {info.dim}); {verdict_line(info)}"

    def reembed_transformer(self) -> str:
        """Its index built by lockstep_reembed, then canaried by lockstep_rollout to champion."""
        candidate = self.facts["challenger"]
        conf: dict[str, object] = {"model_version": str(candidate)}
        if self.facts.get("offline_verdict") == "rejected":
            self.say("    the offline evaluation on this subset called it not better: built anyway (allow_rejected), the canary decides")
            conf["allow_rejected"] = True
        reembed = self._run("lockstep_reembed", conf)
        return f"onnx_text v{candidate} {self.rolled_out(candidate, reembed)}"

    def transformer_steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("import the transformer", self.import_transformer),
            ("re-embed + canary rollout", self.reembed_transformer),
        ]

    def run_demo(self) -> LifecycleReport:
        return self._story(self.first_steps(), self.transformer_steps())
