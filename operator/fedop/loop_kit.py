"""What the coordinator's and the site's kopf handlers share: the resync loop's liveness, its
shutdown, and routing watch events to the ``Controller``.

Each mode registers its own handlers (``fedop.handlers``, ``fedop.site_handlers``; kopf
registers at import, so one module per mode keeps a site operator from watching
FederatedJobs); the bodies are these functions, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import kopf

from fedop.builders import names
from fedop.controller import Controller


class ForgetsJobs(Protocol):
    def forget(self, uid: str) -> None: ...


class Closes(Protocol):
    def close(self) -> None: ...


def loop_age(
    task: asyncio.Task[None] | None, controller: Controller, resync_seconds: float
) -> float:
    """Liveness: seconds since the resync loop last ticked; ``kopf.PermanentError`` when it
    is dead or stuck (no tick for ``max(60, 10 x resync)`` seconds)."""
    if task is None or task.done():
        raise kopf.PermanentError("the reconcile loop is not running")
    last = controller.last_resync
    age = 0.0 if last is None else time.monotonic() - last
    if age > max(60.0, 10 * resync_seconds):
        raise kopf.PermanentError(f"the reconcile loop has not ticked for {age:.0f} s")
    return round(age, 1)


async def stop_loop(
    task: asyncio.Task[None] | None,
    controller: Controller,
    kube: Closes,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """Cancel the resync loop, stop the controller's workers (and ``pool``, the API writes'
    threads) and close the API client, in that order."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    controller.stop()
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    kube.close()


def route_resource_event(
    controller: Controller, store: ForgetsJobs, type_: str | None, body: Mapping[str, Any]
) -> None:
    """A watched FederatedJob or FederatedSite changed (or went away)."""
    meta = body.get("metadata", {})
    key = (meta.get("namespace", "default"), meta.get("name", ""))
    deleted = type_ == "DELETED"
    controller.observe(key, meta.get("generation"), deleted=deleted)
    if deleted and meta.get("uid"):
        store.forget(meta["uid"])


def route_child_job(controller: Controller, body: Mapping[str, Any]) -> None:
    """A batch Job the operator made changed: its owner gets a pass soon."""
    meta = body.get("metadata", {})
    owner = (meta.get("labels") or {}).get(names.LABEL_JOB)
    if owner:
        controller.child_changed((meta.get("namespace", "default"), owner))
