"""News that must show exactly once (a committed round, a rejected update, a client's
restart) survives an operator killed between its status write and its Events: the Event is
posted first, under a name derived from what it announces, so the next pass's repeat is
refused by the API server instead of shown twice, and nothing is lost."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from fedcore import spec as fs
from fedcore.layout import LateUpdate, RejectedUpdate, RoundRecord
from fedop import events, reconcile
from fedop.apply import Executor, Target
from fedop.builders import names
from fedop.errors import ApiError
from fedop.kube import Kube
from fedop.store_view import StoreView
from tests.fixtures.fedjobs import JOB, T0, make_job


class Crash(Exception):
    """The operator's process dies here."""


class EventServer:
    """What the API server does with Events: one object per name, a second create is 409."""

    def __init__(self, *, crash_on_status: bool = False) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.crash_on_status = crash_on_status

    def post_event(self, event: dict[str, Any]) -> None:
        name = event["metadata"]["name"]
        self.calls.append(f"event {event['reason']}")
        if name in self.events:
            raise ApiError(409, "AlreadyExists", f'events "{name}" already exists')
        self.events[name] = event

    def patch_status(self, job: object, patch: object) -> None:
        self.calls.append("status")
        if self.crash_on_status:
            raise Crash

    def reasons(self) -> list[str]:
        return sorted(e["reason"] for e in self.events.values())


def record(round_: int, **extra: Any) -> RoundRecord:
    return RoundRecord(
        round=round_,
        participants=["a", "b"],
        num_samples={"a": 10, "b": 20},
        model_key=f"rounds/{round_:06d}/model.safetensors",
        model_sha256="0" * 64,
        started_at=T0,
        **extra,
    )


def execute(server: EventServer, plan: reconcile.Plan) -> None:
    executor = Executor(cast(Kube, server), StoreView(), ThreadPoolExecutor(max_workers=1))
    target = Target(
        job=JOB, parsed=make_job(), credentials=None, old_status=fs.FederatedJobStatus()
    )
    executor.apply(target, plan, T0)


def commit_plan(round_: int) -> reconcile.Plan:
    return reconcile.Plan(
        status=fs.FederatedJobStatus(phase="Running"),
        announcements=(
            events.announce("Running", "training"),
            events.round_committed(record(round_), 8),
        ),
    )


def test_a_once_event_goes_out_before_the_status_and_the_rest_after() -> None:
    server = EventServer()
    execute(server, commit_plan(1))
    assert server.calls == ["event RoundCommitted", "status", "event Running"]


def test_a_pass_killed_after_its_events_shows_each_committed_round_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = EventServer(crash_on_status=True)
    with pytest.raises(Crash):
        execute(server, commit_plan(2))
    # The status never recorded round 2, so the next operator announces it again.
    server.crash_on_status = False
    with caplog.at_level(logging.WARNING):
        execute(server, commit_plan(2))
    assert server.reasons() == ["RoundCommitted", "Running"]
    assert server.calls.count("event RoundCommitted") == 2
    assert not caplog.records, "a repeat the API server refused is not a failure"


def test_the_name_is_the_same_for_the_same_news_and_differs_otherwise() -> None:
    committed = events.round_committed(record(3), 8)
    again = events.round_committed(record(3, metrics={"accuracy": 0.5}), 8)
    other_round = events.round_committed(record(4), 8)
    other_job = names.JobRef(name=JOB.name, namespace=JOB.namespace, uid="another-uid")
    name = events.event_name(JOB, committed)
    assert name == events.event_name(JOB, again)
    assert name.startswith(f"{JOB.name}.")
    assert len(name) == len(JOB.name) + 17
    assert name != events.event_name(JOB, other_round)
    assert name != events.event_name(other_job, committed)
    site = names.JobRef(name=JOB.name, namespace=JOB.namespace, uid=JOB.uid, kind="FederatedSite")
    assert name != events.event_name(site, committed)
    # Without an identity every Event is new (two Running phases are two Events).
    running = events.announce("Running", "training")
    assert events.event_name(JOB, running) != events.event_name(JOB, running)


def test_each_rejection_and_late_update_of_a_round_has_its_own_identity() -> None:
    rejected = [
        RejectedUpdate(client=c, reason="bad-signature", detail="no") for c in ("a", "b", "a")
    ]
    late = [LateUpdate(client="c", round=4)]
    notes = events.round_problems(JOB, record(5, rejected=rejected, late=late))
    keys = [n.once for n in notes]
    assert None not in keys
    assert len(set(keys)) == len(keys) == 4


def test_another_refusal_is_still_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(EventServer):
        def post_event(self, event: dict[str, Any]) -> None:
            raise ApiError(403, "Forbidden", "events is forbidden")

    with caplog.at_level(logging.WARNING):
        execute(Refusing(), commit_plan(1))
    assert "could not post event RoundCommitted" in caplog.text
