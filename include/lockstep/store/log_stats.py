"""What the serving logs say about one version over a time window, as plain values.

``lockstep.store.serving_logs`` reads these from the database; the rollout's statistics
and strategies (which must stay free of any database) and the drift check take them in.

**Impressions and clicks, defined once.** The serving replicas log every search they
answer and every search a model version failed; a request rejected before any model
saw it (bad input, 4xx) is not logged at all.

- A *request* is any logged, unpinned search: the denominator of the error rate.
- A *server error* is a logged status of 500 or more: the model version failed.
- An *impression* is a search answered with a result list: a 2xx status (the app logs
  200). Only a result list can be clicked, so only impressions are the denominator of
  the click-through rate.
- A *click* is an impression with at least one click event (however many records of
  the list were clicked): one Bernoulli outcome per impression, which is what the CTR
  tests of the rollout and the drift check assume. So clicks never exceed impressions.

Until issue 11 the rollout counted every non-5xx request as an impression and the drift
check only status 200; with the statuses the app logs (200 and 500) both give the same
numbers, but a 4xx row (an older replica, another writer) would have been an impression
that could never be clicked and pulled a version's CTR down. Both now use the
definition above.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lockstep.core.clock import utc

SERVER_ERROR = 500  # a logged status at or above this is a server error
ANSWERED = (200, 300)  # [low, high): the statuses of a search answered with a result list


def is_server_error(status: int) -> bool:
    """A logged status the model version is to blame for."""
    return status >= SERVER_ERROR


def is_impression(status: int) -> bool:
    """A logged status of a search answered with a result list (see the module docstring)."""
    return ANSWERED[0] <= status < ANSWERED[1]


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start))
        object.__setattr__(self, "end", utc(self.end))

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class ArmStats:
    """One version's traffic in a window.

    ``declined`` counts requests that were neither answered nor a server error (non-2xx
    statuses below 500): they count in the error rate's denominator but are no impression.
    """

    version: str
    requests: int = 0
    errors: int = 0
    clicked: int = 0  # impressions with at least one click
    latencies_ms: tuple[float, ...] = ()  # of every request that is not a server error
    declined: int = 0

    @property
    def impressions(self) -> int:
        return self.requests - self.errors - self.declined

    @property
    def answered(self) -> int:
        """The impressions (the name the rollout's strategies use)."""
        return self.impressions

    @property
    def ctr(self) -> float:
        return self.clicked / self.impressions if self.impressions else float("nan")

    def figures(self) -> dict[str, float]:
        return {"requests": self.requests, "errors": self.errors, "clicked": self.clicked, "ctr": self.ctr}


@dataclass(frozen=True)
class ShadowStats:
    """The shadow copies of one version in a window, paired with the live answers."""

    version: str
    copies: int = 0
    errors: int = 0
    live_top_ids: tuple[tuple[str, ...], ...] = ()
    shadow_top_ids: tuple[tuple[str, ...] | None, ...] = ()
    shadow_latencies_ms: tuple[float, ...] = ()
    live_latencies_ms: tuple[float, ...] = ()
    live_requests: int = 0
    live_errors: int = 0


@dataclass(frozen=True)
class ClickThrough:
    """Impressions and clicks of one version in one window (the drift check's CTR input)."""

    impressions: int = 0
    clicks: int = 0
