"""Drift detection: no alarm between samples of one distribution, an alarm for a shift,
on synthetic text, Gaussian embeddings and click counts with known answers."""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import pytest

from lockstep.drift.classifier import embedding_drift
from lockstep.drift.click_through import ClickThroughDrift, click_through_drift
from lockstep.drift.plots import plot_drift
from lockstep.drift.segments import segment_drift
from lockstep.drift.statistics import DriftError
from lockstep.drift.verdict import DriftThresholds, assess
from lockstep.drift.vocabulary import tokenize, vocabulary_drift

# --- synthetic text -----------------------------------------------------------------------


def words(text: str) -> list[str]:
    return text.split()


COMMON = words(
    "the of and to a in is that it for on with as was this be are by at from have not "
    "but or an they which one you were all we there can been has more if will would"
)
TOPICS = {
    "space": words(
        "orbit launch nasa shuttle rocket moon mars satellite payload astronaut telescope "
        "lunar solar probe mission spacecraft booster apollo gravity comet"
    ),
    "hockey": words(
        "goal puck season playoff team nhl coach penalty score league game ice player "
        "rangers bruins overtime defenseman goalie trade roster"
    ),
    "cooking": words(
        "recipe oven flour butter garlic onion simmer sauce pepper bake roast dough salt "
        "skillet broth vinegar whisk pasta herbs saute"
    ),
}


@functools.cache
def synthetic_texts(topic: str, n: int, seed: int) -> tuple[str, ...]:
    """Posts of 30-80 words: common words, Zipf-weighted topic words, and a long tail of
    one-off names (as real text has), so small windows look noisy as they do in life."""
    rng = np.random.default_rng(seed)
    topic_words = np.array(TOPICS[topic])
    common = np.array(COMMON)
    weights = 1.0 / np.arange(1, len(topic_words) + 1)
    texts = []
    for _ in range(n):
        length = int(rng.integers(30, 80))
        kind = rng.uniform(size=length)
        tokens = np.where(
            kind < 0.55,
            common[rng.integers(len(common), size=length)],
            topic_words[rng.choice(len(topic_words), size=length, p=weights / weights.sum())],
        ).astype(object)
        names = kind >= 0.95
        tokens[names] = [f"name{i}" for i in rng.integers(1_000_000, size=int(names.sum()))]
        texts.append(" ".join(tokens).capitalize() + ".")
    return tuple(texts)


def test_tokenize_lowercases_and_keeps_inner_apostrophes():
    assert tokenize("Don't PANIC: 42 towels, 'quoted' rock-n-roll!") == [
        "don't",
        "panic",
        "42",
        "towels",
        "quoted",
        "rock",
        "n",
        "roll",
    ]
    assert tokenize("") == []


def test_vocabulary_same_topic_is_not_drift():
    reference = synthetic_texts("space", 1500, seed=1)
    current = synthetic_texts("space", 200, seed=2)
    vocab = vocabulary_drift(reference, current)
    # The window's one-off names are unseen, as in a reference sample of the same size.
    assert 0.02 < vocab.unseen_token_share < 0.08
    assert abs(vocab.unseen_token_share_excess) < 0.01
    assert abs(vocab.js_distance_excess) < 0.03
    report = assess(vocab, None, None)
    assert report.drifted is False
    assert report.reasons == []


def test_vocabulary_topic_change_is_drift_and_names_the_new_words():
    reference = synthetic_texts("space", 1500, seed=1)
    current = synthetic_texts("hockey", 200, seed=3)
    vocab = vocabulary_drift(reference, current)
    assert vocab.unseen_token_share_excess > 0.3
    assert vocab.js_distance_excess > 0.3
    new_words = [word for word, _ in vocab.top_unseen]
    assert new_words[0] == "goal"  # the most frequent hockey word
    assert set(new_words) <= set(TOPICS["hockey"])
    report = assess(vocab, None, None)
    assert report.drifted is True
    assert len(report.reasons) == 2
    assert "goal" in report.reasons[0]


