"""The MLflow seam: one client per store, checked once, and MLflow's process-wide URIs scoped.

MLflow's fluent API (runs, ``log_model``, ``load_model``) reads a process-wide tracking
URI; every call of the registry sets it for its own duration (``_scoped``) and restores
the caller's value, so two ``Registry`` objects on different stores can live in one
process. Every part of the registry (versions, champions, runs, loading) reaches MLflow
through the one ``MlflowStore`` it is built on, so the client, the preflight check and
the error wording are shared.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow

from lockstep.core.config import mask_url, settings
from lockstep.core.errors import RegistryError

PREFLIGHT_TIMEOUT_S = 3.0

_URI_LOCK = threading.RLock()


class MlflowStore:
    """The registered model ``model_name`` in the MLflow store at ``tracking_uri``."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        model_name: str | None = None,
        *,
        artifact_root: str | Path | None = None,
    ) -> None:
        conf = settings()
        self.tracking_uri = tracking_uri or conf.mlflow_tracking_uri
        self.model_name = model_name or conf.model_name
        # Only a database store needs an artifact location from us; a server has its own.
        self.artifact_root = Path(artifact_root) if artifact_root else conf.artifact_root
        self._client_cache: mlflow.MlflowClient | None = None

    def __repr__(self) -> str:
        return f"Registry({mask_url(self.tracking_uri)!r}, {self.model_name!r})"

    def _client(self) -> mlflow.MlflowClient:
        """The MLflow client, after checking once that the store answers."""
        if self._client_cache is None:
            self._preflight()
            self._client_cache = mlflow.MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client_cache

    def _preflight(self) -> None:
        """Fail in seconds with advice instead of MLflow's minutes of retries."""
        scheme = urlsplit(self.tracking_uri).scheme
        if scheme in ("http", "https"):
            import httpx

            url = self.tracking_uri.rstrip("/") + "/health"
            try:
                httpx.get(url, timeout=PREFLIGHT_TIMEOUT_S)
            except httpx.HTTPError as exc:
                raise RegistryError(
                    f"the MLflow tracking server at {mask_url(self.tracking_uri)} does not answer "
                    f"({type(exc).__name__}: {exc}); start it (mlflow server ...) or set "
                    "MLFLOW_TRACKING_URI to a reachable server, or unset it to use the embedded "
                    "SQLite store in LOCKSTEP_HOME"
                ) from exc
        elif scheme == "sqlite":
            db_path = self.tracking_uri[len("sqlite:///") :]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)

    def _experiment_id(self, name: str) -> str:
        client = self._client()
        try:
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = None
            if urlsplit(self.tracking_uri).scheme not in ("http", "https", "databricks"):
                folder = self.artifact_root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
                location = folder.resolve().as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except mlflow.MlflowException as exc:  # created meanwhile by another process
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise exc from None
                return found.experiment_id
        except mlflow.MlflowException as exc:
            raise self._failed(f"open experiment {name!r}", exc) from exc

    def _failed(self, what: str, exc: Exception) -> RegistryError:
        message = getattr(exc, "message", None) or str(exc)
        return RegistryError(
            f"MLflow at {mask_url(self.tracking_uri)} could not {what} of model "
            f"{self.model_name!r}: {message}"
        )

    @contextmanager
    def _scoped(self) -> Iterator[None]:
        """Point MLflow's process-wide URIs at this store, then put back the caller's."""
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with _URI_LOCK:
            saved_env = {
                k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
            }
            saved_tracking = tracking_utils._tracking_uri
            saved_registry = registry_utils._registry_uri
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(saved_tracking)
                registry_utils._registry_uri = saved_registry
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


def quote_value(value: str) -> str:
    """A value inside single quotes of an MLflow search filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
