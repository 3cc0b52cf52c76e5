"""Fold-in: the online model, one user's (or item's) vector from its interactions.

A factorization fit gives every known user and item a vector. Between fits, users keep
interacting and new items appear; fold-in places them in the same vector space without
refitting, by solving exactly the least-squares problem one ALS half-step solves for one
row, with the other side's factors held fixed (Hu, Koren, Volinsky 2008, eq. 4):

    x_u = (Y^T C_u Y + lambda I)^-1  Y^T C_u p_u
        = (Y^T Y + lambda I + sum_i (c_ui - 1) y_i y_i^T)^-1  sum_i c_ui y_i

where the sums run over the items the user interacted with, p_ui = 1 for them, and
``c_ui = confidence(v_ui)``. ``Y^T Y + lambda I`` does not depend on the user, so it is
computed once per version (``FoldIn.__init__``); a fold-in then costs a rank-n update
and one k x k Cholesky solve (k = 64: a few tens of microseconds). This is the normal
equation ``implicit``'s own exact (non-CG) solver uses, so a fold-in agrees with it.

Items are symmetric: ``FoldIn`` over the *user* factors gives an item's vector from the
users who interacted with it, which is how new items join after their first interactions.

Repeated interactions of one (user, item) pair add up (each is an event: a view, a
click, a rating), and the sum goes through ``confidence``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.linalg

from lockstep.core.errors import LockstepError

__all__ = ["FoldIn", "UnknownIdError", "confidence", "check_values"]


class UnknownIdError(LockstepError, ValueError):
    """Ids that the model (or index) does not know; the message names them."""

    def __init__(self, kind: str, ids: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.ids = sorted(set(ids))
        shown = ", ".join(repr(i) for i in self.ids[:20])
        more = f" and {len(self.ids) - 20} more" if len(self.ids) > 20 else ""
        plural = "s" if len(self.ids) != 1 else ""
        super().__init__(f"unknown {kind} id{plural}: {shown}{more}{'; ' + hint if hint else ''}")


def confidence(values: np.ndarray, alpha: float) -> np.ndarray:
    """The confidence of an observed preference: ``1 + alpha * value`` (Hu et al.'s linear map).

    A rating of 5 counts ``1 + 5 alpha`` times as much as an unobserved cell; every
    observed cell has preference 1, so even a low rating says "watched", which is what
    the offline evaluation's held-out interactions measure.
    """
    return 1.0 + alpha * np.asarray(values, dtype=np.float64)


def check_values(values: np.ndarray, what: str) -> np.ndarray:
    """Interaction values as float64, refusing NaN, infinity and negatives by name."""
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        examples = ", ".join(repr(float(v)) for v in values[bad][:5])
        raise ValueError(f"{what}: interaction values must be finite and >= 0, found {examples}")
    return values


class FoldIn:
    """Solve one row's vector given the other side's fixed factors.

    ``other_factors`` are the item factors when folding in users (and the user factors
    when folding in items); ``other_ids`` name their rows. The object is read-only after
    construction, so serving can share one per version across threads.
    """

    def __init__(
        self,
        other_factors: np.ndarray,
        other_ids: Sequence[str],
        regularization: float,
        alpha: float,
        other_kind: str = "item",
    ) -> None:
        factors = np.asarray(other_factors, dtype=np.float64)
        if factors.ndim != 2 or factors.shape[0] != len(other_ids):
            raise ValueError(
                f"other_factors must be a ({len(other_ids)}, k) matrix, one row per id; got shape {factors.shape}"
            )
        self.factors = factors
        self.ids = list(other_ids)
        self.row_of = {i: r for r, i in enumerate(self.ids)}
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.other_kind = other_kind
        self.dim = factors.shape[1]
        # Y^T Y + lambda I: the part of every row's normal equations that is the same for all.
        self.base = factors.T @ factors + self.regularization * np.eye(self.dim)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """The rows of ``ids`` in the other side's factors; unknown ids raise, all named."""
        row_of = self.row_of
        unknown = [i for i in ids if i not in row_of]
        if unknown:
            raise UnknownIdError(self.other_kind, unknown, f"the model knows {len(row_of)} {self.other_kind}s")
        return np.fromiter((row_of[i] for i in ids), dtype=np.int64, count=len(ids))

    def vector(self, ids: Sequence[str], values: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """The float32 vector of a row that interacted with ``ids`` (values default to 1.0).

        No interactions at all gives the zero vector (the least-squares answer: nothing
        pulls it anywhere); serving decides whether to answer such a user.
        """
        ids = list(ids)
        values = np.ones(len(ids)) if values is None else check_values(values, f"fold-in of {len(ids)} interactions")
        if len(values) != len(ids):
            raise ValueError(f"fold-in needs one value per id: {len(ids)} ids, {len(values)} values")
        rows, summed = _sum_repeats(self.rows(ids), values)
        return self.solve(rows, confidence(summed, self.alpha))

    def solve(self, rows: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """The exact ALS row step for distinct ``rows`` with confidences ``conf``."""
        if len(rows) == 0:
            return np.zeros(self.dim, dtype=np.float32)
        y = self.factors[rows]
        a = self.base + (y.T * (conf - 1.0)) @ y
        b = conf @ y
        return scipy.linalg.solve(a, b, assume_a="pos", check_finite=False).astype(np.float32)


def _sum_repeats(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows (sorted) and the sum of the values of each."""
    unique, inverse = np.unique(rows, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=len(unique))
