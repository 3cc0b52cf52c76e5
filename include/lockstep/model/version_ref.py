"""A registered model version as one typed value: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.

The model version travels through routing rows, XCom and asset extras as an MLflow URI
string; serving, batch and the registry each used to parse it back with a regex of their
own. This is the one parser: a ``ModelRef`` names a model and exactly one of a version (a
number, or ``latest``) or an alias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lockstep.core.errors import LockstepError

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))/?$")


class ModelRefError(LockstepError, ValueError):
    """A string that is not a ``models:/`` URI of the expected form."""


@dataclass(frozen=True)
class ModelRef:
    """One registered model version (``version``) or the version an alias points to (``alias``)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if (self.version is None) == (self.alias is None):
            raise ModelRefError(f"a model reference names a version or an alias, not both or neither: {self!r}")

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """``models:/name/N``, ``models:/name/latest`` or ``models:/name@alias``; else ModelRefError."""
        match = _MODELS_URI.match((uri or "").strip())
        if not match:
            raise ModelRefError(f"{uri!r} is not a model URI; use models:/<name>@<alias> or models:/<name>/<version>")
        return cls(match["name"], version=match["version"], alias=match["alias"])

    @classmethod
    def pinned(cls, uri: str) -> ModelRef:
        """A reference that names one version (what a routing row may hold): an alias or
        ``latest`` could move under a running replica, so both are refused."""
        ref = cls.parse(uri)
        if ref.alias is not None or ref.version == "latest":
            raise ModelRefError(
                f"model URI {uri!r} must name a version (models:/<name>/<version>); "
                "an alias could move under a running replica"
            )
        return ref

    @staticmethod
    def is_model_uri(uri: str) -> bool:
        """Whether ``uri`` is meant as a registry URI at all (else it is a local model path)."""
        return (uri or "").strip().startswith("models:/")

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias is not None else f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.uri
