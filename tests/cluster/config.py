"""Typed settings of one test cluster: its nodes, its state folder, the kubelet's timings.

The daemon that runs a cluster (``python -m tests.cluster serve``) is a separate process from
whoever asked for it (``make cluster-up``, the pytest fixture), so the settings travel as
``config.json`` in the state folder: written by the launcher, read back by the daemon.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root: pods run with it as their default working directory."""

TEST_NODE_LABEL = "fedkube.io/test-node"
"""Every node of the process kubelet carries this label (value "true")."""


@dataclass(frozen=True)
class NodeSpec:
    """One fake node: what the scheduler sees. Pods bound to it run on this machine."""

    name: str
    cpu: str = "16"
    """Allocatable CPU (a Kubernetes quantity); nothing is enforced, the scheduler counts it."""
    memory: str = "64Gi"
    """Allocatable memory (a Kubernetes quantity); not enforced."""
    gpus: int = 4
    """``nvidia.com/gpu`` capacity, so GPU requests schedule (or stay Pending) as on a GPU node."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra node labels, added to ``kubernetes.io/hostname`` and the test-node label."""


DEFAULT_NODES = (NodeSpec("node-a"), NodeSpec("node-b"))


@dataclass(frozen=True)
class KubeletSettings:
    """Timings of the process kubelet, shorter than a real kubelet's so tests run fast."""

    restart_backoff_initial_s: float = 1.0
    """First delay before restarting a crashed container (a real kubelet waits 10 s)."""
    restart_backoff_max_s: float = 10.0
    """Cap of the doubling restart delay (a real kubelet caps at 300 s)."""
    lease_renew_s: float = 10.0
    """How often each node's Lease is renewed (as a real kubelet: 10 s)."""
    lease_duration_s: int = 40
    """Lease duration written into the Lease (as a real kubelet: 40 s)."""
    status_update_s: float = 20.0
    """How often each node's Ready condition heartbeat is refreshed."""
    volume_sync_s: float = 2.0
    """How often a running pod's Secret/ConfigMap volumes are compared with the API server and
    updated (a real kubelet: its sync period, about a minute, plus its cache's TTL)."""
    shutdown_grace_s: float = 3.0
    """When the cluster stops: seconds between SIGTERM and SIGKILL for every pod still running."""
    default_workdir: str = str(REPO_ROOT)
    """Working directory of containers without ``workingDir`` (the "image"'s WORKDIR)."""
    path_prefix: tuple[str, ...] = (str(REPO_ROOT / ".venv" / "bin"),)
    """Prepended to PATH in pods, so ``python``, ``fedkube``, ``torchrun`` are the repo's."""


@dataclass(frozen=True)
class ClusterConfig:
    """Everything the daemon needs to start one cluster."""

    state_dir: Path
    nodes: tuple[NodeSpec, ...] = DEFAULT_NODES
    kubelet: KubeletSettings = field(default_factory=KubeletSettings)
    ready_timeout_s: float = 120.0
    """Seconds the whole control plane gets to become healthy (about 15 s on 2 cores)."""
    parent_pid: int | None = None
    """When set, the cluster stops itself once this process is gone (a crashed pytest)."""
    audit_log: bool = False
    """Record every API request (who, from where, what) in ``logs/control-plane/audit.log``
    (``kube-apiserver --audit-log-path``, metadata level): how a test proves that nobody
    outside this cluster called its API server. Off by default: it costs a write per request."""
    extra_routes: tuple[str, ...] = ()
    """Host addresses (e.g. another cluster's bridge address, where a shared MinIO listens)
    that pods reach through this cluster's bridge: a /32 route each, delivered to this
    machine, never forwarded. Empty: pods reach only their own pod network."""
    real_nodes: tuple[str, ...] = ()
    """Nodes run by the real kubelet over containerd + runc + CNI (tests/cluster/realnode),
    joined once the process kubelet's nodes are Ready. Empty: none."""
    real_node_images: tuple[str, ...] = ()
    """Image archives (docker-archive or OCI) imported into every real node's containerd, e.g.
    what ``images/build.sh`` saved: pods on real nodes pull nothing."""

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.json"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        self.config_path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterConfig:
        data: dict[str, Any] = json.loads((state_dir / "config.json").read_text())
        kubelet = dict(data.get("kubelet", {}))
        if "path_prefix" in kubelet:
            kubelet["path_prefix"] = tuple(kubelet["path_prefix"])
        return cls(
            state_dir=Path(data["state_dir"]),
            nodes=tuple(NodeSpec(**n) for n in data.get("nodes", [])) or DEFAULT_NODES,
            kubelet=KubeletSettings(**kubelet),
            ready_timeout_s=float(data.get("ready_timeout_s", 120.0)),
            parent_pid=data.get("parent_pid"),
            audit_log=bool(data.get("audit_log", False)),
            extra_routes=tuple(data.get("extra_routes", ())),
            real_nodes=tuple(data.get("real_nodes", ())),
            real_node_images=tuple(data.get("real_node_images", ())),
        )
