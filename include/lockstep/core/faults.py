"""Deliberate, one-time failures for resilience tests and game days.

``LOCKSTEP_FAULTS`` lists fault points, e.g. ``reembed.embed:1,serving.search:3*``: a
point with a qualifier fires only for that qualifier (shard 1, model version 3). A
plain fault fires once per ``LOCKSTEP_HOME`` (a marker file records it), so a retried
task succeeds: this is how the tests show that a failed shard is retried without
duplicates. A trailing ``*`` makes it fire every time (a candidate that keeps
failing). Unset, the check is one environment lookup and nothing more.
"""

from __future__ import annotations


class InjectedFault(RuntimeError):
    """A failure asked for through LOCKSTEP_FAULTS (never raised unless configured)."""


def maybe_fail(point: str, qualifier: object = None) -> None:
    from lockstep.core.config import faults_spec

    spec = faults_spec()
    if not spec:
        return
    wanted = {item.strip() for item in spec.split(",") if item.strip()}
    for key in (point, f"{point}:{qualifier}"):
        if f"{key}*" in wanted:
            raise InjectedFault(f"injected fault at {key} (LOCKSTEP_FAULTS, every time)")
    key = point if point in wanted else f"{point}:{qualifier}"
    if key not in wanted:
        return
    from lockstep.core.config import settings

    marker = settings().home / "faults" / key.replace(":", "_").replace("/", "_")
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise InjectedFault(f"injected fault at {key} (LOCKSTEP_FAULTS); it fires once, a retry succeeds")