def test_vocabulary_baseline_absorbs_the_noise_of_a_small_window():
    reference = synthetic_texts("cooking", 2000, seed=4)
    tiny = synthetic_texts("cooking", 10, seed=5)
    vocab = vocabulary_drift(reference, tiny)
    # Raw JS distance of 10 posts against their own distribution is large ...
    assert vocab.js_distance > 0.2
    # ... and so is that of 10 reference posts; the permutation test knows it.
    assert vocab.baseline_js_distance > 0.2
    assert abs(vocab.js_distance_excess) < 0.05
    assert vocab.js_p_value > 0.05
    assert assess(vocab, None, None).drifted is False


def test_vocabulary_accepts_an_analyzer_and_refuses_empty_windows():
    def bigrams(text: str) -> list[str]:
        words = tokenize(text)
        return [f"{a}_{b}" for a, b in zip(words, words[1:], strict=False)]

    reference = ["the moon orbit", "a rocket launch"] * 50
    vocab = vocabulary_drift(reference, ["the moon orbit"], analyzer=bigrams)
    assert vocab.n_current_tokens == 2
    assert vocab.unseen_token_share == 0.0
    with pytest.raises(DriftError, match="current texts contain no tokens"):
        vocabulary_drift(reference, ["", "!!!"])
    with pytest.raises(DriftError, match="reference texts contain no tokens"):
        vocabulary_drift([], ["moon"])


def test_js_distance_known_values():
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4), JS = (KL(p||m) + KL(q||m)) / 2 in bits.
    expected = math.sqrt(
        0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25) + math.log2(1 / 0.75))
    )
    assert vocabulary_drift(["alpha beta"], ["alpha alpha"]).js_distance == pytest.approx(expected)
    assert vocabulary_drift(["alpha"], ["beta"]).js_distance == pytest.approx(1.0)
    assert vocabulary_drift(["alpha beta"], ["beta alpha"]).js_distance == pytest.approx(0.0)


def test_vocabulary_without_a_splittable_reference_uses_raw_figures():
    vocab = vocabulary_drift(["one single reference text"], ["one other text"])
    assert math.isnan(vocab.baseline_js_distance)
    assert vocab.js_distance_excess == vocab.js_distance
    assert vocab.unseen_token_share == pytest.approx(1 / 3)
    report = assess(vocab, None, None)
    assert report.drifted is False  # one text per side: no permutation can tell
    assert "vocabulary_js_distance_baseline" not in report.figures
    assert all(math.isfinite(v) for v in report.figures.values())


# --- embeddings ---------------------------------------------------------------------------


