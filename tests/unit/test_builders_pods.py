"""Pod templates: environment ownership, GPUs, key mounts and the hardened security context."""

from __future__ import annotations

from typing import Any

import pytest

from fedop.builders import pods
from tests.fixtures.fedjobs import JOB, SETTINGS, make_spec


def client_pod(name: str = "a", **spec_overrides: Any) -> dict[str, Any]:
    spec = make_spec(**spec_overrides)
    pod: dict[str, Any] = pods.client_pod_template(JOB, spec, spec.client(name), SETTINGS)["spec"]
    return pod


def aggregator_pod(**spec_overrides: Any) -> dict[str, Any]:
    pod: dict[str, Any] = pods.aggregator_pod_template(JOB, make_spec(**spec_overrides), SETTINGS)[
        "spec"
    ]
    return pod


def env_names(pod: dict[str, Any]) -> list[str]:
    return [e["name"] for e in pod["containers"][0]["env"]]


def test_gpu_client_requests_one_gpu_per_process() -> None:
    pod = client_pod(
        clients=[
            {
                "name": "a",
                "procsPerReplica": 4,
                "gpu": True,
                "resources": {"limits": {"memory": "8Gi"}},
            }
        ]
    )

    resources = pod["containers"][0]["resources"]

    assert resources["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "4"}
    assert resources["requests"] == {"nvidia.com/gpu": "4"}
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])


def test_cpu_client_requests_no_gpu() -> None:
    pod = client_pod(clients=[{"name": "a", "procsPerReplica": 2}])

    assert "nvidia.com/gpu" not in str(pod["containers"][0].get("resources", {}))


def test_client_pod_mounts_only_its_own_signing_key() -> None:
    pod = client_pod("b")

    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}

    assert secrets == ["digits-b-key", "digits-b-store"]
    assert env["FEDKUBE_SIGNING_KEY_FILE"] == f"{pods.SIGNING_KEY_DIR}/key"


def test_aggregator_mounts_every_clients_key_as_a_file_named_after_the_client() -> None:
    pod = aggregator_pod()

    (keys,) = [v for v in pod["volumes"] if "projected" in v]
    files = {
        s["secret"]["name"]: s["secret"]["items"][0]["path"] for s in keys["projected"]["sources"]
    }
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}

    assert files == {"digits-a-key": "a", "digits-b-key": "b", "digits-c-key": "c"}
    assert env["FEDKUBE_SIGNING_KEYS_DIR"] == pods.SIGNING_KEYS_DIR


def mounted_files(pod: dict[str, Any], mount_dir: str) -> dict[str, tuple[str, str]]:
    """File path under a mount -> (kind/name of the source object, its data key)."""
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == mount_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if "configMap" in volume:
        source = f"ConfigMap/{volume['configMap']['name']}"
        items = volume["configMap"]["items"]
    else:
        source = f"Secret/{volume['secret']['secretName']}"
        items = volume["secret"]["items"]
    return {f"{mount_dir}/{i['path']}": (source, i["key"]) for i in items}


@pytest.mark.parametrize("which", ["a", "c", "aggregator"])
def test_every_pod_reads_the_commit_public_key_from_the_job_configmap(which: str) -> None:
    pod = aggregator_pod() if which == "aggregator" else client_pod(which)

    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    path = env["FEDKUBE_COMMIT_PUBLIC_KEY_FILE"]

    assert mounted_files(pod, "/etc/fedkube")[path] == (
        "ConfigMap/digits-spec",
        "commit-public-key.pem",
    )


def test_only_the_aggregator_mounts_the_commit_signing_key() -> None:
    aggregator = aggregator_pod()
    clients = [client_pod(c) for c in "abc"]

    env = {e["name"]: e.get("value") for e in aggregator["containers"][0]["env"]}

    assert mounted_files(aggregator, pods.COMMIT_KEY_DIR) == {
        env["FEDKUBE_COMMIT_KEY_FILE"]: ("Secret/digits-commit-key", "private.pem")
    }
    for pod in clients:
        assert "digits-commit-key" not in str(pod["volumes"])
        assert "FEDKUBE_COMMIT_KEY_FILE" not in env_names(pod)


def test_shared_store_credentials_come_from_the_named_secret_keys() -> None:
    pod = client_pod(
        storage={
            "endpoint": "http://s3:9000",
            "credentials": "shared",
            "secretRef": {
                "name": "creds",
                "accessKeyIdKey": "user",
                "secretAccessKeyKey": "password",
            },
        }
    )

    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in pod["containers"][0]["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }

    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "creds", "key": "user"},
        "AWS_SECRET_ACCESS_KEY": {"name": "creds", "key": "password"},
    }


def test_user_env_follows_the_operators_so_it_can_refer_to_it() -> None:
    pod = client_pod(
        clients=[
            {
                "name": "a",
                "env": [
                    {"name": "DATA", "value": "/data/$(PET_NODE_RANK)"},
                    {"name": "HOME", "value": "/h"},
                ],
            }
        ]
    )

    order = env_names(pod)

    assert order.index("DATA") > order.index("PET_NODE_RANK")
    assert order.count("HOME") == 1  # the user's HOME replaces the default


@pytest.mark.parametrize("build", [client_pod, aggregator_pod], ids=["client", "aggregator"])
def test_pods_run_hardened(build: Any) -> None:
    pod = build()
    container = pod["containers"][0]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp
    assert any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in pod["volumes"])


def test_client_scheduling_and_data_volumes_pass_through() -> None:
    pod = client_pod(
        clients=[
            {
                "name": "a",
                "nodeSelector": {"site": "a"},
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "a-data"}}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ]
    )

    assert pod["nodeSelector"] == {"site": "a"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "a-data"}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]


def test_image_defaults_to_the_operators_runtime_image() -> None:
    assert client_pod()["containers"][0]["image"] == SETTINGS.runtime_image
    assert client_pod(image="reg/x:1")["containers"][0]["image"] == "reg/x:1"


def test_aggregator_serves_metrics_on_a_named_port_its_env_names() -> None:
    pod = aggregator_pod()

    container = pod["containers"][0]
    assert container["ports"] == [
        {"name": "metrics", "containerPort": pods.AGGREGATOR_METRICS_PORT}
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FEDKUBE_METRICS_PORT"] == str(pods.AGGREGATOR_METRICS_PORT)


def scratch_volume(pod: dict[str, Any]) -> dict[str, Any]:
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp")
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])


def test_aggregator_scratch_volume_is_bounded_by_scratch_size_limit() -> None:
    pod = aggregator_pod(aggregator={"accumulator": "disk", "scratchSizeLimit": "200Gi"})

    assert scratch_volume(pod)["emptyDir"] == {"sizeLimit": "200Gi"}


def test_aggregator_scratch_volume_has_no_limit_by_default() -> None:
    assert scratch_volume(aggregator_pod())["emptyDir"] == {}
