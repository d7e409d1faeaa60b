"""Real containers on a real kubelet: what the process kubelet cannot show.

MinIO runs as a pod (image imported, never pulled) behind a ClusterIP Service that another
pod reaches by name (cluster DNS) through kube-proxy's rules; a container that exceeds its
memory limit is killed by the kernel (cgroup limit set by runc) and reported ``OOMKilled`` by
the kubelet, then restarted. The FederatedJob on these nodes is in test_real_digits.py; all
of them share one real node and one MinIO pod (session fixtures: tests/fixtures/realnode.py,
conftest.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.handle import ClusterHandle, phase
from tests.cluster.realnode.images import TOOLS_IMAGE
from tests.cluster.realnode.node import RealNodes, placement
from tests.realnode.minio_pod import MinioPod

pytestmark = pytest.mark.timeout(300)


def tools_pod(name: str, args: list[str], **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **placement(),
            "restartPolicy": container.pop("restartPolicy", "Never"),
            "containers": [
                {
                    "name": "main",
                    "image": TOOLS_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/fktools", *args],
                    **container,
                }
            ],
        },
    }


def test_a_pod_reaches_minio_by_its_service_name_and_cluster_ip(
    cluster: ClusterHandle, real_nodes: RealNodes, minio_pod: MinioPod, namespace: str
) -> None:
    # minio.<ns>.svc.cluster.local: cluster DNS (CoreDNS) gives the ClusterIP, kube-proxy's
    # rules send the connection on to the MinIO pod.
    url = f"{minio_pod.service_url}/minio/health/ready"
    cluster.create_pod(namespace, tools_pod("get", ["get", url], restartPolicy="OnFailure"))

    pod = cluster.wait_for_phase(namespace, "get", "Succeeded", "Failed", timeout=120)

    logs = cluster.run_kubectl("logs", "-n", namespace, "get", check=False).stdout
    assert phase(pod) == "Succeeded", logs
    assert pod["spec"]["nodeName"] in real_nodes.names
    assert "200 OK" in logs


def test_a_container_over_its_memory_limit_is_oom_killed_and_restarted(
    cluster: ClusterHandle, real_nodes: RealNodes, namespace: str
) -> None:
    limits = {"limits": {"memory": "32Mi", "cpu": "200m"}}
    cluster.create_pod(
        namespace, tools_pod("hog", ["memhog", "256"], restartPolicy="Always", resources=limits)
    )

    def oom_restarted(pod: dict[str, Any]) -> bool:
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        last = statuses[0].get("lastState", {}).get("terminated") or {}
        return bool(last.get("reason") == "OOMKilled" and statuses[0].get("restartCount", 0) >= 1)

    pod = cluster.wait_for_pod(
        namespace, "hog", oom_restarted, "to be OOMKilled and restarted", timeout=120
    )

    status = pod["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert pod["spec"]["nodeName"] in real_nodes.names
