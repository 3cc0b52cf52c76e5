"""``GET /readyz``: ready only when every version that has users here is loaded.

Before issue 24 a replica was ready once *one* live version was loaded: it said ready
while the version carrying 50 % of the traffic was still loading, and the load balancer
sent it users whose share it then refused. Now it is ready when every live slot with
weight > 0, and the holdback version when a holdback is set, is loaded; otherwise it
answers 503 naming each version it lacks and why (``loading``, or ``failed`` with the
short error category of ``GET /routing``). The ready path is one attribute read of the
published view, so it runs on the event loop.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from lockstep.serving.slot_manager import ServingView, SlotManager


def required_versions(view: ServingView) -> list[str]:
    """The versions users are routed to: live with weight > 0, and the holdback version."""
    versions = [route.version for route, _ in view.routes]
    holdback = view.table.holdback
    if holdback is not None and holdback.model_version not in versions:
        versions.append(holdback.model_version)
    return versions


def readiness(manager: SlotManager) -> JSONResponse:
    """200 when every required version is loaded, else 503 saying which are not and why."""
    view = manager.view
    live = [slot.version for slot, _ in view.live]
    required = required_versions(view)
    missing = [v for v in required if v not in view.slots]
    body: dict[str, Any] = {"live": live, "unloaded": list(view.unloaded), "generation": view.generation}
    if not required:
        return JSONResponse({"ready": False, "reason": "no live model version is loaded yet", **body}, status_code=503)
    if not missing:
        return JSONResponse({"ready": True, **body})
    status = {s.model_version: s for s in manager.status()}
    not_loaded = [_why(version, status.get(version)) for version in missing]
    reason = "; ".join(
        f"model version {n['model_version']} is {n['state']}" + (f" ({n['error']})" if n["error"] else "")
        for n in not_loaded
    )
    return JSONResponse(
        {"ready": False, "reason": f"not every version with traffic is loaded on this replica: {reason}",
         "not_loaded": not_loaded, **body},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _why(version: str, status: Any) -> dict[str, Any]:
    failed = status is not None and status.error_category is not None
    return {
        "model_version": version,
        "weight": status.weight if status is not None else None,
        "state": "failed" if failed else "loading",
        "error": status.error_category if failed else None,
    }
