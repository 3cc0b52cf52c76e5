"""Click-through drift: a one-sided z-test for a drop in CTR, per user when the logs give users.

Only a drop calls for retraining; ``lockstep.drift.verdict`` adds a minimum relative
drop, because with much traffic a trivial drop is significant.

A user's searches are not independent trials (issue 22): with per-user sums of both
periods (``ClusterSums``, from ``lockstep.store.serving_logs``) the test uses the
per-user ratios and their delta-method variances, so a heavy user's bad day is not
read as drift. The two periods share users, whose clicks correlate positively across
them; treating the periods as independent overstates the variance of the difference,
which errs towards "no drift" (the check is conservative, never anti-conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lockstep.drift.statistics import DriftError
from lockstep.store.log_stats import ClusterSums, difference_design_effect


@dataclass(frozen=True)
class ClickThroughDrift:
    """CTR of the reference period vs the current one."""

    ctr_reference: float
    ctr_current: float
    relative_drop: float  # (reference - current) / reference; negative is a rise
    z: float  # positive when the current CTR is lower
    p_value: float  # one-sided: probability of a drop this large with no real change
    reference_impressions: int
    current_impressions: int
    user_level: bool = False  # the z-test used per-user sums and the delta-method variance
    design_effect: float = 1.0  # per-user variance of the difference over the binomial one


def click_through_drift(
    ref_clicks: int, ref_impressions: int, cur_clicks: int, cur_impressions: int,
    *, reference_users: ClusterSums | None = None, current_users: ClusterSums | None = None,
) -> ClickThroughDrift:
    """One-sided z-test for "the current CTR is lower": per user when both periods' sums are given.

    Without per-user sums it is the pooled two-proportion z-test. One-sided because only
    a drop calls for retraining. With no impressions on a side the CTR is reported as 0
    and the p-value as 1: no evidence, never a NaN that a gate could misread.
    """
    for name, value in (
        ("ref_clicks", ref_clicks),
        ("ref_impressions", ref_impressions),
        ("cur_clicks", cur_clicks),
        ("cur_impressions", cur_impressions),
    ):
        if value < 0:
            raise DriftError(f"{name} must be >= 0, got {value}")
    if ref_clicks > ref_impressions or cur_clicks > cur_impressions:
        raise DriftError(
            f"more clicks than impressions (reference {ref_clicks}/{ref_impressions}, "
            f"current {cur_clicks}/{cur_impressions}); count one impression per shown result list"
        )
    if reference_users is not None and current_users is not None and not (reference_users.empty or current_users.empty):
        return _per_user(reference_users, current_users, int(ref_impressions), int(cur_impressions))
    ctr_ref = ref_clicks / ref_impressions if ref_impressions else 0.0
    ctr_cur = cur_clicks / cur_impressions if cur_impressions else 0.0
    drop = (ctr_ref - ctr_cur) / ctr_ref if ctr_ref > 0 else 0.0
    z, p_value = 0.0, 1.0
    if ref_impressions and cur_impressions:
        pooled = (ref_clicks + cur_clicks) / (ref_impressions + cur_impressions)
        se = math.sqrt(pooled * (1 - pooled) * (1 / ref_impressions + 1 / cur_impressions))
        if se > 0:
            z = (ctr_ref - ctr_cur) / se
            p_value = 0.5 * math.erfc(z / math.sqrt(2.0))  # normal upper tail
    return ClickThroughDrift(
        ctr_reference=float(ctr_ref),
        ctr_current=float(ctr_cur),
        relative_drop=float(drop),
        z=float(z),
        p_value=p_value,
        reference_impressions=int(ref_impressions),
        current_impressions=int(cur_impressions),
    )


def _per_user(ref: ClusterSums, cur: ClusterSums, ref_impressions: int, cur_impressions: int) -> ClickThroughDrift:
    """The z-test of the per-user (capped) ratios with their delta-method variances."""
    ctr_ref, ctr_cur = ref.ratio, cur.ratio
    drop = (ctr_ref - ctr_cur) / ctr_ref if ctr_ref > 0 else 0.0
    variance = ref.variance + cur.variance
    z, p_value = 0.0, 1.0
    if math.isfinite(variance) and variance > 0:
        z = (ctr_ref - ctr_cur) / math.sqrt(variance)
        p_value = 0.5 * math.erfc(z / math.sqrt(2.0))
    return ClickThroughDrift(
        ctr_reference=float(ctr_ref), ctr_current=float(ctr_cur), relative_drop=float(drop), z=float(z),
        p_value=p_value, reference_impressions=ref_impressions, current_impressions=cur_impressions,
        user_level=True, design_effect=difference_design_effect(ref, cur),
    )
