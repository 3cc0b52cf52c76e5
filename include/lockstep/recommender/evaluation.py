"""Offline evaluation of a recommender version on a time split, against the champion.

The split is **per user, by time**: each user's interactions are ordered by timestamp
(ties by item id, so the split is the same on every run) and the last
``holdout_fraction`` of them (at least one, leaving at least ``min_train``) are held
out; the rest is the training set. Every user is evaluated on "what did they do next",
which is what simulated users click in the rollout. (A global time cut would leave most
MovieLens users with nothing to evaluate, since the data is 943 users over seven months;
the per-user cut does let a user's training set contain other users' later
interactions, a known and accepted leak of this protocol.)

Metrics at k (binary relevance: a held-out item is relevant, whatever its rating):

- recall@k = hits in the top k / min(k, number held out), so a perfect list scores 1
  even for a user with more than k held-out items;
- nDCG@k = sum over hits of 1 / log2(rank + 1), divided by the same sum for a perfect list.

Items the user interacted with in training are never recommended. A model scores a user
with its stored vector when it knows the user, otherwise by folding in the user's
training interactions (items it does not know are left out), so a champion fitted on
older data is judged on the same users. The comparison with the champion is paired per
user: a seeded BCa bootstrap (``scipy.stats.bootstrap``) of the mean difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from lockstep.recommender.factorization import ALSRecommender

__all__ = [
    "TimeSplit",
    "compare",
    "evaluate",
    "metrics_at_k",
    "model_scorer",
    "popularity_scorer",
    "time_split",
]

K = 10
METRICS = ("recall", "ndcg")
# (user ids) -> (len(user ids), len(catalogue)) scores; -inf for an item the scorer cannot rank.
Scorer = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class TimeSplit:
    """Training interactions, held-out interactions, and the catalogue to rank over."""

    train: pd.DataFrame
    test: pd.DataFrame
    items: list[str]

    def seen(self) -> dict[str, np.ndarray]:
        """Per user, the catalogue positions of its training items (never recommended)."""
        return _positions_by_user(self.train, self.items)

    def relevant(self) -> dict[str, np.ndarray]:
        """Per user, the catalogue positions of its held-out items."""
        return _positions_by_user(self.test, self.items)


def time_split(interactions: pd.DataFrame, holdout_fraction: float = 0.2, min_train: int = 1) -> TimeSplit:
    """Hold out each user's last interactions by time (see the module docstring)."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    missing = [c for c in ("user_id", "item_id", "value", "timestamp") if c not in interactions.columns]
    if missing:
        raise ValueError(f"time_split needs columns user_id, item_id, value, timestamp; missing {missing}")
    frame = interactions.assign(user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str))
    frame = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    position = frame.groupby("user_id", sort=False).cumcount().to_numpy()
    count = frame.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    held = np.maximum(1, np.floor(count * holdout_fraction)).astype(np.int64)
    held = np.where(count - held >= min_train, held, 0)  # too few to split: all in training
    is_test = position >= count - held
    items = sorted(set(frame["item_id"]))
    return TimeSplit(frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True), items)


def model_scorer(model: ALSRecommender, split: TimeSplit) -> Scorer:
    """Scores of a fitted model over the split's catalogue (known vectors, else fold-in)."""
    item_rows = np.array([model.item_row_.get(i, -1) for i in split.items])
    known_items = item_rows >= 0
    item_vectors = model.item_factors_[np.where(known_items, item_rows, 0)]
    history = split.train.groupby("user_id", sort=False)
    fold_in = model.user_fold_in()

    def user_vector(user_id: str) -> np.ndarray:
        if user_id in model.user_row_:
            return model.user_factors_[model.user_row_[user_id]]
        past = history.get_group(user_id) if user_id in history.groups else split.train.iloc[:0]
        keep = past["item_id"].isin(model.item_row_).to_numpy()
        return fold_in.vector(past["item_id"].to_numpy()[keep].tolist(), past["value"].to_numpy()[keep])

    def score(user_ids: Sequence[str]) -> np.ndarray:
        users = np.stack([user_vector(u) for u in user_ids]) if user_ids else np.zeros((0, model.dim_), np.float32)
        scores = (users @ item_vectors.T).astype(np.float64)
        scores[:, ~known_items] = -np.inf
        return scores

    return score


