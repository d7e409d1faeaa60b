"""The run policy on the real cluster: suspend and resume mid-job, a client dropped after its
restart budget while the job goes on, and a job that fails when too few clients remain."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.fixtures.operator import FedJobs, Obj

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

BROKEN_ENV = {"name": "PYTHONHOME", "value": "/nonexistent"}
"""A client whose pods cannot start Python, as with a broken image: every attempt fails."""


def job_uids(fedjobs: FedJobs, name: str) -> dict[str, str]:
    items = json.loads(
        fedjobs.kubectl("get", "jobs", "-l", f"fedkube.io/job={name}", "-o", "json")
    )["items"]
    return {j["metadata"]["name"]: j["metadata"]["uid"] for j in items}


def wait_for_no_pods(fedjobs: FedJobs, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while pods := fedjobs.owned(name)["pods"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: pods still there after {timeout:.0f}s: {pods}")
        time.sleep(1.0)


def active_pods(fedjobs: FedJobs, name: str) -> list[str]:
    """The job's pods that are not finished (Pending or Running): those hold resources."""
    out = fedjobs.kubectl("get", "pods", "-l", f"fedkube.io/job={name}", "-o", "json")
    return [
        p["metadata"]["name"]
        for p in json.loads(out)["items"]
        if p["status"].get("phase") not in ("Succeeded", "Failed")
    ]


def change_clients(*names: str, backoff_limit: int = 1, **fields: object) -> Callable[[Obj], None]:
    """A manifest edit: ``runPolicy.backoffLimit`` and ``fields`` set on the named clients."""

    def edit(obj: Obj) -> None:
        obj["spec"]["runPolicy"]["backoffLimit"] = backoff_limit
        for client in obj["spec"]["clients"]:
            if client["name"] in names:
                client.update(fields)

    return edit


def break_clients(*names: str) -> Callable[[Obj], None]:
    """Clients whose every attempt fails, as with a broken image (restart budget 1)."""
    return change_clients(*names, env=[BROKEN_ENV])


def assert_went_on_without(
    fedjobs: FedJobs, name: str, status: Obj, client: str, *, restarts: int, because: str
) -> None:
    """The job succeeded after dropping ``client`` (``restarts`` restarts, ``because`` in its
    message): every round after the first closed with the two other clients."""
    assert status["phase"] == "Succeeded", fedjobs.explain(name)
    dropped = status["clients"][client]
    assert dropped["phase"] == "Dropped"
    assert dropped["restarts"] == restarts
    assert because in dropped["message"]
    others = sorted(c for c in status["clients"] if c != client)
    for entry in status["history"][1:]:
        assert entry["participants"] == others


def test_suspending_mid_job_stops_every_pod_and_resuming_goes_on_from_the_last_commit(
    fedjobs: FedJobs,
) -> None:
    name = "pausable"
    fedjobs.apply(fedjobs.example(name=name, rounds=200))
    fedjobs.wait_for_round(name, 2)
    uids = job_uids(fedjobs, name)

    fedjobs.patch_spec(name, {"runPolicy": {"suspend": True}})
    suspended = fedjobs.wait_for_phase(name, "Suspended", timeout=120)
    wait_for_no_pods(fedjobs, name)

    # Suspended means nothing runs: no pod, no new round, and the Jobs are kept, not deleted.
    frozen = fedjobs.committed_rounds(name)
    assert 2 <= frozen[-1] < 200
    assert frozen == list(range(frozen[-1] + 1))
    time.sleep(5)
    assert fedjobs.committed_rounds(name) == frozen
    assert fedjobs.owned(name)["pods"] == []
    assert job_uids(fedjobs, name) == uids
    assert any(c["type"] == "Suspended" and c["status"] == "True" for c in suspended["conditions"])

    fedjobs.patch_spec(name, {"runPolicy": {"suspend": False}})
    resumed = fedjobs.wait_for_round(name, frozen[-1] + 2)

    # The same Jobs, resumed; rounds go on from the last commit, none run twice; a
    # suspension is not a failure, so no restart is counted.
    assert resumed["phase"] == "Running"
    assert job_uids(fedjobs, name) == uids
    rounds = fedjobs.committed_rounds(name)
    assert rounds == list(range(rounds[-1] + 1))
    assert {c["restarts"] for c in resumed["clients"].values()} == {0}
    reasons = [r for r, _ in fedjobs.events(name)]
    assert "Suspended" in reasons
    assert "Resumed" in reasons
    assert "ClientRestarted" not in reasons
    fedjobs.kubectl("delete", "fj", name, "--wait=true", "--timeout=60s")


