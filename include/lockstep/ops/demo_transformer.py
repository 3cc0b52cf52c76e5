"""The family switch as a demo: a transformer challenges the TF-IDF champion, rolled out like any version.

``lockstep demo --family onnx_text`` tells the story a team meets when it moves from a cheap
model to a transformer, on the embedded stack and through Airflow's REST API like the main
demo (``lockstep.ops.demo``):

1. load 10 newsgroups (``--per-category`` posts each), start the stack, train the first
   model (TF-IDF + SVD) with ``lockstep_retrain``; it is re-embedded and becomes champion;
2. traffic: simulated users who differ search and click;
3. the shipped all-MiniLM-L6-v2 (int8 ONNX, from the pinned packages of
   requirements-models.txt) is imported as an ``onnx_text`` version: its contract proved on
   the probe set, offline-evaluated against the champion, alias ``challenger``;
4. ``lockstep_reembed`` builds its index (the early verdict on the first slice compares it
   with the champion before the rest is embedded), then ``lockstep_rollout`` canaries it
   under the user-level gates with live traffic until it serves 100 % and is champion.

The transformer answers a search in ~10 ms of CPU where TF-IDF needs ~0.2 ms: a deliberate
cost of the switch. The latency gate compares medians as a share of the champion's, so the
demo's rollout tolerates the transformer's median up to ``TRANSFORMER_LATENCY_TOLERANCE``
times the champion's (a production rollout of a family switch would set its own budget);
the click and error gates judge as in the main demo.

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
    explain_rollout,
    rollout_steps_of,
)

# The candidate's median search time may be this many times the champion's (see the docstring).
TRANSFORMER_LATENCY_TOLERANCE = 200.0
TRANSFORMER_ROLLOUT = {**DEMO_ROLLOUT, "latency_tolerance": TRANSFORMER_LATENCY_TOLERANCE}


class TransformerDemoRun(DemoRun):
    """The main demo's first lifecycle, then the shipped transformer as the challenger."""

    def __init__(self, options: DemoOptions, say: Callable[[str], None] = print) -> None:
        if options.rollout == DEMO_ROLLOUT:  # the demo's own rollout: the switch's latency budget added
            options = replace(options, rollout=dict(TRANSFORMER_ROLLOUT))
        super().__init__(options, say)

    def import_transformer(self) -> str:
        """The shipped MiniLM registered as an onnx_text version, alias challenger."""
        from lockstep.model.minilm import minilm_folder
        from lockstep.model.onnx_text import import_onnx
        from lockstep.model.registry import Registry

        registry = Registry()
        with tempfile.TemporaryDirectory(prefix="lockstep-demo-minilm-") as tmp:
            folder = minilm_folder(Path(tmp) / "minilm")
            info = import_onnx(registry, folder, set_challenger=True)
        self.facts["challenger"] = info.version
        return f"all-MiniLM-L6-v2 (int8 ONNX) registered as onnx_text v{info.version} (dim {info.dim}), alias challenger"

    def reembed_transformer(self) -> str:
        """Its index built by lockstep_reembed, then canaried by lockstep_rollout to champion."""
        from lockstep.model.registry import Registry

        candidate = self.facts["challenger"]
        reembed = self._run("lockstep_reembed", {"model_version": str(candidate)})
        try:
            rollout = self._next_run("lockstep_rollout")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{explain_rollout(candidate)}") from exc
        champion = Registry().version_for_alias("champion")
        if champion is None or champion.version != candidate:
            raise RuntimeError(
                f"rollout {rollout} ended but the champion is {champion and champion.version}\n{explain_rollout(candidate)}"
            )
        looks = [s for s in rollout_steps_of(candidate) if s["phase"] == "canary"]
        return (f"onnx_text v{candidate} rolled out by canary to 100 % and is champion after {len(looks)} judged looks "
                f"(runs {reembed}, {rollout})")

    def transformer_steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("import the transformer", self.import_transformer),
            ("re-embed + canary rollout", self.reembed_transformer),
        ]

    def run_demo(self) -> LifecycleReport:
        return self._story(self.first_steps(), self.transformer_steps())
