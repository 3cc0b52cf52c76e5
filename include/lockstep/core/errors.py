"""Errors that name what is wrong and what to do about it.

Every error Lockstep raises on bad input or a broken environment derives from
``LockstepError`` so the command line and the serving API can turn it into a clear
message (exit code 1, or a 4xx) instead of a traceback.
"""

from __future__ import annotations


class LockstepError(Exception):
    """Base class: the message is meant for the person at the keyboard."""


class ConfigurationError(LockstepError):
    """A setting points at something that cannot work (bad URL, unreachable store)."""


class InvalidRecordError(LockstepError, ValueError):
    """A record is malformed: empty id, empty text, metadata that is not an object."""


class RecordNotFoundError(LockstepError, KeyError):
    """An id names no live record."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "record not found"


class CorpusError(LockstepError, ValueError):
    """A corpus file cannot be loaded: missing columns, duplicate ids, empty text."""


class IndexIntegrityError(LockstepError):
    """An index version on disk is corrupt, truncated or does not match its manifest."""


class FingerprintMismatchError(LockstepError):
    """An index was built by a different vector space than the model it is paired with."""


class RegistryError(LockstepError):
    """The MLflow registry cannot be reached or has no such model version."""


class NotFittedError(LockstepError):
    """A model was asked to embed before it was fitted."""


class UnsafePathError(LockstepError, ValueError):
    """A value that becomes a path (digest, version, file name, folder) is malformed or points outside its root."""
