"""The serving application: routing by the table, version-paired search, live writes.

``create_app`` and ``run`` are the entry points; ``SlotManager`` keeps a replica's
slots loaded and current. See ``app.py`` for the request path.
"""

from __future__ import annotations

from lockstep.serving.app import create_app
from lockstep.serving.runner import run
from lockstep.serving.runtime import ServingConfig, ServingRuntime
from lockstep.serving.slot_manager import ServingView, SlotManager
from lockstep.serving.slots import LoadedSlot, load_slot

__all__ = [
    "LoadedSlot",
    "ServingConfig",
    "ServingRuntime",
    "ServingView",
    "SlotManager",
    "create_app",
    "load_slot",
    "run",
]
