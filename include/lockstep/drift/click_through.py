"""Click-through drift: a one-sided two-proportion z-test for a drop in CTR.

Only a drop calls for retraining; ``lockstep.drift.verdict`` adds a minimum relative
drop, because with much traffic a trivial drop is significant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lockstep.drift.statistics import DriftError


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


def click_through_drift(
    ref_clicks: int, ref_impressions: int, cur_clicks: int, cur_impressions: int
) -> ClickThroughDrift:
    """One-sided pooled two-proportion z-test for "the current CTR is lower".

    One-sided because only a drop calls for retraining. With no impressions on a side
    the CTR is reported as 0 and the p-value as 1: no evidence, never a NaN that a
    gate could misread.
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
