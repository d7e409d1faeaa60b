"""The reconcile loop: a work queue of FederatedJobs, a few workers, and a periodic resync.

Why not kopf's ``@kopf.timer``: kopf puts a finalizer on every object that has a timer or a
daemon, so deleting a FederatedJob would hang whenever the operator is down (or uninstalled).
Owner references already make the garbage collector delete the children, so the operator
needs no finalizer at all. kopf still does what it is best at, watching: its ``on.event``
handlers feed this queue when a FederatedJob or one of its Jobs changes, and the resync
wakes every job periodically because the object store, where rounds get committed, cannot
be watched.

Passes of one job never overlap (a job changed while its pass runs is queued again), passes
of different jobs run on ``workers`` threads. A pass that raises ``kopf.TemporaryError`` is
retried after its delay; one that raises ``kopf.PermanentError`` (an invalid spec) is parked
until the FederatedJob changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import kopf

from fedop.settings import OperatorSettings

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a FederatedJob."""

Sync = Callable[[str, str], None]
_UNSEEN = object()


class Controller:
    def __init__(self, sync: Sync, settings: OperatorSettings) -> None:
        self._sync = sync
        self._settings = settings
        self._known: dict[Key, object] = {}
        """Jobs seen by the watch, with the generation last seen."""
        self._parked: set[Key] = set()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="fedop-reconcile"
        )
        self.last_resync: float | None = None
        """``time.monotonic()`` of the newest resync tick (the liveness probe reads it)."""
        self.passes = 0

    # -- fed by the watches (called on the event loop) ------------------------------------------

    def observe(self, key: Key, generation: int | None, *, deleted: bool = False) -> None:
        """A FederatedJob was listed, added, changed or deleted."""
        if deleted:
            self._known.pop(key, None)
            self._parked.discard(key)
            return
        before = self._known.get(key, _UNSEEN)
        self._known[key] = generation
        if before != generation:
            # A new job or a new spec. Status-only changes (our own writes) need no pass.
            self._parked.discard(key)
            self.enqueue(key)

    def child_changed(self, key: Key) -> None:
        """A Job of the FederatedJob changed (a group failed, the aggregator finished)."""
        if key in self._known and key not in self._parked:
            self.enqueue(key)

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        """Queue a pass for ``key`` (after ``delay`` seconds). Call on the event loop."""
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.enqueue, key)
            return
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def stop(self) -> None:
        """Release the worker threads (after ``run`` was cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until cancelled."""
        workers = [
            asyncio.create_task(self._work(), name=f"fedop-worker-{i}")
            for i in range(self._settings.workers)
        ]
        try:
            while True:
                self.last_resync = time.monotonic()
                for key in list(self._known):
                    if key not in self._parked:
                        self.enqueue(key)
                await asyncio.sleep(self._settings.resync_seconds)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            try:
                await loop.run_in_executor(self._pool, self._sync, *key)
                self.passes += 1
            except kopf.TemporaryError as e:
                delay = e.delay if e.delay is not None else self._settings.retry_seconds
                log.warning("%s/%s: %s; retrying in %.0f s", *key, e, delay)
                self.enqueue(key, delay)
            except kopf.PermanentError as e:
                log.error("%s/%s: %s; waiting for the FederatedJob to change", *key, e)
                self._parked.add(key)
            except Exception:
                log.exception("%s/%s: reconcile pass failed unexpectedly; retrying", *key)
                self.enqueue(key, self._settings.retry_seconds)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.enqueue(key)
