"""Knobs: config fields that are also fields of a DAG's trigger form.

A knob is a dataclass field whose metadata holds what the form shows: a title, a section,
a description and the JSON schema of its value (``knob``). The config class keeps the
default, so the library, the CLI and the DAG's Params can never disagree on it; a DAG's
form (``DagForm``) lists the knobs of one or more config classes in the order it shows
them, and ``lockstep.ops.dag_support.dag_params`` turns it into Airflow ``Param``s.
The metadata has the shape of ``lockstep.rollout.config.setting``, so ``knobs`` reads
``RolloutConfig`` too. Free of Airflow and of heavy imports: DAG files read it when parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

KNOB_KEYS = ("title", "section", "description", "schema")


def knob(default: Any, title: str, section: str, description: str, **schema: Any) -> Any:
    """A config field with ``default`` that is also a form field (``schema``: its JSON schema)."""
    return field(default=default, metadata={"title": title, "section": section, "description": description, "schema": schema})


@dataclass(frozen=True)
class Knob:
    """One form field: its config field's name and default, and what the form shows."""

    name: str
    default: Any
    title: str
    section: str
    description: str
    schema: Mapping[str, Any]

    @property
    def form_default(self) -> Any:
        """The default as a form value (JSON: a tuple becomes a list)."""
        return list(self.default) if isinstance(self.default, tuple) else self.default


def knobs(config: type, names: Iterable[str] | None = None) -> tuple[Knob, ...]:
    """The knobs of the dataclass ``config``, in field order, or those of ``names`` in that order.

    A field without form metadata is no knob (it stays a library setting); naming one, or a
    field that does not exist, is an error.
    """
    found = {f.name: f for f in fields(config) if set(KNOB_KEYS) <= set(f.metadata)}
    wanted = list(found) if names is None else list(names)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"{config.__name__} has no knob {', '.join(missing)}")
    return tuple(_knob(found[name]) for name in wanted)


def _knob(f: Any) -> Knob:
    if f.default is MISSING:
        raise ValueError(f"knob {f.name} has no default")
    meta = f.metadata
    return Knob(f.name, f.default, meta["title"], meta["section"], meta["description"], dict(meta["schema"]))


@dataclass(frozen=True)
class DagForm:
    """A DAG's trigger form: its knobs in the order the form shows them (each section's together)."""

    dag_id: str
    knobs: tuple[Knob, ...]

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"{self.dag_id}: knobs named twice: {', '.join(doubled)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def defaults(self) -> dict[str, Any]:
        """Every knob's default, as the form shows it."""
        return {k.name: k.form_default for k in self.knobs}
