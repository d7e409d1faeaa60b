"""The garbage collector removes what an owner owned, and the kubelet stops its processes."""

from __future__ import annotations

import psutil
import pytest

from tests.cluster.handle import HOST_IMAGE, ClusterHandle, container_pid, phase

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_deleting_a_job_removes_its_pods_and_stops_their_processes(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "sleeper"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": HOST_IMAGE, "command": ["sleep", "600"]}],
        }}},
    })  # fmt: skip
    pods = cluster.wait_for(
        lambda: [p for p in cluster.pods(namespace, "job-name=sleeper") if phase(p) == "Running"],
        120, "the Job's pod to run",
    )  # fmt: skip
    pid = container_pid(pods[0])

    cluster.batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Background")

    cluster.wait_for(lambda: not cluster.pods(namespace, "job-name=sleeper"), 90,
                     "the garbage collector to delete the Job's pods")  # fmt: skip
    assert not psutil.pid_exists(pid)
