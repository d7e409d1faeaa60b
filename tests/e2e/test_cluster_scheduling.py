"""The real scheduler places pods by the nodes' capacity, ``nvidia.com/gpu`` included."""

from __future__ import annotations

import pytest

from tests.cluster.handle import ClusterHandle, make_pod, phase

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _gpu_pod(name: str, gpus: int) -> dict[str, object]:
    return make_pod(
        name, ["python", "-c", "print('scheduled')"],
        container={"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
    )  # fmt: skip


def test_pod_asking_for_more_gpus_than_any_node_has_stays_unschedulable(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.create_pod(namespace, _gpu_pod("too-big", 8))
    cluster.create_pod(namespace, _gpu_pod("fits", 2))

    fits = cluster.wait_for_phase(namespace, "fits", "Succeeded", "Failed")
    too_big = cluster.wait_for_pod(
        namespace, "too-big",
        lambda p: any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                      for c in p.get("status", {}).get("conditions", [])),
        "to be marked Unschedulable",
    )  # fmt: skip

    assert phase(fits) == "Succeeded"
    assert fits["spec"]["nodeName"] in cluster.nodes
    assert phase(too_big) == "Pending"
    assert "nodeName" not in too_big["spec"]
    scheduled = next(c for c in too_big["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
