"""Node objects of the process kubelet: registration, capacity, Ready heartbeat, Lease.

The node lifecycle controller marks a node NotReady (and later evicts its pods) when its
Lease in ``kube-node-lease`` is not renewed within the grace period (40 s by default), so
leases are renewed every 10 s, and the Ready condition's heartbeat is refreshed too.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
from typing import Any

from tests.cluster.config import TEST_NODE_LABEL, NodeSpec
from tests.cluster.kubelet.status import now
from tests.cluster.rest import ApiError, Rest

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.34.4-fedkube-process"


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def allocatable(spec: NodeSpec) -> dict[str, str]:
    return {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": "110",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": str(spec.gpus),
    }


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        TEST_NODE_LABEL: "true",
        **spec.labels,
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": spec.name, "labels": labels}}


def _conditions(heartbeat: str, transition: str) -> list[dict[str, Any]]:
    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": transition,
        }

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
        cond("Ready", "True", "KubeletReady", "fedkube process kubelet is posting ready status"),
    ]


def node_status(spec: NodeSpec, address: str, port: int, transition: str) -> dict[str, Any]:
    resources = allocatable(spec)
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": _conditions(now(), transition),
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": spec.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": spec.name,
            "systemUUID": spec.name,
            "bootID": spec.name,
            "kernelVersion": platform.release(),
            "osImage": "fedkube process kubelet (host environment)",
            "containerRuntimeVersion": "fedkube-process://0.1",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


class NodeAgent:
    def __init__(self, api: Rest, spec: NodeSpec, address: str, port: int, lease_s: int) -> None:
        self.api = api
        self.spec = spec
        self.address = address
        self.port = port
        self.lease_s = lease_s
        self._transition = now()
        self._uid = ""

    @property
    def _path(self) -> str:
        return f"/api/v1/nodes/{self.spec.name}"

    def register(self) -> None:
        try:
            node = self.api.post("/api/v1/nodes", node_manifest(self.spec))
        except ApiError as e:
            if e.status != 409:
                raise
            node = self.api.patch(self._path, {"metadata": node_manifest(self.spec)["metadata"]})
        self._uid = node["metadata"]["uid"]
        self.api.patch(
            self._path + "/status",
            {"status": node_status(self.spec, self.address, self.port, self._transition)},
        )
        self.renew_lease()

    def heartbeat(self) -> None:
        """Refresh the Ready condition (and the rest of the status, which is cheap)."""
        self.api.patch(
            self._path + "/status",
            {"status": {"conditions": _conditions(now(), self._transition)}},
        )

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.spec.name}"
        spec = {
            "holderIdentity": self.spec.name,
            "leaseDurationSeconds": self.lease_s,
            "renewTime": _micro_now(),
        }
        try:
            self.api.patch(path, {"spec": spec}, content_type="application/merge-patch+json")
        except ApiError as e:
            if e.status != 404:
                raise
            self.api.post(
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.spec.name,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.spec.name,
                                "uid": self._uid,
                            }
                        ],
                    },
                    "spec": spec,
                },
            )
