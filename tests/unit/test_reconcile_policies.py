"""Run policy: suspend and resume, the active deadline, pod clean-up and the TTL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fedop import reconcile, status
from fedop.reconcile import plan
from tests.fixtures.fedjobs import (
    T0,
    child,
    created,
    deleted,
    final,
    make_spec,
    observe,
    reasons,
    running_jobs,
    status_of,
    store,
    suspends,
)

ALL_JOBS = ["digits-a", "digits-b", "digits-c", "digits-aggregator"]


def test_suspending_suspends_every_job_and_reports_suspended() -> None:
    spec = make_spec(runPolicy={"suspend": True})

    result = plan(observe(spec, status=status_of("Running", start_time=T0)))

    assert suspends(result) == dict.fromkeys(ALL_JOBS, True)
    assert result.status.phase == "Suspended"
    assert result.status.start_time is None  # the deadline clock restarts on resume
    assert "Suspended" in reasons(result)
    assert status.condition(result.status, "Suspended").status == "True"  # type: ignore[union-attr]


def test_a_job_created_suspended_starts_no_pods() -> None:
    spec = make_spec(runPolicy={"suspend": True})

    result = plan(observe(spec, jobs=[]))

    jobs = [
        a.obj for a in result.actions if isinstance(a, reconcile.Create) and a.obj["kind"] == "Job"
    ]
    assert len(jobs) == 4
    assert all(j["spec"]["suspend"] for j in jobs)


def test_resuming_unsuspends_the_jobs_and_announces_it() -> None:
    spec = make_spec()
    jobs = [child(n, suspended=True) for n in ("a", "b", "c", "aggregator")]
    before = status_of("Suspended", conditions=[])

    result = plan(observe(spec, status=before, jobs=jobs, now=T0))

    assert suspends(result) == dict.fromkeys(ALL_JOBS, False)
    assert result.status.phase == "Pending"
    assert result.status.start_time == T0
    assert "Resumed" in reasons(result)


def test_a_group_failing_because_it_was_suspended_costs_no_restart() -> None:
    spec = make_spec(runPolicy={"suspend": True})
    jobs = running_jobs(spec, a=child("a", failed=True, suspended=True))

    result = plan(observe(spec, status=status_of("Suspended"), jobs=jobs))

    assert deleted(result) == {"digits-a": "Foreground"}
    assert result.status.clients["a"].restarts == 0
    assert "ClientRestarted" not in reasons(result)


def test_a_group_marked_failed_only_after_the_job_resumed_still_costs_no_restart() -> None:
    # The controller-manager marked the Job failed late: the FederatedJob is resumed already,
    # but the Job itself is still suspended, so the suspension stopped its pods.
    spec = make_spec()
    jobs = running_jobs(spec, a=child("a", failed=True, suspended=True))

    result = plan(observe(spec, status=status_of("Running"), jobs=jobs))

    assert deleted(result) == {"digits-a": "Foreground"}
    assert result.status.clients["a"].restarts == 0
    assert "ClientRestarted" not in reasons(result)


def test_a_group_that_failed_while_running_costs_a_restart() -> None:
    spec = make_spec()
    jobs = running_jobs(spec, a=child("a", failed=True))

    result = plan(observe(spec, status=status_of("Running"), jobs=jobs))

    assert result.status.clients["a"].restarts == 1
    assert "ClientRestarted" in reasons(result)


@pytest.mark.parametrize(
    ("elapsed", "phase"),
    [
        pytest.param(59, "Running", id="within the deadline the job runs on"),
        pytest.param(60, "Failed", id="at the deadline the job fails"),
    ],
)
def test_active_deadline(elapsed: int, phase: str) -> None:
    spec = make_spec(runPolicy={"activeDeadlineSeconds": 60})

    result = plan(
        observe(
            spec, status=status_of("Running", start_time=T0), now=T0 + timedelta(seconds=elapsed)
        )
    )

    assert result.status.phase == phase
    if phase == "Failed":
        assert status.condition(result.status, "Failed").reason == "DeadlineExceeded"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("policy", "suspended", "removed"),
    [
        pytest.param(
            "Running",
            ["digits-a", "digits-b", "digits-c"],
            {},
            id="Running stops the pods still running and keeps finished ones",
        ),
        pytest.param(
            "All",
            [],
            dict.fromkeys(ALL_JOBS, "Background"),
            id="All deletes every Job with its pods",
        ),
        pytest.param("None", [], {}, id="None leaves the pods alone"),
    ],
)
def test_clean_pod_policy_when_the_job_ends(
    policy: str, suspended: list[str], removed: dict[str, str]
) -> None:
    spec = make_spec(runPolicy={"cleanPodPolicy": policy})
    jobs = running_jobs(spec, aggregator=child("aggregator", complete=True))

    result = plan(
        observe(spec, status=status_of("Running"), jobs=jobs, snapshot=store(final_record=final()))
    )

    assert result.status.phase == "Succeeded"
    assert suspends(result) == dict.fromkeys(suspended, True)
    assert deleted(result) == removed
    assert created(result) == set()


def test_failing_job_starts_nothing_new_and_stops_its_pods() -> None:
    spec = make_spec(runPolicy={"backoffLimit": 0})
    jobs = [j for j in running_jobs(spec) if j.name != "digits-b"]
    jobs = [*jobs, child("b", failed=True), child("c", failed=True)]
    jobs = [j for j in jobs if j.name != "digits-c" or j.failed]

    result = plan(observe(spec, status=status_of("Running"), jobs=jobs))

    assert result.status.phase == "Failed"
    assert created(result) == set()
    assert suspends(result) == {"digits-a": True, "digits-aggregator": True}


@pytest.mark.parametrize(
    ("after", "deletes"),
    [
        pytest.param(99, False, id="before its TTL a finished job stays"),
        pytest.param(100, True, id="at its TTL a finished job deletes itself"),
    ],
)
def test_ttl_after_finished(after: int, deletes: bool) -> None:
    spec = make_spec(runPolicy={"ttlSecondsAfterFinished": 100})

    result = plan(
        observe(
            spec,
            status=status_of("Succeeded", completion_time=T0),
            jobs=[],
            now=T0 + timedelta(seconds=after),
        )
    )

    assert (reconcile.DeleteFederatedJob() in result.actions) is deletes
