"""Lockstep: ship new versions of embedding models with versioned indexes, in lockstep.

One subpackage per pipeline; a layer imports only the layers below it (checked by the
import-linter contract in ``.importlinter``)::

    cli                                    the ``lockstep`` command
    ops                                    embedded stack, demo, simulator, retention, UI data, DAG support
    rollout | serving | drift | training   the pipelines (independent of each other)
    index                                  FAISS indexes, index files, re-embedding
    model                                  embedding models, the MLflow registry seam, evaluation
    store                                  records and change log, routing table, schema, database
    core                                   errors, configuration, atomic files, locks, fault injection
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lockstep")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
