"""Client groups: a failed group restarts as a whole within its budget, then is dropped."""

from __future__ import annotations

import pytest

from fedop import reconcile
from fedop.reconcile import plan
from tests.fixtures.fedjobs import (
    child,
    created,
    deleted,
    make_spec,
    messages,
    observe,
    reasons,
    running_jobs,
    status_of,
    store,
)

FAILED_A = child("a", failed=True, failure="BackoffLimitExceeded: pod digits-a-1 exited 137")


def test_failed_group_is_deleted_with_its_pods_before_it_is_recreated() -> None:
    spec = make_spec()

    result = plan(observe(spec, status=status_of("Running"), jobs=running_jobs(spec, a=FAILED_A)))

    assert deleted(result) == {"digits-a": "Foreground"}
    assert "Job/digits-a" not in created(result)
    assert result.status.clients["a"].phase == "Restarting"
    assert result.status.clients["a"].restarts == 1
    assert messages(result, "ClientRestarted") == [
        "client a: its group failed (BackoffLimitExceeded: pod digits-a-1 exited 137); "
        "restarting the whole group (restart 1/3). Nothing to do if the new group trains; "
        "`kubectl logs job/digits-a` shows the failure. It is dropped after 3 more failure(s) "
        "(spec.runPolicy.backoffLimit)."
    ]


def test_terminating_group_is_waited_for() -> None:
    spec = make_spec()
    jobs = running_jobs(spec, a=child("a", failed=True, terminating=True, restarts=0))
    before = status_of("Running", clients={"a": {"phase": "Restarting", "restarts": 1}})

    result = plan(observe(spec, status=before, jobs=jobs))

    assert created(result) == set()
    assert deleted(result) == {}
    assert result.status.clients["a"].phase == "Restarting"
    assert reasons(result) == []


def test_gone_group_is_recreated_under_the_same_name_carrying_its_restart_count() -> None:
    spec = make_spec()
    jobs = [j for j in running_jobs(spec) if j.name != "digits-a"]
    before = status_of("Running", clients={"a": {"phase": "Restarting", "restarts": 2}})

    result = plan(observe(spec, status=before, jobs=jobs))

    (job,) = [a.obj for a in result.actions if isinstance(a, reconcile.Create)]
    assert job["metadata"]["name"] == "digits-a"
    assert job["metadata"]["annotations"]["fedkube.io/restarts"] == "2"


def test_repeating_a_restart_decision_does_not_count_or_announce_it_twice() -> None:
    spec = make_spec()
    obs = observe(spec, status=status_of("Running"), jobs=running_jobs(spec, a=FAILED_A))
    first = plan(obs)

    # The delete call failed (or the operator restarted) before the Job went away.
    second = plan(observe(spec, status=first.status, jobs=running_jobs(spec, a=FAILED_A)))

    assert second.status.clients["a"].restarts == 1
    assert "ClientRestarted" not in reasons(second)
    assert deleted(second) == {"digits-a": "Foreground"}


def test_restart_count_survives_a_lost_status_through_the_job_annotation() -> None:
    spec = make_spec()
    failed_again = child("a", failed=True, failure="Error", restarts=2)

    result = plan(
        observe(spec, status=status_of("Running"), jobs=running_jobs(spec, a=failed_again))
    )

    assert result.status.clients["a"].restarts == 3


@pytest.mark.parametrize(
    ("min_clients", "phase"),
    [
        pytest.param(2, "Running", id="the job goes on while enough clients remain"),
        pytest.param(3, "Failed", id="the job fails when too few clients remain"),
    ],
)
def test_group_past_its_restart_budget_is_dropped(min_clients: int, phase: str) -> None:
    spec = make_spec(strategy={"minClients": min_clients}, runPolicy={"backoffLimit": 2})
    exhausted = child("a", failed=True, failure="Error: exit 1", restarts=2)

    result = plan(
        observe(
            spec,
            status=status_of("Running"),
            jobs=running_jobs(spec, a=exhausted),
            snapshot=store(),
        )
    )

    assert result.status.clients["a"].phase == "Dropped"
    assert "ClientDropped" in reasons(result)
    assert result.status.clients["b"].phase == ("Running" if phase == "Running" else "Failed")
    assert result.status.phase == phase
    assert result.status.active_clients == (2 if phase == "Running" else 0)
    writes = [a for a in result.actions if isinstance(a, reconcile.WriteExcluded)]
    assert [list(w.clients) for w in writes] == [["a"]]
    assert deleted(result) == {}


def test_too_few_clients_names_them_and_the_quorum() -> None:
    spec = make_spec(runPolicy={"backoffLimit": 0})

    result = plan(observe(spec, status=status_of("Running"), jobs=running_jobs(spec, a=FAILED_A)))

    assert result.status.phase == "Failed"
    assert messages(result, "TooFewClients") == [
        "client a was dropped; 2 remain but the job needs at least 3 "
        "(spec.strategy.minClients). Each dropped client's message in status.clients says "
        "why: fix that (or lower spec.strategy.minClients), then create the job again (a "
        "new job starts from round 0)."
    ]


def test_dropped_client_stays_dropped_and_is_not_recreated() -> None:
    spec = make_spec(strategy={"minClients": 2})
    jobs = [j for j in running_jobs(spec) if j.name != "digits-a"]
    before = status_of("Running", clients={"a": {"phase": "Dropped", "restarts": 3}})

    result = plan(observe(spec, status=before, jobs=jobs, snapshot=store(excluded={"a": "x"})))

    assert created(result) == set()
    assert not [a for a in result.actions if isinstance(a, reconcile.WriteExcluded)]
    assert reasons(result) == []


def test_drop_is_written_to_the_store_once_it_is_reachable_again() -> None:
    spec = make_spec(strategy={"minClients": 2})
    before = status_of("Running", clients={"a": {"phase": "Dropped", "message": "gone"}})

    result = plan(observe(spec, status=before, snapshot=store(excluded={})))

    writes = [a for a in result.actions if isinstance(a, reconcile.WriteExcluded)]
    assert [dict(w.clients) for w in writes] == [{"a": "gone"}]
    assert isinstance(result.actions[0], reconcile.WriteExcluded)  # before any API write


def test_group_stopped_by_a_configuration_error_is_dropped_at_once_without_a_restart() -> None:
    spec = make_spec(strategy={"minClients": 2}, runPolicy={"backoffLimit": 3})
    broken = child(
        "a",
        failed=True,
        config_error=True,
        failure="PodFailurePolicy: Container client for pod ns/digits-a-0-x failed with exit "
        "code 2 matching FailJob rule at index 0",
    )

    result = plan(
        observe(
            spec, status=status_of("Running"), jobs=running_jobs(spec, a=broken), snapshot=store()
        )
    )

    a = result.status.clients["a"]
    assert a.phase == "Dropped"
    assert a.restarts == 0
    assert "configuration error (exit code 2)" in a.message
    assert "kubectl logs job/digits-a" in a.message
    assert "ClientRestarted" not in reasons(result)
    assert "ClientDropped" in reasons(result)
    assert deleted(result) == {}
    assert created(result) == set()
    assert result.status.phase == "Running"
