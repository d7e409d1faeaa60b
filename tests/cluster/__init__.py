"""A real Kubernetes control plane for tests, without Docker.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built from their Go modules
by ``build-binaries.sh``) run as local processes; a process kubelet registers fake nodes and
runs their pods as local processes, each in its own network namespace. ``make cluster-up`` /
``python -m tests.cluster up`` starts one in the background; tests use the ``cluster`` fixture
(tests/e2e/conftest.py), which uses ``start``/``ClusterHandle`` from here.
"""

from tests.cluster.config import ClusterConfig, KubeletSettings, NodeSpec
from tests.cluster.errors import (
    BinariesUnavailable,
    ClusterError,
    ComponentFailed,
    GoToolchainMissing,
    NetworkError,
)
from tests.cluster.launcher import ClusterInfo, Started, running, start, stop

__all__ = [
    "BinariesUnavailable",
    "ClusterConfig",
    "ClusterError",
    "ClusterInfo",
    "ComponentFailed",
    "GoToolchainMissing",
    "KubeletSettings",
    "NetworkError",
    "NodeSpec",
    "Started",
    "running",
    "start",
    "stop",
]
