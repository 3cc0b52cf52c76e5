"""Drift detection benchmark: detection rate of a new segment and false-alarm rate.

On the 20 Newsgroups demo corpus (issue 15): a champion fitted on half the newsgroups
(every other one, so old and new share vocabulary), its held-out posts as the
reference, then windows of ``--window`` records:

* **controls**: all from held-out posts of the champion's own newsgroups (the same
  distribution as the reference, never fitted on): every flag is a false alarm;
* **mixtures**: the other newsgroups mixed in at 5, 10, 20 and 50 % of the window;
* **later posts** (reported apart): the test split of the champion's own newsgroups,
  which is written later and is genuinely (mildly) different.

Each window runs the check's tests as ``lockstep.drift.steps`` does (vocabulary
permutation tests, the domain classifier's permutation test, the k-means segment
test; Holm over them) and the verdict is read at two levels: 1 % per check (the
CLI's default) and 1 % per day over 24 hourly checks (the DAG's default, 0.042 % per
check). The p-values are kept, so both verdicts come from the same runs.

Run: flock /tmp/lockstep-heavy.lock .venv/bin/python benchmarks/bench_drift.py
     [--controls 200] [--goal-mixtures 24] [--mixtures 10] [--spread 5] [--window 600]
     [--permutations 100] [--output table.md]
(the 20 % case and the controls run first, so a run cut short still answers the goal)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass

import numpy as np

SHARES = (0.05, 0.10, 0.20, 0.50)
LEVELS = {"1 % per check": 0.01, "1 % per day (24 checks)": 0.01 / 24}


@dataclass
class Pools:
    ref_texts: list[str]
    ref_vectors: np.ndarray
    vocab_texts: list[str]  # the vocabulary reference: a sample of the whole snapshot
    old_texts: list[str]
    old_vectors: np.ndarray
    new_texts: list[str]
    new_vectors: np.ndarray
    new_groups: np.ndarray  # the newsgroup of each new post
    later_texts: list[str]
    later_vectors: np.ndarray


def build_pools(dim: int, n_fit: int, n_ref: int, seed: int) -> Pools:
    """Fit the champion and embed every pool once (windows are index draws)."""
    from lockstep.store.corpus import DEMO_CATEGORIES, load_demo_corpus
    from lockstep.training.config import TrainConfig
    from lockstep.training.fit import fit_embedder

    old_groups, new_groups = list(DEMO_CATEGORIES[::2]), list(DEMO_CATEGORIES[1::2])
    rng = random.Random(seed)
    old = [r.text for r in load_demo_corpus("train", old_groups)]
    rng.shuffle(old)
    fitted, ref, rest = old[:n_fit], old[n_fit : n_fit + n_ref], old[n_fit + n_ref :]
    new_records = load_demo_corpus("train", new_groups)
    new = [r.text for r in new_records]
    groups = np.array([r.metadata["category"] for r in new_records])
    later = [r.text for r in load_demo_corpus("test", old_groups)]
    model = fit_embedder(fitted, TrainConfig(dim=dim))
    vocab = rng.sample(fitted + ref, min(2000, len(fitted) + len(ref)))
    return Pools(
        ref, model.transform(ref), vocab, rest, model.transform(rest), new,
        model.transform(new), groups, later, model.transform(later),
    )


def window(
    pools: Pools, share: float, size: int, rng: np.random.Generator, *, later: bool = False, spread: bool = False
):
    """``size`` records: ``share`` of them new, the rest old. New posts come from one
    unseen newsgroup drawn at random (a new segment), or with ``spread`` from all ten
    (ten small segments of share / 10 each)."""
    n_new = round(share * size)
    texts_pool, vectors_pool = (pools.later_texts, pools.later_vectors) if later else (pools.old_texts, pools.old_vectors)
    old_rows = rng.choice(len(texts_pool), size=size - n_new, replace=False)
    candidates = np.arange(len(pools.new_texts))
    if not spread:
        candidates = np.flatnonzero(pools.new_groups == rng.choice(np.unique(pools.new_groups)))
    new_rows = rng.choice(candidates, size=n_new, replace=False)
    texts = [texts_pool[i] for i in old_rows] + [pools.new_texts[i] for i in new_rows]
    vectors = np.vstack([vectors_pool[old_rows], pools.new_vectors[new_rows]])
    return texts, vectors


def p_values(pools: Pools, texts: list[str], vectors: np.ndarray, permutations: int, seed: int) -> dict[str, float]:
    """Every test's p-value for one window, as the check computes them."""
    from lockstep.drift.classifier import embedding_drift
    from lockstep.drift.segments import segment_drift
    from lockstep.drift.verdict import assess
    from lockstep.drift.vocabulary import vocabulary_drift

    vocab = vocabulary_drift(pools.vocab_texts, texts, seed=seed, n_permutations=permutations)
    emb = embedding_drift(pools.ref_vectors, vectors, n_permutations=permutations, seed=seed)
    seg = segment_drift(pools.ref_vectors, vectors, texts, seed=seed)  # words: not measured here
    report = assess(vocab, emb, None, segment=seg)
    found = {k.removesuffix("_p_value"): v for k, v in report.figures.items() if k.endswith("_p_value") and "permutation" not in k}
    found["auc"] = emb.auc
    found["segment_share"] = seg.current_share
    found["segment_ref_share"] = seg.reference_share
    return found