def gaussian(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


def test_embeddings_from_the_same_distribution_are_not_drift():
    emb = embedding_drift(gaussian(2000, 256, 1), gaussian(2000, 256, 2), n_permutations=20)
    assert abs(emb.auc - 0.5) < 0.03
    assert emb.p_value > 0.05 and emb.tail_p_value > 0.05
    assert not emb.drifted
    assert assess(None, emb, None).drifted is False


def test_shifted_embeddings_are_drift_and_the_test_is_fast():
    ref, cur = gaussian(2000, 256, 1), gaussian(2000, 256, 2, shift=0.05)
    started = time.perf_counter()
    emb = embedding_drift(ref, cur, n_permutations=20)
    elapsed = time.perf_counter() - started
    assert emb.auc > 0.65
    assert emb.drifted
    assert emb.p_value == pytest.approx(1 / 21)  # no permutation came close
    # Budget: "a couple of seconds"; typically 0.2-0.5 s. A logistic regression per
    # permutation would take 20+ s here.
    assert elapsed < 5.0
    report = assess(None, emb, None)
    assert report.drifted
    assert "ROC AUC" in report.reasons[0]


@pytest.mark.slow  # importing scikit-learn alone takes 2-8 s on a busy machine
def test_auc_agrees_with_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    ref, cur = gaussian(800, 32, 3), gaussian(800, 32, 4, shift=0.12)
    emb = embedding_drift(ref, cur, n_permutations=5)
    x = np.vstack([ref, cur])
    y = np.r_[np.zeros(800), np.ones(800)]
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    logistic = cross_val_score(LogisticRegression(), x, y, cv=folds, scoring="roc_auc").mean()
    assert 0.6 < logistic < 0.9
    assert emb.auc == pytest.approx(logistic, abs=0.03)


def test_small_samples_raise_the_threshold_above_the_floor():
    # With 30 vectors per side, chance AUCs spread widely; the permutation test knows.
    emb = embedding_drift(gaussian(30, 16, 1), gaussian(30, 16, 2), n_permutations=100)
    assert emb.null_auc_quantile > 0.6
    assert emb.threshold == emb.null_auc_quantile
    assert not emb.drifted


def test_no_false_alarms_over_repeated_null_draws():
    alarms = sum(
        embedding_drift(
            gaussian(300, 32, 2 * i), gaussian(300, 32, 2 * i + 1), n_permutations=20, seed=i
        ).drifted
        for i in range(10)
    )
    assert alarms == 0


def test_embedding_drift_subsamples_and_measures_the_mean_shift():
    direction = np.zeros(8)
    direction[0] = 1.0
    ref = gaussian(3000, 8, 1) * 0.1 + direction
    rotated = np.zeros(8)
    rotated[1] = 1.0
    cur = gaussian(500, 8, 2) * 0.1 + rotated
    emb = embedding_drift(ref, cur, n_permutations=5, max_samples=1000)
    assert (emb.n_reference, emb.n_current) == (1000, 500)
    assert emb.mean_cosine_distance == pytest.approx(1.0, abs=0.02)  # orthogonal means
    assert emb.auc > 0.99
    strict = DriftThresholds(embedding_mean_cosine_distance=0.5)
    report = assess(None, emb, None, strict)
    assert report.drifted
    assert any("mean embedding moved" in reason for reason in report.reasons)


def test_indistinguishable_vectors_give_an_auc_of_exactly_one_half():
    # Every score ties: average ranks make each AUC exactly 0.5, never a lucky 1.0.
    same = np.ones((40, 4))
    emb = embedding_drift(same, same.copy(), n_permutations=10)
    assert emb.auc == 0.5
    assert emb.p_value == 1.0
    assert emb.mean_cosine_distance == pytest.approx(0.0)
    assert not emb.drifted


def test_embedding_drift_names_bad_input():
    with pytest.raises(DriftError, match="same model version"):
        embedding_drift(gaussian(50, 8, 1), gaussian(50, 9, 2))
    with pytest.raises(DriftError, match="at least 10 vectors"):
        embedding_drift(gaussian(50, 8, 1), gaussian(4, 8, 2))
    bad = gaussian(50, 8, 2)
    bad[3, 3] = np.nan
    with pytest.raises(DriftError, match="NaN"):
        embedding_drift(gaussian(50, 8, 1), bad)


# --- click-through ------------------------------------------------------------------------


def test_click_through_z_test_matches_the_formula():
    ctr = click_through_drift(100, 1000, 70, 1000)
    pooled = 170 / 2000
    z = (0.10 - 0.07) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert ctr.z == pytest.approx(z)
    assert ctr.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert ctr.relative_drop == pytest.approx(0.3)
    assert (ctr.ctr_reference, ctr.ctr_current) == pytest.approx((0.10, 0.07))


def test_click_through_drop_must_be_large_and_clear():
    big_clear = click_through_drift(1000, 10_000, 600, 10_000)
    report = assess(None, None, big_clear)
    assert report.drifted
    assert "fell from 10.00% to 6.00%" in report.reasons[0]

    small_but_clear = click_through_drift(10_000, 100_000, 9_000, 100_000)
    assert small_but_clear.p_value < 1e-10
    assert assess(None, None, small_but_clear).drifted is False  # only a 10 % drop

    big_but_unclear = click_through_drift(10, 150, 5, 150)
    assert big_but_unclear.relative_drop == pytest.approx(0.5)
    assert assess(None, None, big_but_unclear).drifted is False

    rise = click_through_drift(50, 1000, 90, 1000)
    assert rise.relative_drop < 0 and rise.p_value > 0.99


def test_click_through_with_too_little_traffic_is_a_note_not_a_verdict():
    sparse = click_through_drift(30, 100, 0, 20)
    report = assess(None, None, sparse)
    assert report.drifted is False
    assert any("20 impressions" in note for note in report.notes)
    empty = click_through_drift(0, 0, 0, 0)
    assert (empty.ctr_reference, empty.relative_drop, empty.p_value) == (0.0, 0.0, 1.0)
    with pytest.raises(DriftError, match="more clicks than impressions"):
        click_through_drift(11, 10, 0, 10)
    with pytest.raises(DriftError, match=">= 0"):
        click_through_drift(-1, 10, 0, 10)


# --- report and plot ----------------------------------------------------------------------


def test_report_combines_signals_and_serialises(tmp_path):
    vocab = vocabulary_drift(synthetic_texts("space", 500, 1), synthetic_texts("cooking", 100, 2))
    emb = embedding_drift(gaussian(400, 16, 1), gaussian(400, 16, 2), n_permutations=20)
    ctr = ClickThroughDrift(0.1, 0.1, 0.0, 0.0, 0.5, 5000, 5000)
    report = assess(vocab, emb, ctr)
    assert report.drifted  # vocabulary alone is enough
    assert all("token" in reason for reason in report.reasons)
    assert report.notes == []
    figures = report.figures
    for key in ("vocabulary_js_distance_excess", "embedding_auc", "ctr_relative_drop", "drifted"):
        assert key in figures
    assert figures["drifted"] == 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["drifted"] is True
    assert data["thresholds"]["ctr_relative_drop"] == 0.2
    assert data["reasons"] == report.reasons

    assert data["thresholds"]["false_alarm_rate"] == 0.01
    assert figures["tests"] == 3.0  # two vocabulary tests and the classifier (no CTR drop)
    untested = vocabulary_drift(
        synthetic_texts("space", 500, 1), synthetic_texts("cooking", 100, 2), n_permutations=0
    )
    assert math.isnan(untested.js_p_value)
    quiet = assess(untested, emb, ctr)
    assert quiet.drifted is False
    assert any("not tested" in note for note in quiet.notes)
    nothing = assess(None, None, None)
    assert nothing.drifted is False and len(nothing.notes) == 3


def test_plot_drift_writes_a_png(tmp_path):
    ref, cur = gaussian(1500, 16, 1), gaussian(1200, 16, 2, shift=0.3)
    emb = embedding_drift(ref, cur, n_permutations=10)
    vocab = vocabulary_drift(synthetic_texts("space", 300, 1), synthetic_texts("space", 50, 2))
    ctr = click_through_drift(100, 1000, 60, 1000)
    report = assess(vocab, emb, ctr)
    path = plot_drift(report, ref, cur, tmp_path / "out" / "drift.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    bars_only = plot_drift(assess(None, None, None), None, None, tmp_path / "bars.png")
    assert bars_only.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bars.png", "drift.png", "out"]


# --- calibrated tests (issue 15) ----------------------------------------------------------


def test_holm_rejects_step_down_and_the_day_budget_divides_the_level():
    from lockstep.drift.verdict import holm

    # alpha 0.05 over 4: 0.01 <= 0.0125, 0.015 <= 0.0167, 0.03 > 0.025 stops there.
    assert holm([0.03, 0.01, 0.2, 0.015], 0.05) == [False, True, False, True]
    assert holm([0.5, 0.5], 0.05) == [False, False]
    assert holm([], 0.05) == []
    assert DriftThresholds(false_alarm_rate=0.01, checks_per_day=24).per_check_rate == pytest.approx(0.01 / 24)
    with pytest.raises(DriftError, match="false_alarm_rate"):
        DriftThresholds(false_alarm_rate=0.0)
    with pytest.raises(DriftError, match="checks_per_day"):
        DriftThresholds(checks_per_day=0)


def test_js_distance_is_scipys():
    from scipy.spatial.distance import jensenshannon

    from lockstep.drift.vocabulary import _js_distance

    p, q = np.array([3.0, 1.0, 0.0, 6.0]), np.array([1.0, 1.0, 2.0, 0.0])
    assert _js_distance(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)))
    assert _js_distance(p, p) == 0.0  # never NaN for identical inputs


