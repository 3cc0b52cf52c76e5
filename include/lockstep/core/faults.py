"""Deliberate, one-time failures for resilience tests and game days.

``LOCKSTEP_FAULTS`` lists fault points, e.g. ``reembed.embed:1,serving.search:3*``: a
point with a qualifier fires only for that qualifier (shard 1, model version 3). A
plain fault fires once per ``LOCKSTEP_HOME`` (a marker file records it), so a retried
task succeeds: this is how the tests show that a failed shard is retried without
duplicates. A trailing ``*`` makes it fire every time (a candidate that keeps
failing). Unset, the check is one environment lookup and nothing more.

A point written with a trailing ``!`` (``reembed.checkpoint!``) is a *hang*, for
``maybe_hang``: the process writes ``<home>/faults/<point>.hanging`` and stops making
progress until it is killed, once per ``LOCKSTEP_HOME`` (tests kill a worker mid-shard
this way, at a point they know, not at a moment they guess).
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


def maybe_hang(point: str) -> None:
    """Stop here for good when ``LOCKSTEP_FAULTS`` lists ``<point>!`` (once per home; see the module docstring)."""
    from lockstep.core.config import faults_spec

    spec = faults_spec()
    if not spec or f"{point}!" not in {item.strip() for item in spec.split(",")}:
        return
    import os
    import time

    from lockstep.core.config import settings

    marker = settings().home / "faults" / f"{point}.hanging"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    while True:  # until the test (or the game day) kills this process
        time.sleep(3600)
