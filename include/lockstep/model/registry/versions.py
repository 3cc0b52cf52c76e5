"""Versions and aliases: reading what the registry holds, and moving tags and aliases.

Every other part of the registry (registration, champions, runs, loading) is built on
``RegistryVersions``: it names a version (``get_version``, ``resolve``), tags it and points
aliases at it, and turns MLflow's answers into ``ModelVersionInfo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import mlflow

from lockstep.core.config import mask_url
from lockstep.core.errors import RegistryError
from lockstep.model.registry.store import MlflowStore, quote_value
from lockstep.model.registry.tags import (
    MODEL_DESCRIPTION,
    TAG_FINGERPRINT,
    ModelVersionInfo,
    tag_value,
)
from lockstep.model.version_ref import ModelRef, ModelRefError


class RegistryVersions(MlflowStore):
    """The versions of the model, their tags and its aliases."""

    def get_version(self, version: str | int) -> ModelVersionInfo:
        """The version, or a RegistryError naming the model, the version and what exists."""
        version = version_str(version)
        client = self._client()
        try:
            mv = client.get_model_version(self.model_name, version)
        except mlflow.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise self._failed(f"read version {version}", exc) from exc
            raise self._missing_version(version) from exc
        return self._info(mv, self._aliases_by_version())

    def latest_versions(self, limit: int | None = None) -> list[ModelVersionInfo]:
        """All versions of the model (or the newest ``limit``), newest first; [] if none."""
        client = self._client()
        try:
            found = client.search_model_versions(f"name = '{quote_value(self.model_name)}'")
        except mlflow.MlflowException as exc:
            raise self._failed("list the model versions", exc) from exc
        found = sorted(found, key=lambda mv: int(mv.version), reverse=True)[:limit]
        aliases = self._aliases_by_version() if found else {}
        return [self._info(mv, aliases) for mv in found]

    def version_for_alias(self, alias: str) -> ModelVersionInfo | None:
        """The version an alias points at, or None when the alias (or the model) is unset."""
        client = self._client()
        try:
            mv = client.get_model_version_by_alias(self.model_name, alias)
        except mlflow.MlflowException as exc:
            # An unset alias is INVALID_PARAMETER_VALUE in the SQL store, like a malformed
            # one; the model's alias map tells the two apart.
            if alias not in self._alias_map():
                return None
            raise self._failed(f"read alias {alias!r}", exc) from exc
        return self._info(mv, self._aliases_by_version())

    def resolve(self, uri: str) -> ModelVersionInfo:
        """Resolve ``models:/name@alias``, ``models:/name/N`` or ``models:/name/latest``."""
        try:
            ref = ModelRef.parse(uri)
        except ModelRefError as exc:
            raise RegistryError(str(exc)) from exc
        registry = self if ref.name == self.model_name else self._for_model(ref.name)
        if ref.alias is not None:
            found = registry.version_for_alias(ref.alias)
            if found is None:
                raise RegistryError(
                    f"model {registry.model_name!r} has no alias {ref.alias!r} at "
                    f"{mask_url(self.tracking_uri)}; set it with Registry.set_alias or in the MLflow UI"
                )
            return found
        if ref.version == "latest":
            newest = registry.latest_versions(limit=1)
            if not newest:
                raise registry._missing_version("latest")
            return newest[0]
        return registry.get_version(ref.version)

    def describe_version(self, version: str | int, description: str) -> ModelVersionInfo:
        """Set the version's description (markdown): the MLflow UI shows it on the version page."""
        info = self.get_version(version)
        try:
            self._client().update_model_version(self.model_name, info.version, description=description)
        except mlflow.MlflowException as exc:
            raise self._failed(f"describe version {info.version}", exc) from exc
        return info

    def version_description(self, version: str | int) -> str:
        """The version's description as the MLflow UI shows it ("" when unset)."""
        try:
            mv = self._client().get_model_version(self.model_name, self.get_version(version).version)
        except mlflow.MlflowException as exc:
            raise self._failed(f"read version {version}", exc) from exc
        return mv.description or ""

    def set_tags(self, version: str | int, tags: Mapping[str, Any]) -> ModelVersionInfo:
        info = self.get_version(version)
        self._write_tags(info.version, tags)
        return self.get_version(info.version)

    def set_alias(self, alias: str, version: str | int) -> ModelVersionInfo:
        info = self.get_version(version)
        self._write_alias(alias, info.version)
        return self.get_version(info.version)

    def delete_alias(self, alias: str) -> bool:
        """Remove the alias; False when it was not set (deleting twice is not an error)."""
        if alias not in self._alias_map():
            return False
        self._remove_alias(alias)
        return True

    def _describe_model(self) -> None:
        """Tell the reviewer in the MLflow UI how to decide, on the model's own page."""
        client = self._client()
        try:
            if not client.get_registered_model(self.model_name).description:
                client.update_registered_model(self.model_name, description=MODEL_DESCRIPTION)
        except mlflow.MlflowException as exc:
            raise self._failed("describe the registered model", exc) from exc

    def _alias_map(self) -> dict[str, str]:
        """Every alias of the model and the version it points at, in one read."""
        try:
            model = self._client().get_registered_model(self.model_name)
        except mlflow.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise self._failed("read the aliases", exc) from exc
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def _aliases_by_version(self) -> dict[str, list[str]]:
        by_version: dict[str, list[str]] = {}
        for alias, version in sorted(self._alias_map().items()):
            by_version.setdefault(version, []).append(alias)
        return by_version

    def _write_tags(self, version: str, tags: Mapping[str, Any]) -> None:
        client = self._client()
        try:
            for key, value in tags.items():
                client.set_model_version_tag(self.model_name, version, str(key), tag_value(value))
        except mlflow.MlflowException as exc:
            raise self._failed(f"tag version {version}", exc) from exc

    def _write_alias(self, alias: str, version: str) -> None:
        try:
            self._client().set_registered_model_alias(self.model_name, alias, version)
        except mlflow.MlflowException as exc:
            raise self._failed(f"point alias {alias!r} at version {version}", exc) from exc

    def _remove_alias(self, alias: str) -> None:
        try:
            self._client().delete_registered_model_alias(self.model_name, alias)
        except mlflow.MlflowException as exc:
            raise self._failed(f"delete alias {alias!r}", exc) from exc

    def _info(self, mv: Any, aliases: dict[str, list[str]]) -> ModelVersionInfo:
        tags = dict(mv.tags or {})
        return ModelVersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or None,
            fingerprint=tags.get(TAG_FINGERPRINT, ""),
            source=mv.source or "",
            model_uri=ModelRef(mv.name, version=str(mv.version)).uri,
            tags=tags,
            aliases=list(aliases.get(str(mv.version), [])),
        )

    def _missing_version(self, version: str) -> RegistryError:
        where = mask_url(self.tracking_uri)
        try:
            existing = [mv.version for mv in self.latest_versions()]
        except RegistryError:
            existing = []
        if not existing:
            return RegistryError(
                f"model {self.model_name!r} has no version {version}: no versions of it are "
                f"registered at {where}; run `lockstep train` to register one, or check "
                "MLFLOW_TRACKING_URI and LOCKSTEP_MODEL_NAME"
            )
        listed = ", ".join(sorted(existing, key=int))
        return RegistryError(
            f"model {self.model_name!r} has no version {version} at {where}; "
            f"registered versions: {listed}"
        )

    def _for_model(self, name: str) -> Self:
        """The same store's registry of another model (``resolve`` of a URI naming it), one client."""
        other = type(self)(self.tracking_uri, name, artifact_root=self.artifact_root)
        other._client_cache = self._client_cache
        return other


def version_str(version: str | int) -> str:
    """A version number as MLflow spells it ('3'), or a RegistryError for anything else."""
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"{version!r} is not a model version; versions are 1, 2, 3, ...")
    return str(int(text))