def test_the_classifier_tail_p_value_keeps_its_false_alarm_rate():
    # 300 draws of the null: the share with p <= 5 % must be near 5 % (binomial 99.9 %
    # bounds 2-9 %), and with p <= 1 % at most 3.5 %. Seeded, so the figure is fixed.
    p_values = np.array(
        [
            embedding_drift(gaussian(80, 6, 3 * i), gaussian(60, 6, 3 * i + 1), n_permutations=100, seed=i).tail_p_value
            for i in range(300)
        ]
    )
    assert 0.02 <= np.mean(p_values <= 0.05) <= 0.09
    assert np.mean(p_values <= 0.01) <= 0.035


def test_a_mixture_the_auc_floor_missed_is_found_by_the_permutation_test():
    # 20 % of the window comes from a shifted distribution: the AUC stays far below the old
    # 0.70 floor, but the permutation test sees it, and the segment test finds the part.
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(1000, 8))
    cur = rng.normal(size=(600, 8))
    cur[:120, 0] += 4.0  # the new segment
    emb = embedding_drift(ref, cur, n_permutations=100)
    assert emb.auc < 0.7
    assert emb.tail_p_value < 1e-4
    texts = ["quokka wallaby " + "word " * 5 if i < 120 else "word " * 7 for i in range(600)]
    seg = segment_drift(ref, cur, texts, ["word " * 7] * 50, n_clusters=8)
    assert seg.p_value < 1e-6
    assert seg.current_share >= 0.15 and seg.reference_share < 0.02
    assert sum(i < 120 for i in seg.current_members) / len(seg.current_members) > 0.9
    assert {word for word, _ in seg.top_words} >= {"quokka", "wallaby"}
    report = assess(None, emb, None, segment=seg)
    assert report.drifted
    assert any("a segment grew" in r and "quokka" in r for r in report.reasons)
    assert report.segment["n_current"] == len(seg.current_members)
    assert json.loads(json.dumps(report.to_dict()))["segment"]["top_words"][0][0] in {"quokka", "wallaby"}


def test_segment_drift_of_one_distribution_is_not_significant_and_checks_its_input():
    ref, cur = gaussian(800, 8, 1), gaussian(400, 8, 2)
    seg = segment_drift(ref, cur, ["text"] * 400)
    assert seg.p_value > 0.01
    assert abs(seg.excess_share) < 0.1
    with pytest.raises(DriftError, match="one text per current vector"):
        segment_drift(ref, cur, ["text"] * 3)


def test_the_plot_highlights_the_segment(tmp_path):
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=(500, 8)), rng.normal(size=(300, 8))
    cur[:60, 1] += 5.0
    seg = segment_drift(ref, cur, ["a b c"] * 300)
    report = assess(None, embedding_drift(ref, cur, n_permutations=20), None, segment=seg)
    path = plot_drift(report, ref, cur, tmp_path / "seg.png", segment_members=seg.current_members)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
