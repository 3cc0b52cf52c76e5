"""One request as the logs record it: what was asked, by whom, when.

Kept apart from the runtime that answers requests so that every system's endpoints
(``app``'s ``/search``, ``recommend``'s ``/recommend``) can describe their requests
without importing the runtime, which in turn picks the system's slots.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from lockstep.core import clock


@dataclass(frozen=True)
class Asked:
    """One request as the logs record it: what was asked (a query, or a user id), by whom, when."""

    query: str
    k: int
    user_id: str | None
    pinned: bool
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: datetime = field(default_factory=clock.now)
    started: float = field(default_factory=time.perf_counter)
