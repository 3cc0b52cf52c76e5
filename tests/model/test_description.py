"""The reviewer's description of a version, from plain values (no MLflow here: the
registered round trip is in tests/training/test_steps.py)."""

from __future__ import annotations

from lockstep.model.description import VersionStory, version_description

FIGURES = {
    "ndcg_at_10": 0.71, "ndcg_at_10_ci_low": 0.69, "ndcg_at_10_ci_high": 0.73,
    "precision_at_10": 0.62, "precision_at_10_ci_low": 0.6, "precision_at_10_ci_high": 0.64,
    "champion_ndcg_at_10": 0.65, "champion_ndcg_at_10_ci_low": 0.63, "champion_ndcg_at_10_ci_high": 0.67,
    "delta_ndcg_at_10": 0.06, "delta_ndcg_at_10_ci_low": 0.04, "delta_ndcg_at_10_ci_high": 0.08,
    "p_better_ndcg_at_10": 0.999, "n_queries": 1500.0, "margin": 0.005, "better": 1.0,
}


def story(**overrides) -> VersionStory:
    values = {
        "version": "4",
        "family": "TF-IDF + TruncatedSVD + L2 norm (TextEmbedder)",
        "params": {"dim": "256", "min_df": "2"},
        "champion_params": {"dim": "128", "min_df": "2"},
        "training": {"seq": 1200, "records": 1_000_000, "train": 990_000, "fit_texts": 200_000,
                     "eval_queries": 1500, "eval_docs": 900_000, "digest": "sha256:ab12"},
        "evaluation": {"better": True, "reason": "better: +0.06", "figures": FIGURES, "champion_version": "3"},
        **overrides,
    }
    return VersionStory(**values)


def test_a_challenger_against_the_champion_reads_top_to_bottom():
    text = version_description(story())

    sections = [line for line in text.splitlines() if line.startswith("#")]
    assert sections == [
        "## Version 4: accepted as challenger", "### What changed", "### Evaluation against champion v3",
        "### Why it was trained", "### Review",
    ]
    assert "1,000,000 records (digest `sha256:ab12`)" in text
    assert "990,000 training records (fitted on a sample of 200,000), 1,500 held-out queries over 900,000 documents" in text
    assert "| `dim` | 256 | 128 |" in text and "Unchanged: `min_df=2`." in text
    assert "| nDCG@10 | 0.7100 (0.6900 to 0.7300) | 0.6500 (0.6300 to 0.6700) | +0.0600 (+0.0400 to +0.0800) | 0.999 |" in text
    # a figure that was not computed is left blank rather than invented
    assert "| Precision@10 | 0.6200 (0.6000 to 0.6400) |  |  |  |" in text
    assert "at least 0.0050 with its interval above 0" in text


def test_a_forced_drift_check_without_a_logged_run_and_same_parameters():
    drift = {"model_version": "3", "forced": True, "reasons": [], "mlflow_run_id": None}
    text = version_description(story(drift=drift, champion_params={"dim": "256", "min_df": "2"}))

    assert "Started by a forced drift check against champion v3:\n- no reasons recorded" in text
    assert "Same parameters as champion v3: `dim=256`, `min_df=2`." in text


def test_a_plot_without_a_link_is_still_named_and_a_pipe_in_a_value_is_escaped():
    text = version_description(story(plots=["plots/evaluation.png"], params={"dim": "a|b"}, champion_params={}))

    assert "### Links\n- Plot `plots/evaluation.png` (run artifact)" in text
    assert "| `dim` | a\\|b |" in text
