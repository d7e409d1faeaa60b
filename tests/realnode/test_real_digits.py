"""The product on real containers: the chart installed with the built images, MinIO as a pod,
and a digits job run to Succeeded on the real node.

One job shows three things the process kubelet cannot: the operator and every job pod run
from the built images (imported, never pulled); a two-pod client group finds its rank 0
through cluster DNS (headless Service) and reaches the store through a ClusterIP Service;
and a client whose memory limit is too small is killed by the kernel (``OOMKilled``), which
restarts its group as the failure table in docs/cluster.md says, until the client is dropped
and the job goes on with the other two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.handle import ClusterHandle
from tests.cluster.realnode.node import RealNodes, placement
from tests.fixtures.images import BuiltImage
from tests.fixtures.operator import (
    CHART,
    OPERATOR_NAMESPACE,
    RELEASE,
    FedJobs,
    OperatorInstall,
)
from tests.realnode.minio_pod import MinioPod

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 3
OOM_CLIENT = "hospital-c"
OOM_LIMIT = "1Gi"
"""Room for the client's two Python processes with torch, not for its model: ``taskConfig``
gives it a hidden layer of ``OOM_HIDDEN`` (3.6 GB of float32), which it allocates and
initialises before it ever compares shapes with the global model. (A limit below what importing
torch takes is no test: the process then pages its libraries in and out without end.)"""
OOM_HIDDEN = 12_000_000


def _ref(image: BuiltImage) -> tuple[str, str]:
    """(repository, tag) of an image ref, as the chart's values want them."""
    repository, tag = image.ref.rsplit(":", 1)
    return repository.removeprefix("docker.io/"), tag


@pytest.fixture(scope="module")
def real_operator(
    cluster: ClusterHandle,
    real_nodes: RealNodes,
    fedkube_images: dict[str, BuiltImage],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorInstall]:
    """The chart with the built operator image, on the real node, images never pulled."""
    operator_repo, operator_tag = _ref(fedkube_images["operator"])
    runtime_repo, runtime_tag = _ref(fedkube_images["runtime"])
    values = {
        "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
        "runtimeImage": {"repository": runtime_repo, "tag": runtime_tag, "pullPolicy": "Never"},
        "reconcileIntervalSeconds": 2,
        **placement(),
    }
    values_file = tmp_path_factory.mktemp("chart") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cluster.run_helm(
        "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "-f", str(values_file), "--wait", "--timeout", "240s", timeout=300,
    )  # fmt: skip
    try:
        deployment = json.loads(cluster.run_kubectl(
            "get", "deployments", "-n", OPERATOR_NAMESPACE, "-o", "json",
            "-l", f"app.kubernetes.io/instance={RELEASE}").stdout)["items"][0]  # fmt: skip
        yield OperatorInstall(
            namespace=OPERATOR_NAMESPACE,
            deployment=deployment["metadata"]["name"],
            service_account=deployment["spec"]["template"]["spec"]["serviceAccountName"],
        )
    finally:
        cluster.run_helm(
            "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", check=False
        )


def on_real_nodes(obj: dict[str, Any]) -> None:
    """Every pod of the job on the real node; client C with too little memory for its model."""
    spec = obj["spec"]
    spec["rounds"] = ROUNDS
    spec["strategy"]["roundTimeoutSeconds"] = 120
    spec["runPolicy"]["backoffLimit"] = 1
    spec["aggregator"].update(placement())
    spec["aggregator"]["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    for client in spec["clients"]:
        client.update(placement())
        client["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
        if client["name"] != "hospital-a":
            client["replicas"] = 1
        if client["name"] == OOM_CLIENT:
            client["resources"] = {"limits": {"memory": OOM_LIMIT}}
            client["taskConfig"] = {"hidden": OOM_HIDDEN}


def oom_killed(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first pod whose container the kubelet reports ``OOMKilled`` (now or last run)."""
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or ():
            for state in (status.get("state", {}), status.get("lastState", {})):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    return pod
    return None


def test_digits_succeeds_on_real_containers_and_an_oom_killed_group_restarts(
    cluster: ClusterHandle,
    real_nodes: RealNodes,
    real_operator: OperatorInstall,
    minio_pod: MinioPod,
    namespace: str,
    tmp_path: Path,
) -> None:
    jobs = FedJobs(cluster, real_operator, minio_pod, namespace, tmp_path)

    def edit(obj: dict[str, Any]) -> None:
        obj["spec"]["storage"]["endpoint"] = minio_pod.service_url
        on_real_nodes(obj)

    jobs.apply(jobs.example(edit=edit))
    oom_pod = cluster.wait_for(
        lambda: oom_killed(cluster.pods(namespace, f"fedkube.io/client={OOM_CLIENT}")),
        300,
        f"a pod of {OOM_CLIENT} to be OOMKilled",
    )
    status = jobs.wait_for_phase("digits", "Succeeded", "Failed", timeout=720)

    assert status["phase"] == "Succeeded", jobs.explain("digits")
    assert status["currentRound"] == ROUNDS
    oom = status["clients"][OOM_CLIENT]
    assert oom["restarts"] >= 1, jobs.explain("digits")
    assert oom["phase"] == "Dropped"
    reasons = [reason for reason, message in jobs.events("digits") if OOM_CLIENT in message]
    assert "ClientRestarted" in reasons
    assert "ClientDropped" in reasons
    assert oom_pod["spec"]["nodeName"] in real_nodes.names
    pods = cluster.pods(namespace, "fedkube.io/job=digits")
    assert pods
    assert {p["spec"]["nodeName"] for p in pods} <= set(real_nodes.names)
    assert jobs.committed_rounds("digits")[-1] == ROUNDS
