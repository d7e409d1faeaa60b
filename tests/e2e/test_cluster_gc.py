"""Owners take what they own with them: the garbage collector removes a Job's pods, the
namespace controller a namespace's, and the process kubelet stops their processes."""

from __future__ import annotations

import psutil
import pytest
from kubernetes import client

from tests.cluster.handle import HOST_IMAGE, ClusterHandle, container_pid, make_pod, phase

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


def test_deleting_a_namespace_removes_its_pods_and_then_the_namespace(
    cluster: ClusterHandle,
) -> None:
    namespace = cluster.create_namespace("doomed")
    cluster.create_pod(namespace, make_pod("resident", ["sleep", "600"]))
    pid = container_pid(cluster.wait_for_phase(namespace, "resident", "Running"))

    cluster.delete_namespace(namespace)

    def namespace_gone() -> bool:
        try:
            cluster.core.read_namespace(namespace)
        except client.ApiException as e:
            return bool(e.status == 404)
        return False

    cluster.wait_for(namespace_gone, 120, f"namespace {namespace} to be finalized")
    assert not psutil.pid_exists(pid)
