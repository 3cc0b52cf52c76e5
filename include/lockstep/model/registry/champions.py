"""Champion history and review: who serves, since when and why, and who approved a version.

The registry forgets where an alias pointed before it moved, so promoting a champion
also writes the record of it (``lockstep.status``, ``lockstep.champion_since``, the
``replaced_*`` tags of the version it replaced, and a bounded history on the registered
model). A review decision a person gives in the MLflow UI (``lockstep.review`` with
``lockstep.review.by``) is read back here for the rollout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow

from lockstep.core import clock
from lockstep.core.errors import RegistryError
from lockstep.model.registry.tags import (
    CHALLENGER,
    CHAMPION,
    MODEL_TAG_CHAMPION_HISTORY,
    REJECTED_FIGURE_PREFIX,
    REVIEW_VALUES,
    TAG_CHAMPION_SINCE,
    TAG_REJECTED_AT,
    TAG_REJECTED_REASON,
    TAG_REPLACED_AT,
    TAG_REPLACED_BY,
    TAG_REVIEW,
    TAG_REVIEW_AT,
    TAG_REVIEW_BY,
    TAG_REVIEW_VIA,
    TAG_STATUS,
    ModelVersionInfo,
)
from lockstep.model.registry.versions import RegistryVersions

REVIEWER_MAX_CHARS = 200
HISTORY_MAX_ENTRIES = 50
HISTORY_MAX_CHARS = 5000  # the registered-model tag column is VARCHAR(5000) on some back ends


@dataclass(frozen=True)
class Review:
    """A review decision and who gave it: what the rollout and its record keep.

    ``by`` is None when nobody is named (a decision tag without ``lockstep.review.by``, or
    an Airflow form that expired); the rollout does not take such an approval.
    """

    decision: str  # "approved" or "rejected"
    by: str | None
    at: str | None
    via: str  # "mlflow" (the version's tags) or "airflow" (the Required Actions form)


def reviewer_name(by: str | None = None) -> str:
    """Who is deciding: ``by``, else the MLflow login (MLFLOW_TRACKING_USERNAME), else the OS user.

    Checked so the name is safe to show and store: one line, printable, at most
    REVIEWER_MAX_CHARS characters.
    """
    import getpass

    from lockstep.core.config import tracking_username

    name = by if by is not None else tracking_username() or ""
    if by is None and not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no login name for this uid (a bare container)
            name = ""
    name = name.strip()
    if not name or len(name) > REVIEWER_MAX_CHARS or not name.isprintable():
        raise RegistryError(
            f"reviewer {name!r}: give a user name of 1 to {REVIEWER_MAX_CHARS} printable characters "
            "(set MLFLOW_TRACKING_USERNAME or pass by=...)"
        )
    return name


class ChampionsMixin(RegistryVersions):
    """Promotion, rejection and review of versions, and the champion history."""

    def review_decision(self, version: str | int) -> str | None:
        """The reviewer's decision from the ``lockstep.review`` tag, or None while undecided.

        A reviewer opens the version in the MLflow UI and adds the tag ``lockstep.review``
        with the value ``approved`` or ``rejected``. Any other value is an error rather
        than "undecided", so a typo does not leave a rollout waiting forever.
        """
        raw = self.get_version(version).tags.get(TAG_REVIEW)
        if raw is None or not raw.strip():
            return None
        decision = REVIEW_VALUES.get(raw.strip().lower())
        if decision is None:
            raise RegistryError(
                f"version {version} of {self.model_name!r} has {TAG_REVIEW}={raw!r}; "
                "set it to 'approved' or 'rejected' in the MLflow UI"
            )
        return decision

    def review(self, version: str | int) -> Review | None:
        """The decision on the version with its reviewer (``lockstep.review.by``), or None while undecided.

        ``by`` is None when the tags name nobody; the rollout then refuses an approval (a
        rejection still stops it). MLflow does not record who set a tag, so on this path
        the reviewer is the name written with the decision (``set_review`` writes the
        MLflow login).
        """
        decision = self.review_decision(version)
        if decision is None:
            return None
        tags = self.get_version(version).tags
        by = (tags.get(TAG_REVIEW_BY) or "").strip() or None
        return Review(decision, by, tags.get(TAG_REVIEW_AT) or None, tags.get(TAG_REVIEW_VIA) or "mlflow")

    def champion_history(self) -> list[dict[str, str]]:
        """The champion history kept on the registered model, oldest first."""
        client = self._client()
        try:
            model = client.get_registered_model(self.model_name)
        except mlflow.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise self._failed("read the champion history", exc) from exc
        return _parse_history(model.tags.get(MODEL_TAG_CHAMPION_HISTORY))

    def promote_champion(self, version: str | int, reason: str) -> ModelVersionInfo | None:
        """Move ``champion`` to the version; return the version that held it before.

        The alias moves first (it is what readers follow); the tags and the history are
        the record of it. Promoting the current champion again changes nothing and
        returns None. A version promoted back (a rollback) loses its old ``replaced_*``
        tags, so the tags always describe its present state.
        """
        info = self.get_version(version)
        held = self._alias_map()
        previous = held.get(CHAMPION)
        if held.get(CHALLENGER) == info.version:
            self._remove_alias(CHALLENGER)
        if previous == info.version:
            return None
        now = clock.now_iso()
        self._write_alias(CHAMPION, info.version)
        self._write_tags(info.version, {TAG_CHAMPION_SINCE: now, TAG_STATUS: "champion"})
        stale = [t for t in (TAG_REPLACED_AT, TAG_REPLACED_BY) if t in info.tags]
        try:
            for tag in stale:
                self._client().delete_model_version_tag(self.model_name, info.version, tag)
        except mlflow.MlflowException as exc:
            raise self._failed(f"clear old tags of version {info.version}", exc) from exc
        if previous is not None:
            self._write_tags(
                previous,
                {TAG_REPLACED_AT: now, TAG_REPLACED_BY: info.version, TAG_STATUS: "replaced"},
            )
        self._append_history({"version": info.version, "since": now, "reason": reason})
        return self.get_version(previous) if previous is not None else None

    def reject(
        self, version: str | int, reason: str, figures: Mapping[str, Any]
    ) -> ModelVersionInfo:
        """Mark the version rejected with the reason and the figures that decided it.

        The ``challenger`` alias is removed if it points here. Rejecting the serving
        champion is refused: return traffic to another version first (promote it).
        """
        info = self.get_version(version)
        if CHAMPION in info.aliases:
            raise RegistryError(
                f"version {info.version} of {self.model_name!r} is the champion; promote another "
                "version (roll back) before rejecting it"
            )
        self._write_tags(
            info.version,
            {
                TAG_STATUS: "rejected",
                TAG_REJECTED_REASON: reason,
                TAG_REJECTED_AT: clock.now_iso(),
                **{f"{REJECTED_FIGURE_PREFIX}{k}": v for k, v in figures.items()},
            },
        )
        if CHALLENGER in info.aliases:
            self._remove_alias(CHALLENGER)
        return self.get_version(info.version)

    def set_review(
        self, version: str | int, decision: str, *, by: str | None = None, via: str = "mlflow",
        at: str | None = None,
    ) -> ModelVersionInfo:
        """What a reviewer does in the MLflow UI, for the command line, the rollout and tests.

        Records who decided (``by``, default the MLflow login: ``reviewer_name``) and when.
        The reviewer tags are written before the decision, so a rollout never reads an
        approval without its reviewer.
        """
        normal = REVIEW_VALUES.get(decision.strip().lower())
        if normal is None:
            raise RegistryError(f"review decision {decision!r}: use 'approved' or 'rejected'")
        if via not in ("mlflow", "airflow"):
            raise RegistryError(f"review via {via!r}: use 'mlflow' or 'airflow'")
        info = self.get_version(version)
        self._write_tags(info.version, {
            TAG_REVIEW_BY: reviewer_name(by), TAG_REVIEW_AT: at or clock.now_iso(), TAG_REVIEW_VIA: via,
        })
        return self.set_tags(info.version, {TAG_REVIEW: normal})

    def _append_history(self, entry: dict[str, str]) -> None:
        history = self.champion_history()
        history.append({**entry, "reason": entry["reason"][:200]})
        history = history[-HISTORY_MAX_ENTRIES:]
        text = json.dumps(history)
        while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
            history = history[1:]
            text = json.dumps(history)
        try:
            self._client().set_registered_model_tag(
                self.model_name, MODEL_TAG_CHAMPION_HISTORY, text
            )
        except mlflow.MlflowException as exc:
            raise self._failed("record the champion history", exc) from exc


def _parse_history(raw: str | None) -> list[dict[str, str]]:
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [dict(e) for e in history if isinstance(e, dict)] if isinstance(history, list) else []