def popularity_scorer(split: TimeSplit) -> Scorer:
    """The baseline: every user gets the items most users interacted with in training."""
    counts = split.train.groupby("item_id")["user_id"].nunique()
    popularity = counts.reindex(split.items, fill_value=0).to_numpy(dtype=np.float64)

    def score(user_ids: Sequence[str]) -> np.ndarray:
        return np.broadcast_to(popularity, (len(user_ids), len(popularity))).copy()

    return score


def metrics_at_k(scorer: Scorer, split: TimeSplit, k: int = K, batch: int = 1024) -> pd.DataFrame:
    """Per evaluated user (sorted ids): recall@k and nDCG@k, each in [0, 1]."""
    relevant, seen = split.relevant(), split.seen()
    users = sorted(relevant)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall = np.empty(len(users))
    ndcg = np.empty(len(users))
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        scores = scorer(chunk)
        for row, user in enumerate(chunk):
            top = _top_k(scores[row], seen.get(user), k)
            hits = np.isin(top, relevant[user])
            n_rel = min(k, len(relevant[user]))
            recall[start + row] = hits.sum() / n_rel
            ndcg[start + row] = (hits * discounts[: len(top)]).sum() / discounts[:n_rel].sum()
    return pd.DataFrame({"user_id": users, "recall": recall, "ndcg": ndcg})


def compare(candidate: pd.DataFrame, baseline: pd.DataFrame, seed: int = 0, n_resamples: int = 2000) -> dict[str, dict[str, float]]:
    """Paired bootstrap of the mean per-user difference (candidate - baseline), per metric.

    Returns ``{metric: {"candidate", "baseline", "delta", "ci_low", "ci_high"}}``; users
    are matched by id (both frames come from ``metrics_at_k`` on the same split).
    """
    if list(candidate["user_id"]) != list(baseline["user_id"]):
        raise ValueError("compare needs per-user metrics of the same users, from the same split")
    out = {}
    for metric in METRICS:
        a, b = candidate[metric].to_numpy(), baseline[metric].to_numpy()
        result = scipy.stats.bootstrap(
            (a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
            n_resamples=n_resamples, method="BCa", rng=np.random.default_rng(seed),
        )
        out[metric] = {
            "candidate": float(a.mean()),
            "baseline": float(b.mean()),
            "delta": float((a - b).mean()),
            "ci_low": float(result.confidence_interval.low),
            "ci_high": float(result.confidence_interval.high),
        }
    return out


def evaluate(
    candidate: ALSRecommender, split: TimeSplit, champion: ALSRecommender | None = None, seed: int = 0, k: int = K
) -> dict[str, float]:
    """The figures a version is registered with: its recall@k and nDCG@k, the popularity
    baseline's, and (with a champion) the paired deltas and their 95 % CI."""
    mine = metrics_at_k(model_scorer(candidate, split), split, k)
    figures = {f"recall_at_{k}": float(mine["recall"].mean()), f"ndcg_at_{k}": float(mine["ndcg"].mean())}
    figures["eval_users"] = float(len(mine))
    vs_popularity = compare(mine, metrics_at_k(popularity_scorer(split), split, k), seed)
    for metric, row in vs_popularity.items():
        figures[f"popularity_{metric}_at_{k}"] = row["baseline"]
    if champion is not None:
        vs_champion = compare(mine, metrics_at_k(model_scorer(champion, split), split, k), seed)
        for metric, row in vs_champion.items():
            figures[f"champion_{metric}_at_{k}"] = row["baseline"]
            figures[f"delta_{metric}_at_{k}"] = row["delta"]
            figures[f"delta_{metric}_at_{k}_ci_low"] = row["ci_low"]
            figures[f"delta_{metric}_at_{k}_ci_high"] = row["ci_high"]
    return figures


def _top_k(scores: np.ndarray, seen: np.ndarray | None, k: int) -> np.ndarray:
    """Catalogue positions of the k best-scored unseen items (ties by position), best first."""
    scores = scores.copy()
    if seen is not None:
        scores[seen] = -np.inf
    rankable = np.isfinite(scores)
    k = min(k, int(rankable.sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    # argpartition's boundary may cut a tie arbitrarily: sort by (-score, position).
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order][:k]


def _positions_by_user(frame: pd.DataFrame, items: list[str]) -> dict[str, np.ndarray]:
    position = {item: i for i, item in enumerate(items)}
    pos = frame["item_id"].map(position).to_numpy(dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for user, rows in frame.groupby("user_id", sort=False).indices.items():
        out[str(user)] = np.unique(pos[rows])
    return out
