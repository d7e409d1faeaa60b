"""A FederatedJob's life in passes: creation, phases, conditions, success, operator restarts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fedcore import spec as fs
from fedop import reconcile, status
from fedop.observed import Children, StoreSnapshot
from fedop.reconcile import plan
from tests.fixtures.fedjobs import (
    COMMIT_PUBLIC_PEM,
    T0,
    child,
    commit_key_only,
    created,
    final,
    make_spec,
    observe,
    reasons,
    record,
    running_jobs,
    status_of,
    store,
)


def test_first_pass_makes_the_commit_key_and_no_pod_before_its_public_key_is_known() -> None:
    spec = make_spec()

    result = plan(observe(spec, children=Children()))

    assert created(result) == {
        "Secret/digits-commit-key",
        *(f"Secret/digits-{c}-key" for c in "abc"),
        *(f"Secret/digits-{c}-store" for c in ("aggregator", "a", "b", "c")),
        *(f"Service/digits-{c}" for c in "abc"),
        "NetworkPolicy/digits-aggregator",
        *(f"NetworkPolicy/digits-{c}" for c in "abc"),
    }
    assert result.status.phase == "Pending"
    assert status.condition(result.status, "Created").status == "False"  # type: ignore[union-attr]
    assert "digits-commit-key" in result.status.message


def test_second_pass_creates_every_other_child_once() -> None:
    spec = make_spec()
    first = plan(observe(spec, children=Children())).status

    result = plan(observe(spec, status=first, children=commit_key_only()))

    assert created(result) == {
        "ConfigMap/digits-spec",
        *(f"Secret/digits-{c}-key" for c in "abc"),
        *(f"Secret/digits-{c}-store" for c in ("aggregator", "a", "b", "c")),
        *(f"Service/digits-{c}" for c in "abc"),
        "NetworkPolicy/digits-aggregator",
        *(f"NetworkPolicy/digits-{c}" for c in "abc"),
        *(f"Job/digits-{c}" for c in "abc"),
        "Job/digits-aggregator",
    }
    configmap = next(
        a.obj
        for a in result.actions
        if isinstance(a, reconcile.Create) and a.obj["kind"] == "ConfigMap"
    )
    assert configmap["data"]["commit-public-key.pem"] == COMMIT_PUBLIC_PEM


def test_the_commit_key_secret_is_made_once_and_never_rewritten() -> None:
    spec = make_spec()

    result = plan(observe(spec, status=status_of("Running")))

    touching = [
        a
        for a in result.actions
        if isinstance(a, reconcile.CreateCommitKey)
        or (
            isinstance(a, reconcile.Create | reconcile.Replace)
            and a.obj["metadata"]["name"] == "digits-commit-key"
        )
    ]
    assert touching == []


def test_pass_after_an_operator_restart_creates_nothing_that_exists() -> None:
    spec = make_spec()
    before = plan(observe(spec, children=Children())).status

    result = plan(observe(spec, status=before))

    assert created(result) == set()
    assert [a for a in result.actions if not isinstance(a, reconcile.SetSuspend)] == []


def test_created_condition_turns_true_once_everything_exists_and_is_announced_once() -> None:
    spec = make_spec()
    first = plan(observe(spec, children=Children())).status

    second = plan(observe(spec, status=first, jobs=[]))
    second_jobs_exist = plan(observe(spec, status=first))
    third = plan(observe(spec, status=second_jobs_exist.status, now=T0 + timedelta(seconds=9)))

    assert status.condition(second.status, "Created").status == "False"  # type: ignore[union-attr]
    created_cond = status.condition(second_jobs_exist.status, "Created")
    assert created_cond is not None
    assert created_cond.status == "True"
    assert reasons(second_jobs_exist).count("Created") == 1
    assert "Created" not in reasons(third)
    assert status.condition(third.status, "Created") == created_cond  # time did not move


@pytest.mark.parametrize(
    ("jobs_running", "rounds", "phase"),
    [
        pytest.param(False, [], "Pending", id="nothing running yet is Pending"),
        pytest.param(True, [], "Running", id="a ready pod makes it Running"),
        pytest.param(
            False,
            [record(0), record(1)],
            "Running",
            id="a committed round makes it Running even between pods",
        ),
    ],
)
def test_phase_follows_pods_and_rounds(
    jobs_running: bool, rounds: list[object], phase: str
) -> None:
    spec = make_spec()
    jobs = running_jobs(spec) if jobs_running else [child(n) for n in ("a", "b", "c", "aggregator")]

    result = plan(observe(spec, status=status_of("Pending"), jobs=jobs, snapshot=store(rounds)))  # type: ignore[arg-type]

    assert result.status.phase == phase


def test_becoming_running_is_announced_and_flips_the_running_condition() -> None:
    result = plan(observe(status=status_of("Pending")))

    assert result.status.phase == "Running"
    assert "Running" in reasons(result)
    running = status.condition(result.status, "Running")
    assert running is not None
    assert running.status == "True"


def test_final_record_and_completed_aggregator_make_it_succeed_with_the_model_uri() -> None:
    spec = make_spec()
    jobs = running_jobs(spec, aggregator=child("aggregator", complete=True))

    result = plan(
        observe(
            spec,
            status=status_of("Running"),
            jobs=jobs,
            snapshot=store(final_record=final(accuracy=0.93)),
        )
    )

    assert result.status.phase == "Succeeded"
    assert {c.phase for c in result.status.clients.values()} == {"Succeeded"}
    assert result.status.model is not None
    assert result.status.model.uri.endswith("final/model.safetensors")
    assert result.status.completion_time == T0
    assert "Succeeded" in reasons(result)
    succeeded = status.condition(result.status, "Succeeded")
    assert succeeded is not None
    assert "accuracy 0.93" in succeeded.message


def test_final_record_alone_waits_for_the_aggregator_to_exit() -> None:
    result = plan(observe(status=status_of("Running"), snapshot=store(final_record=final())))

    assert result.status.phase == "Running"


def test_aggregator_exiting_without_a_final_record_fails_the_job() -> None:
    spec = make_spec()
    jobs = running_jobs(spec, aggregator=child("aggregator", complete=True))

    result = plan(observe(spec, status=status_of("Running"), jobs=jobs))

    assert result.status.phase == "Failed"
    assert status.condition(result.status, "Failed").reason == "AggregatorFailed"  # type: ignore[union-attr]


def test_aggregator_past_its_backoff_fails_the_job_with_the_reason() -> None:
    spec = make_spec()
    jobs = running_jobs(
        spec,
        aggregator=child(
            "aggregator", failed=True, failure="BackoffLimitExceeded: Job has reached the limit"
        ),
    )

    result = plan(observe(spec, status=status_of("Running"), jobs=jobs))

    failed = status.condition(result.status, "Failed")
    assert result.status.phase == "Failed"
    assert failed is not None
    assert failed.reason == "AggregatorFailed"
    assert "BackoffLimitExceeded" in failed.message
    assert "AggregatorFailed" in reasons(result)


def test_aggregator_stopped_by_a_configuration_error_fails_the_job_at_once() -> None:
    spec = make_spec(runPolicy={"backoffLimit": 5})
    broken = child(
        "aggregator",
        failed=True,
        config_error=True,
        failure="PodFailurePolicy: Container aggregator for pod ns/digits-aggregator-x failed "
        "with exit code 2 matching FailJob rule at index 0",
    )

    result = plan(
        observe(spec, status=status_of("Running"), jobs=running_jobs(spec, aggregator=broken))
    )

    failed = status.condition(result.status, "Failed")
    assert result.status.phase == "Failed"
    assert failed is not None
    assert failed.reason == "ConfigurationError"
    assert "Fix spec.task" in failed.message
    assert "kubectl logs job/digits-aggregator" in failed.message
    assert "ConfigurationError" in reasons(result)


def test_unreachable_store_is_shown_but_does_not_stop_the_children() -> None:
    result = plan(
        observe(
            status=status_of("Running"),
            children=commit_key_only(),
            snapshot=StoreSnapshot(available=False, problem="connection refused"),
        )
    )

    assert "connection refused" in result.status.message
    assert "Job/digits-aggregator" in created(result)
    assert result.status.phase == "Running"


def test_leftovers_of_a_deleted_namesake_are_waited_for_not_adopted() -> None:
    spec = make_spec()
    foreign = Children(foreign=("Job/digits-a",))

    result = plan(observe(spec, children=foreign))

    assert result.actions == ()
    assert "Job/digits-a" in result.status.message


def test_status_carries_the_kubectl_columns() -> None:
    result = plan(observe(status=status_of("Running"), snapshot=store([record(0), record(1)])))

    assert result.status.progress == "1/3"
    assert result.status.active_clients == 3
    assert result.status.total_rounds == 3
    assert result.status.observed_generation == 1


def test_invalid_spec_fails_once_and_a_fixed_spec_starts_over() -> None:
    refused = reconcile.refuse(fs.FederatedJobStatus(), 1, "spec.rounds: bad", T0)
    again = reconcile.refuse(refused.status, 1, "spec.rounds: bad", T0 + timedelta(seconds=3))

    fixed = plan(observe(status=refused.status, generation=2, children=commit_key_only()))

    assert refused.status.phase == "Failed"
    assert reasons(refused) == ["InvalidSpec"]
    assert reasons(again) == []
    assert fixed.status.phase == "Pending"
    assert status.condition(fixed.status, "Failed") is None
    assert "Job/digits-aggregator" in created(fixed)


def test_a_finished_job_is_left_alone() -> None:
    spec = make_spec()
    done = status_of("Succeeded", completion_time=T0)
    jobs = [child(c.name, complete=True) for c in spec.clients] + [
        child("aggregator", complete=True)
    ]

    result = plan(observe(spec, status=done, jobs=jobs))

    assert result.actions == ()
    assert result.announcements == ()
    assert result.status.phase == "Succeeded"
