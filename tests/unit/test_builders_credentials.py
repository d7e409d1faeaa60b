"""Per-role store credentials in pods: with scoped credentials each role mounts only its own
minted Secret and nothing of the job's credential; with shared ones pods get the job's."""

from __future__ import annotations

import base64
import json
from typing import Any

from fedop.builders import credentials, pods
from tests.fixtures.fedjobs import JOB, SETTINGS, T0, make_spec

SHARED = {"endpoint": "http://s3:9000", "secretRef": {"name": "s3-creds"}, "credentials": "shared"}


def client_pod(name: str = "a", **spec_overrides: Any) -> dict[str, Any]:
    spec = make_spec(**spec_overrides)
    pod: dict[str, Any] = pods.client_pod_template(JOB, spec, spec.client(name), SETTINGS)["spec"]
    return pod


def aggregator_pod(**spec_overrides: Any) -> dict[str, Any]:
    spec = make_spec(**spec_overrides)
    pod: dict[str, Any] = pods.aggregator_pod_template(JOB, spec, SETTINGS)["spec"]
    return pod


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


def secrets_used(pod: dict[str, Any]) -> set[str]:
    """Every Secret the pod reads, through env or volumes."""
    found = set()
    for item in pod["containers"][0]["env"]:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            found.add(ref["name"])
    for volume in pod["volumes"]:
        if "secret" in volume:
            found.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources", []):
            if "secret" in source:
                found.add(source["secret"]["name"])
    return found


def test_scoped_client_pod_mounts_only_its_own_store_credentials() -> None:
    pod = client_pod("b")

    assert secrets_used(pod) == {"digits-b-key", "digits-b-store"}
    assert env(pod)["FEDKUBE_STORE_CREDENTIALS_FILE"] == "/var/run/fedkube/store/credentials.json"
    assert not [name for name in env(pod) if name.startswith("AWS_")]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == credentials.VOLUME)
    assert mount == {
        "name": credentials.VOLUME,
        "mountPath": "/var/run/fedkube/store",
        "readOnly": True,
    }


def test_scoped_aggregator_pod_mounts_the_aggregator_credentials_not_the_jobs() -> None:
    pod = aggregator_pod()

    assert "digits-aggregator-store" in secrets_used(pod)
    assert "s3-creds" not in secrets_used(pod)
    assert "digits-a-store" not in secrets_used(pod)
    assert env(pod)["FEDKUBE_STORE_CREDENTIALS_FILE"] == credentials.CREDENTIALS_FILE


def test_shared_pods_get_the_jobs_credential_and_no_minted_file() -> None:
    client, aggregator = client_pod(storage=SHARED), aggregator_pod(storage=SHARED)

    for pod in (client, aggregator):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env(pod).keys()
        assert "FEDKUBE_STORE_CREDENTIALS_FILE" not in env(pod)
        assert not any(v["name"] == credentials.VOLUME for v in pod["volumes"])
    assert "s3-creds" in secrets_used(client)


def test_role_secrets_are_named_per_role_and_one_per_client() -> None:
    spec = make_spec()

    assert [credentials.secret_name(JOB, r) for r in credentials.roles(spec)] == [
        "digits-aggregator-store",
        "digits-a-store",
        "digits-b-store",
        "digits-c-store",
    ]


def test_store_secret_holds_the_file_and_when_it_was_minted_and_expires() -> None:
    text = json.dumps({"accessKeyId": "AK", "expiration": "2025-01-01T13:00:00Z"})

    secret = credentials.store_secret(
        JOB,
        credentials.client_role("a"),
        text,
        minted_at=T0,
        expires_at=T0.replace(hour=13),
        rotations=2,
    )

    assert secret["metadata"]["name"] == "digits-a-store"
    assert secret["metadata"]["labels"]["fedkube.io/client"] == "a"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    assert base64.b64decode(secret["data"]["credentials.json"]).decode() == text
    assert secret["metadata"]["annotations"] == {
        credentials.ANNOTATION_MINTED_AT: "2025-01-01T12:00:00Z",
        credentials.ANNOTATION_EXPIRES_AT: "2025-01-01T13:00:00Z",
        credentials.ANNOTATION_ROTATIONS: "2",
    }
    assert "immutable" not in secret  # rotation overwrites it