TESTS = ("vocabulary_unseen", "vocabulary_js", "embedding_classifier", "segment_clusters")


def flagged(result: dict[str, float], level: float, tests: tuple[str, ...] = TESTS) -> bool:
    from lockstep.drift.verdict import holm

    return any(holm([result[t] for t in tests], level))


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    pools = build_pools(args.dim, args.fit, args.reference, args.seed)
    print(f"pools: fitted {args.fit}, reference {len(pools.ref_texts)}, old pool {len(pools.old_texts)}, "
          f"new pool {len(pools.new_texts)}, later pool {len(pools.later_texts)} ({time.perf_counter() - started:.0f} s)", flush=True)
    rng = np.random.default_rng(args.seed)
    cases = [("control (same distribution)", 0.0, args.controls, {})]
    cases += [
        (f"{share:.0%} from one new newsgroup", share, args.goal_mixtures if share == 0.20 else args.mixtures, {})
        for share in SHARES
    ]
    cases += [
        (f"{share:.0%} spread over 10 new newsgroups", share, args.spread, {"spread": True})
        for share in SHARES
    ]
    cases += [("later posts of the same newsgroups", 0.0, args.later, {"later": True})]
    # The goal's two cases first (20 % share, controls), so a cut-short run still answers it.
    order = [1 + SHARES.index(0.20), 0] + [i for i in range(len(cases)) if i not in (0, 1 + SHARES.index(0.20))]
    results_by_case: dict[int, list[dict[str, float]]] = {}
    for case in order:
        name, share, n, kind = cases[case]
        results = results_by_case.setdefault(case, [])
        for i in range(n):
            texts, vectors = window(pools, share, args.window, rng, **kind)
            results.append(p_values(pools, texts, vectors, args.permutations, seed=i))
            if (i + 1) % 50 == 0 and i + 1 < n:
                print(summary_line(f"{name} (so far)", results), flush=True)
        print(summary_line(name, results), flush=True)
    rows = [(name, share, results_by_case[case]) for case, (name, share, _, _) in enumerate(cases)]
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({sum(len(r) for _, _, r in rows)} windows)\n")
    table = markdown(rows, args)
    print(table)
    if args.output:
        with open(args.output, "w") as out:
            out.write(table + "\n")


def summary_line(name: str, results: list[dict[str, float]]) -> str:
    rates = " | ".join(f"{label}: {rate(results, level):.1%}" for label, level in LEVELS.items())
    return f"{name:28s} n={len(results):4d}  flagged {rates}  AUC median {statistics.median(r['auc'] for r in results):.3f}"


def rate(results: list[dict[str, float]], level: float, tests: tuple[str, ...] = TESTS) -> float:
    return sum(flagged(r, level, tests) for r in results) / max(len(results), 1)


def markdown(rows, args) -> str:
    head = (
        f"| window ({args.window} records) | windows | flagged at 1 % per check | flagged at 1 % per day "
        "| classifier alone, 1 %/check | AUC (median) | segment share vs reference (median) |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, _, results in rows:
        seg = f"{statistics.median(r['segment_share'] for r in results):.1%} vs {statistics.median(r['segment_ref_share'] for r in results):.1%}"
        lines.append(
            f"| {name} | {len(results)} | {rate(results, 0.01):.1%} | {rate(results, 0.01 / 24):.1%} "
            f"| {rate(results, 0.01, ('embedding_classifier',)):.1%} "
            f"| {statistics.median(r['auc'] for r in results):.3f} | {seg} |"
        )
    per_test = ["", "False alarms per test on the controls (each at 1 %, uncorrected):"]
    controls = rows[0][2]
    for test in TESTS:
        share = sum(r[test] <= 0.01 for r in controls) / max(len(controls), 1)
        per_test.append(f"- {test}: {share:.1%}")
    return "\n".join(lines + per_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controls", type=int, default=200)
    parser.add_argument("--mixtures", type=int, default=10, help="windows per share, one new newsgroup")
    parser.add_argument("--goal-mixtures", type=int, default=24, help="windows at the goal's 20 %% share")
    parser.add_argument("--spread", type=int, default=5, help="windows per share, all new newsgroups")
    parser.add_argument("--later", type=int, default=5, help="windows of later posts")
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    parser.add_argument("--window", type=int, default=600)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--fit", type=int, default=3000, help="posts the champion is fitted on")
    parser.add_argument("--reference", type=int, default=1000, help="held-out posts as reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    run(args)


if __name__ == "__main__":
    main()
