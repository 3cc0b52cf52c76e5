"""The recommender's interactions: its change log, its item catalogue and its users.

``store`` holds ``InteractionStore`` (the log and the catalogue in the database);
``checks`` the rules every interaction and catalogue row passes before it is written.
Callers import from this package: ``from lockstep.store.interactions import InteractionStore``.
"""

from __future__ import annotations

from lockstep.store.interactions.checks import (
    MAX_TIMESTAMP,
    MESSAGE_ID_LENGTH,
    InvalidInteractionError,
    UnknownItemError,
    content_message_ids,
    prepare_interactions,
)
from lockstep.store.interactions.store import (
    COLUMNS,
    INTERACTION_SEQUENCE,
    InteractionStore,
    LoadResult,
)

__all__ = [
    "COLUMNS",
    "INTERACTION_SEQUENCE",
    "MAX_TIMESTAMP",
    "MESSAGE_ID_LENGTH",
    "InteractionStore",
    "InvalidInteractionError",
    "LoadResult",
    "UnknownItemError",
    "content_message_ids",
    "prepare_interactions",
]
