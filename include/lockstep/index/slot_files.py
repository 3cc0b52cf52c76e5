"""A slot's files, opened once for everyone: its model and its index, checked against its row.

A slot of the routing table (``lockstep.store.routing.SlotRow``) names a model
(``models:/<name>/<version>`` in the registry, or a local model file or directory), an
index folder and the fingerprint of the vector space both must share. Serving loads a
slot this way, the batch job loads the version it computes with this way, and a
re-embed falls back to it when its local model copy is missing: written here once, so
that the three can never disagree on which model a row means or on what is checked.

The model is always checked against the row's fingerprint (a row re-pointed at another
model must be registered again); the index is checked by ``load_index`` (checksums and
fingerprint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from lockstep.core.errors import FingerprintMismatchError, LockstepError
from lockstep.index.storage import LoadedIndex, load_index
from lockstep.model.contract import Embedder
from lockstep.model.families import load_model_file
from lockstep.model.version_ref import ModelRef, ModelRefError


class SlotLoadError(LockstepError):
    """A slot's model or index cannot be put into service."""


class ModelSlot(Protocol):
    """What naming a slot's model takes: a routing row, or a re-embed's plan."""

    model_version: str
    model_uri: str
    fingerprint: str


class IndexSlot(ModelSlot, Protocol):
    """A slot with an index folder (a routing row)."""

    index_location: str


def load_model(model_uri: str, tracking_uri: str | None = None) -> Embedder:
    """The model a slot's URI names: ``models:/<name>/<version>`` from the registry, or a local file or directory.

    A registry URI must pin one version (``ModelRef.pinned``): an alias could move under
    a running replica. Not checked against any fingerprint (``open_model`` does that).
    """
    if ModelRef.is_model_uri(model_uri):
        try:
            ref = ModelRef.pinned(model_uri)
        except ModelRefError as exc:
            raise SlotLoadError(str(exc)) from exc
        from lockstep.model.registry import Registry

        return Registry(tracking_uri=tracking_uri, model_name=ref.name).load_embedder(ref.version)
    path = Path(model_uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise SlotLoadError(f"model file {path} does not exist")
    return load_model_file(path)


def open_model(row: ModelSlot, tracking_uri: str | None = None) -> Embedder:
    """The slot's model (``load_model``), checked against the fingerprint its row registered."""
    model = load_model(row.model_uri, tracking_uri)
    if model.fingerprint != row.fingerprint:
        raise FingerprintMismatchError(
            f"slot {row.model_version}: the model at {row.model_uri} has fingerprint {model.fingerprint} "
            f"but the routing table registered {row.fingerprint}; register the slot again"
        )
    return model


def open_index(row: IndexSlot) -> LoadedIndex:
    """The slot's index from its folder, checksums and fingerprint checked (``load_index``)."""
    return load_index(row.index_location, expected_fingerprint=row.fingerprint, model_label=f"v{row.model_version}")
