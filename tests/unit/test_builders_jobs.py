"""Client and aggregator Jobs: the operator contract's shape, from the spec alone."""

from __future__ import annotations

from typing import Any

import pytest

from fedop.builders import jobs, names
from tests.fixtures.fedjobs import JOB, SETTINGS, make_spec


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def client_job(name: str = "a", **spec_overrides: Any) -> dict[str, Any]:
    spec = make_spec(**spec_overrides)
    return jobs.client_job(JOB, spec, spec.client(name), SETTINGS)


def test_client_job_is_indexed_with_one_pod_per_replica_and_no_retries() -> None:
    job = client_job(clients=[{"name": "a", "replicas": 4}])

    assert job["metadata"]["name"] == "digits-a"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["backoffLimit"] == 0  # the operator restarts the group as a whole
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_client_pods_get_torchrun_environment_with_rank_from_completion_index() -> None:
    env = env_of(client_job(clients=[{"name": "a", "replicas": 2, "procsPerReplica": 3}]))

    assert env["PET_NNODES"] == "2"
    assert env["PET_NPROC_PER_NODE"] == "3"
    assert env["PET_NODE_RANK"] == {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    assert env["PET_MASTER_ADDR"] == "digits-a-0.digits-a"
    assert env["PET_MASTER_PORT"] == "29500"


def test_client_pods_live_under_their_headless_service_so_rank_zero_resolves() -> None:
    pod = client_job()["spec"]["template"]["spec"]

    assert pod["subdomain"] == names.client_service(JOB, "a")
    assert names.master_addr(JOB, "a").startswith(f"{names.client_job(JOB, 'a')}-0.")


def test_client_pod_runs_the_client_command_on_the_mounted_job_file() -> None:
    container = client_job("b")["spec"]["template"]["spec"]["containers"][0]

    assert container["command"] == [
        "fedkube",
        "client",
        "--job",
        "/etc/fedkube/job.json",
        "--client",
        "b",
    ]
    assert {"name": "fedkube-job", "mountPath": "/etc/fedkube", "readOnly": True} in (
        container["volumeMounts"]
    )


def test_restart_count_travels_on_the_recreated_job() -> None:
    spec = make_spec()

    job = jobs.client_job(JOB, spec, spec.client("a"), SETTINGS, restarts=2)

    assert job["metadata"]["annotations"][names.ANNOTATION_RESTARTS] == "2"


@pytest.mark.parametrize("suspend", [True, False], ids=["suspended", "running"])
def test_jobs_are_created_suspended_exactly_when_the_federated_job_is(suspend: bool) -> None:
    spec = make_spec()

    client = jobs.client_job(JOB, spec, spec.client("a"), SETTINGS, suspend=suspend)
    aggregator = jobs.aggregator_job(JOB, spec, SETTINGS, suspend=suspend)

    assert client["spec"]["suspend"] is suspend
    assert aggregator["spec"]["suspend"] is suspend


def test_aggregator_job_retries_within_the_jobs_backoff_limit_one_pod_at_a_time() -> None:
    spec = make_spec(runPolicy={"backoffLimit": 5})

    job = jobs.aggregator_job(JOB, spec, SETTINGS)

    assert job["metadata"]["name"] == "digits-aggregator"
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "fedkube",
        "aggregator",
        "--job",
        "/etc/fedkube/job.json",
    ]


def test_a_pod_exiting_with_a_configuration_error_fails_its_job_without_a_retry() -> None:
    spec = make_spec()

    built = [
        jobs.client_job(JOB, spec, spec.clients[0], SETTINGS),
        jobs.aggregator_job(JOB, spec, SETTINGS),
    ]

    for job in built:
        container = job["spec"]["template"]["spec"]["containers"][0]["name"]
        assert job["spec"]["podFailurePolicy"] == {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": container, "operator": "In", "values": [2]},
                }
            ]
        }
        # The Job API allows podFailurePolicy only with restartPolicy Never.
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_every_job_is_owned_by_the_federated_job_and_labelled_for_its_role() -> None:
    spec = make_spec()

    built = [
        jobs.client_job(JOB, spec, spec.client("c"), SETTINGS),
        jobs.aggregator_job(JOB, spec, SETTINGS),
    ]

    for job in built:
        (owner,) = job["metadata"]["ownerReferences"]
        assert owner["uid"] == JOB.uid
        assert owner["controller"] is True
        assert owner["kind"] == "FederatedJob"
        assert job["metadata"]["labels"][names.LABEL_JOB] == "digits"
    assert built[0]["metadata"]["labels"][names.LABEL_CLIENT] == "c"
    assert built[0]["spec"]["template"]["metadata"]["labels"][names.LABEL_ROLE] == "client"
    assert built[1]["spec"]["template"]["metadata"]["labels"][names.LABEL_ROLE] == "aggregator"


def test_same_spec_builds_identical_jobs() -> None:
    assert client_job() == client_job()