def test_a_client_past_its_restart_budget_is_dropped_and_the_job_goes_on(
    fedjobs: FedJobs,
) -> None:
    name = "one-broken"
    fedjobs.apply(fedjobs.example(name=name, rounds=4, edit=break_clients("hospital-c")))

    status = fedjobs.wait_for_phase(name, "Succeeded", "Failed", timeout=600)

    # The aggregator stopped waiting for it: every round closed with the two healthy clients.
    assert_went_on_without(
        fedjobs, name, status, "hospital-c", restarts=1, because="spec.runPolicy.backoffLimit=1"
    )
    assert [h["round"] for h in status["history"]] == list(range(5))
    reasons = [r for r, _ in fedjobs.events(name)]
    assert reasons.count("ClientRestarted") == 1
    assert reasons.count("ClientDropped") == 1


def test_a_job_fails_with_the_reason_when_fewer_than_min_clients_remain(
    fedjobs: FedJobs,
) -> None:
    name = "two-broken"
    fedjobs.apply(
        fedjobs.example(name=name, rounds=4, edit=break_clients("hospital-b", "hospital-c"))
    )

    status = fedjobs.wait_for_phase(name, "Succeeded", "Failed", timeout=600)

    assert status["phase"] == "Failed", fedjobs.explain(name)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TooFewClients"
    assert "spec.strategy.minClients" in failed["message"]
    assert "hospital-b, hospital-c" in failed["message"]
    # cleanPodPolicy (default Running): the healthy client's and the aggregator's pods are
    # stopped, so a failed job holds no GPUs; the failed pods stay, for `kubectl logs`.
    fedjobs.cluster.wait_for(
        lambda: not active_pods(fedjobs, name) or None, 120, f"{name}'s pods to stop"
    )
    assert any(p.startswith(f"{name}-hospital-b-") for p in fedjobs.owned(name)["pods"])
    reasons = [r for r, _ in fedjobs.events(name)]
    assert reasons.count("ClientDropped") == 2
    assert reasons.count("TooFewClients") == 1


def test_a_client_whose_task_config_is_wrong_is_dropped_at_once_and_the_job_goes_on(
    fedjobs: FedJobs,
) -> None:
    name = "misconfigured"
    edit = change_clients("hospital-c", backoff_limit=3, taskConfig={"optimizer": "sgdd"})

    fedjobs.apply(fedjobs.example(name=name, rounds=3, edit=edit))

    status = fedjobs.wait_for_phase(name, "Succeeded", "Failed", timeout=600)

    # Its pods exit with the configuration-error code, the Job's podFailurePolicy fails the
    # Job at once, and the operator drops the client without spending its restart budget.
    assert_went_on_without(
        fedjobs, name, status, "hospital-c", restarts=0, because="configuration error (exit code 2)"
    )
    assert f"kubectl logs job/{name}-hospital-c" in status["clients"]["hospital-c"]["message"]
    reasons = [r for r, _ in fedjobs.events(name)]
    assert "ClientRestarted" not in reasons
    assert reasons.count("ClientDropped") == 1
    # What `kubectl logs` shows the user names the field and what it must be.
    pods = fedjobs.cluster.pods(
        fedjobs.namespace, f"fedkube.io/job={name},fedkube.io/client=hospital-c"
    )
    logs = "".join(fedjobs.cluster.pod_logs(fedjobs.namespace, p["metadata"]["name"]) for p in pods)
    assert "task.config.optimizer: must be one of 'sgd', 'adam', 'adamw'" in logs
