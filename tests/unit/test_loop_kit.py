"""What both operator modes' handlers share (``fedop.loop_kit``): the liveness probe of the
resync loop and routing watch events to the controller."""

from __future__ import annotations

import asyncio
import time

import kopf
import pytest

from fedop import loop_kit
from fedop.controller import Controller
from fedop.settings import OperatorSettings


class Forgetful:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)


def make_controller() -> Controller:
    return Controller(lambda namespace, name: None, OperatorSettings())


def body(name: str, *, uid: str = "u-1", generation: int = 1) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "generation": generation}}


def test_a_loop_that_is_not_running_fails_the_probe() -> None:
    controller = make_controller()

    with pytest.raises(kopf.PermanentError, match="not running"):
        loop_kit.loop_age(None, controller, resync_seconds=3)


def test_a_loop_that_stopped_ticking_fails_the_probe_and_a_ticking_one_passes() -> None:
    async def check() -> None:
        controller = make_controller()
        task = asyncio.create_task(asyncio.sleep(60))
        try:
            controller.last_resync = time.monotonic() - 5
            assert loop_kit.loop_age(task, controller, resync_seconds=3) == pytest.approx(5, abs=1)
            controller.last_resync = time.monotonic() - 120
            with pytest.raises(kopf.PermanentError, match="has not ticked for 12"):
                loop_kit.loop_age(task, controller, resync_seconds=3)
        finally:
            task.cancel()

    asyncio.run(check())


def test_a_deleted_resource_is_forgotten_by_the_controller_and_the_store() -> None:
    async def check() -> None:
        controller, store = make_controller(), Forgetful()
        loop_kit.route_resource_event(controller, store, "ADDED", body("a"))
        loop_kit.route_resource_event(controller, store, "DELETED", body("a"))

        assert store.forgotten == ["u-1"]
        loop_kit.route_child_job(controller, {"metadata": {"namespace": "ns", "labels": {
            "fedkube.io/job": "a"}}})  # fmt: skip
        assert controller._queue.qsize() == 1  # only the ADDED pass: a gone job gets none

    asyncio.run(check())


def test_a_child_jobs_change_queues_a_pass_for_its_owner_only() -> None:
    async def check() -> None:
        controller = make_controller()
        loop_kit.route_resource_event(controller, Forgetful(), "ADDED", body("a"))
        first = controller._queue.get_nowait()
        controller._queued.discard(first)

        loop_kit.route_child_job(controller, {"metadata": {"namespace": "ns", "labels": {
            "fedkube.io/job": "a"}}})  # fmt: skip
        loop_kit.route_child_job(controller, {"metadata": {"namespace": "ns", "labels": {}}})

        assert first == ("ns", "a")
        assert controller._queue.get_nowait() == ("ns", "a")
        assert controller._queue.empty()

    asyncio.run(check())
