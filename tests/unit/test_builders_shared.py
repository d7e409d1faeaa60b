"""Names, the job-file ConfigMap, key Secrets and headless Services."""

from __future__ import annotations

import base64
import json

import pytest

from fedcore.commit_signing import generate_key_pair, signer_from_pem, verifier_from_pem
from fedcore.spec import ClientSpec, job_prefix, parse_job
from fedop.builders import configmap, names, secrets, services
from tests.fixtures.fedjobs import COMMIT_PUBLIC_PEM, JOB, make_job, make_spec


def test_child_names_follow_the_operator_contract() -> None:
    assert names.spec_configmap(JOB) == "digits-spec"
    assert names.key_secret(JOB, "a") == "digits-a-key"
    assert names.client_service(JOB, "a") == names.client_job(JOB, "a") == "digits-a"
    assert names.aggregator_job(JOB) == "digits-aggregator"
    assert names.commit_key_secret(JOB) == "digits-commit-key"


@pytest.mark.parametrize(
    ("job_name", "clients", "field"),
    [
        pytest.param(
            "digits",
            [{"name": "aggregator"}],
            "spec.clients[0].name",
            id="a client named aggregator would take the aggregator's Job",
        ),
        pytest.param(
            "digits",
            [{"name": "commit"}],
            "spec.clients[0].name",
            id="a client named commit would take the commit key Secret (and mount it)",
        ),
        pytest.param(
            "d" * 41,
            [{"name": "c" * 20, "replicas": 10}],
            "spec.clients[0].name",
            id="pod host names longer than 63 characters are refused",
        ),
        pytest.param(
            "9lives",
            [{"name": "a"}],
            "metadata.name",
            id="a job name starting with a digit cannot prefix a Service",
        ),
    ],
)
def test_names_that_break_kubernetes_limits_are_refused(
    job_name: str, clients: list[dict[str, object]], field: str
) -> None:
    ref = names.JobRef(job_name, "ns", "uid")
    # Built unchecked: the spec models refuse some of these themselves; the operator must too.
    spec = make_spec().model_copy(
        update={"clients": [ClientSpec.model_construct(**c) for c in clients]}
    )

    problems = dict(names.check_names(ref, spec))

    assert field in problems


def test_names_of_the_example_fit() -> None:
    assert names.check_names(JOB, make_spec()) == []


def test_job_file_is_the_whole_federated_job_the_runtime_loads() -> None:
    spec = make_spec()

    text = configmap.spec_configmap(JOB, spec, COMMIT_PUBLIC_PEM)["data"]["job.json"]
    loaded = parse_job(json.loads(text))

    assert loaded.metadata.uid == JOB.uid
    assert loaded.metadata.namespace == "team-a"
    assert loaded.spec == spec
    assert job_prefix(loaded) == job_prefix(make_job(spec))


def test_job_file_bytes_depend_only_on_the_spec() -> None:
    first = configmap.job_file_text(JOB, make_spec())
    second = configmap.job_file_text(JOB, make_spec())
    changed = configmap.job_file_text(JOB, make_spec(rounds=4))

    assert first == second != changed


def test_key_secret_holds_the_key_as_text_and_is_immutable() -> None:
    secret = secrets.key_secret(JOB, "a", "ff" * 32)

    assert base64.b64decode(secret["data"]["key"]).decode() == "ff" * 32
    assert secret["immutable"] is True
    assert secret["metadata"]["labels"][names.LABEL_CLIENT] == "a"


def test_configmap_carries_the_commit_public_key_next_to_the_job_file() -> None:
    data = configmap.spec_configmap(JOB, make_spec(), COMMIT_PUBLIC_PEM)["data"]

    assert set(data) == {"job.json", "commit-public-key.pem"}
    assert verifier_from_pem(data["commit-public-key.pem"].encode()).fingerprint == (
        verifier_from_pem(COMMIT_PUBLIC_PEM.encode()).fingerprint
    )


def test_commit_key_secret_holds_the_pair_and_announces_only_the_public_half() -> None:
    private, public = generate_key_pair()

    secret = secrets.commit_key_secret(JOB, private, public)

    assert secret["metadata"]["name"] == "digits-commit-key"
    assert secret["immutable"] is True
    assert secret["metadata"]["labels"][names.LABEL_ROLE] == "aggregator"
    assert secret["metadata"]["ownerReferences"] == [names.owner_reference(JOB)]
    signer = signer_from_pem(base64.b64decode(secret["data"]["private.pem"]))
    assert base64.b64decode(secret["data"]["public.pem"]) == public
    assert secret["metadata"]["annotations"] == {
        names.ANNOTATION_COMMIT_PUBLIC_KEY: public.decode()
    }
    assert signer.public.public_pem() == public
    assert "PRIVATE" not in json.dumps(secret["metadata"])


def test_client_service_is_headless_and_publishes_pods_before_they_are_ready() -> None:
    service = services.client_service(JOB, "b", 29500)

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        names.LABEL_MANAGED_BY: "fedkube",
        names.LABEL_JOB: "digits",
        names.LABEL_ROLE: "client",
        names.LABEL_CLIENT: "b",
    }
