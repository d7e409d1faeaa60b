"""The work queue: one pass at a time per job, retries, parking, and no self-triggered loops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import kopf

from fedop.controller import Controller, Key
from fedop.settings import OperatorSettings

KEY: Key = ("team-a", "digits")
SETTINGS = OperatorSettings(resync_seconds=3600, workers=2, retry_seconds=0.01)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def run(
    scenario: Callable[[Controller], Awaitable[None]], sync: Callable[[str, str], None]
) -> None:
    async def main() -> None:
        controller = Controller(sync, SETTINGS)
        task = asyncio.create_task(controller.run())
        try:
            await scenario(controller)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            controller.stop()

    asyncio.run(main())


def test_a_job_changed_during_its_pass_gets_one_more_pass_never_two_at_once() -> None:
    release = threading.Event()
    calls: list[Key] = []
    overlapping = threading.Lock()

    def sync(ns: str, name: str) -> None:
        if not overlapping.acquire(blocking=False):
            raise AssertionError("two passes of one job overlapped")
        try:
            calls.append((ns, name))
            release.wait(10)
        finally:
            overlapping.release()

    async def scenario(c: Controller) -> None:
        c.observe(KEY, 1)
        await until(lambda: len(calls) == 1)
        c.child_changed(KEY)
        c.child_changed(KEY)
        release.set()
        await until(lambda: c.passes == 2)

    run(scenario, sync)
    assert calls == [KEY, KEY]


def test_status_only_changes_do_not_cause_a_pass() -> None:
    calls: list[Key] = []

    async def scenario(c: Controller) -> None:
        c.observe(KEY, 1)
        await until(lambda: c.passes == 1)
        c.observe(KEY, 1)  # our own status write comes back as a MODIFIED event
        c.observe(("team-a", "other"), 1)
        await until(lambda: c.passes == 2)

    run(scenario, lambda ns, name: calls.append((ns, name)))
    assert calls == [KEY, ("team-a", "other")]


def test_temporary_errors_are_retried() -> None:
    calls: list[int] = []

    def sync(ns: str, name: str) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise kopf.TemporaryError("API busy", delay=0.01)

    async def scenario(c: Controller) -> None:
        c.observe(KEY, 1)
        await until(lambda: c.passes == 1)

    run(scenario, sync)
    assert len(calls) == 3


def test_permanent_errors_park_the_job_until_its_spec_changes() -> None:
    generations: list[int] = []

    def sync(ns: str, name: str) -> None:
        generations.append(len(generations) + 1)
        if len(generations) == 1:
            raise kopf.PermanentError("spec.rounds: must be >= 1")

    async def scenario(c: Controller) -> None:
        c.observe(KEY, 1)
        await until(lambda: len(generations) == 1)
        c.child_changed(KEY)  # a parked job ignores its children
        await asyncio.sleep(0.05)
        assert len(generations) == 1
        c.observe(KEY, 2)
        await until(lambda: c.passes == 1)

    run(scenario, sync)
    assert generations == [1, 2]


def test_deleted_jobs_are_forgotten() -> None:
    calls: list[Key] = []

    async def scenario(c: Controller) -> None:
        c.observe(KEY, 1, deleted=True)
        c.child_changed(KEY)
        c.observe(("team-a", "other"), 1)
        await until(lambda: c.passes == 1)

    run(scenario, lambda ns, name: calls.append((ns, name)))
    assert calls == [("team-a", "other")]
