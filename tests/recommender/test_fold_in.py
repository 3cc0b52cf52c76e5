"""Fold-in: the exact ALS row step, for users (new or changed) and for items."""

from __future__ import annotations

import numpy as np
import pytest
from implicit.cpu.als import AlternatingLeastSquares

from lockstep.recommender.factorization import interaction_matrix
from lockstep.recommender.fold_in import FoldIn, UnknownIdError, confidence
from tests.recommender import ml100k

# A fitted user's stored vector came from implicit's float32 Cholesky solve; fold-in solves
# the same normal equations in float64 and rounds to float32. The two differ only by
# float32 rounding of the accumulated k x k system: 1e-5 relative to the vector's size
# is 20x float32 epsilon times the accumulation depth, with room to spare (we see ~1e-7).
RTOL = 1e-5


def _history(user_id: str):
    data = ml100k.interactions()
    mine = data[data["user_id"] == user_id]
    return mine["item_id"].tolist(), mine["value"].to_numpy()


@pytest.mark.parametrize("user_id", ["1", "196", "405", "943"])
def test_folding_in_a_users_own_interactions_gives_back_its_fitted_vector(user_id):
    model = ml100k.fitted("full")
    items, values = _history(user_id)
    folded = model.user_fold_in().vector(items, values)
    fitted = model.user_vectors([user_id])[0]
    assert folded.dtype == np.float32 and folded.shape == fitted.shape
    np.testing.assert_allclose(folded, fitted, rtol=0, atol=RTOL * np.abs(fitted).max())


def test_every_user_refolds_to_its_vector():
    model = ml100k.fitted("small")
    fold_in = model.user_fold_in()
    data = ml100k.interactions()
    worst = 0.0
    for user_id, rows in data.groupby("user_id"):
        folded = fold_in.vector(rows["item_id"].tolist(), rows["value"].to_numpy())
        fitted = model.user_vectors([user_id])[0]
        worst = max(worst, float(np.abs(folded - fitted).max() / np.abs(fitted).max()))
    assert worst < RTOL


def test_item_fold_in_is_implicits_own_item_step():
    """Items symmetric: an item's vector from its users equals implicit's exact item step
    given the same (final) user factors."""
    model = ml100k.fitted("small")
    _, _, matrix = interaction_matrix(ml100k.interactions(), model.alpha)
    oracle = AlternatingLeastSquares(factors=model.factors, regularization=model.regularization, use_cg=False, num_threads=1)
    oracle.user_factors, oracle.item_factors = model.user_factors_, model.item_factors_
    item_users = matrix.T.tocsr()
    data = ml100k.interactions()
    fold_in = model.item_fold_in()
    for item_id in ["1", "50", "1682"]:
        row = model.item_ids_.index(item_id)
        expected = oracle.recalculate_item(row, item_users[row])
        mine = data[data["item_id"] == item_id]
        folded = fold_in.vector(mine["user_id"].tolist(), mine["value"].to_numpy())
        np.testing.assert_allclose(folded, expected, rtol=0, atol=RTOL * np.abs(expected).max())


def test_a_new_user_with_someone_elses_history_gets_their_vector_and_a_change_moves_it():
    model = ml100k.fitted("full")
    items, values = _history("196")
    fold_in = model.user_fold_in()
    twin = fold_in.vector(items, values)
    np.testing.assert_allclose(twin, model.user_vectors(["196"])[0], atol=RTOL * np.abs(twin).max())
    changed = fold_in.vector([*items, "50"], np.append(values, 5.0))
    assert not np.allclose(changed, twin, atol=1e-3)
    # Repeated events of one item add up: two half-weight rows are one full row.
    split = fold_in.vector([*items, items[0]], np.append(values, 0.0))
    assert np.array_equal(split, twin)
    halves = fold_in.vector([items[0], items[0], *items[1:]], np.concatenate([[values[0] / 2, values[0] / 2], values[1:]]))
    np.testing.assert_allclose(halves, twin, atol=1e-6)


def test_unknown_item_ids_raise_naming_them():
    fold_in = ml100k.fitted("small").user_fold_in()
    with pytest.raises(UnknownIdError, match=r"unknown item ids: 'nope', 'x-1'; the model knows 1682 items") as info:
        fold_in.vector(["1", "x-1", "nope", "x-1"], [5, 4, 3, 2])
    assert info.value.ids == ["nope", "x-1"]


def test_bad_values_and_empty_histories():
    fold_in = ml100k.fitted("small").user_fold_in()
    with pytest.raises(ValueError, match="finite and >= 0, found inf"):
        fold_in.vector(["1"], [float("inf")])
    with pytest.raises(ValueError, match="one value per id: 2 ids, 1 values"):
        fold_in.vector(["1", "2"], [1.0])
    assert not fold_in.vector([]).any()  # nothing pulls the vector anywhere


def test_fold_in_solves_the_documented_normal_equations():
    """Against a direct numpy solve of (Y^T C_u Y + lambda I) x = Y^T C_u p_u on the full Y."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 8)).astype(np.float32)
    fold_in = FoldIn(y, [f"i{i}" for i in range(50)], regularization=0.5, alpha=2.0)
    rows, values = [3, 7, 11], np.array([1.0, 4.0, 2.5])
    c = np.ones(50)
    c[rows] = confidence(values, 2.0)
    p = np.zeros(50)
    p[rows] = 1.0
    y64 = y.astype(np.float64)
    expected = np.linalg.solve(y64.T @ (c[:, None] * y64) + 0.5 * np.eye(8), y64.T @ (c * p))
    np.testing.assert_allclose(fold_in.vector([f"i{r}" for r in rows], values), expected, rtol=1e-5)
