"""The parts of the serving app that a system supplies (``lockstep.systems``).

The app's request path, limits, logs, routing and metrics are the same for every system;
what differs is the routes that answer (``/search`` or ``/recommend``), the slots a
replica loads for a routing row, and the batch table's kind. ``create_app`` takes these
parts from its caller, so serving never asks which system it serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServingParts:
    """What one system adds to the serving app."""

    description: str  # the OpenAPI description
    add_routes: Callable[[Any, Any, Callable[..., None]], None]  # (app, runtime, require_token)
    batch_kind: str  # the batch table's kind this system reads (lockstep.batch.plan.RELATED or RECOMMENDATIONS)
    slots: Callable[[Any], Any] | None = None  # engine -> a SlotSystem; None: the search slots
    quiet_blas: Callable[[], Any] | None = None  # limits BLAS threads while serving (a threadpoolctl limiter)
