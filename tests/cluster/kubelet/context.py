"""What every pod worker shares: the API, the pod network, hosts files, logs, settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.config import KubeletSettings
from tests.cluster.kubelet.container import MountPoints
from tests.cluster.kubelet.hosts import HostsTable
from tests.cluster.kubelet.refs import RefLookup
from tests.cluster.kubelet.volumes import TokenSource
from tests.cluster.logs import LogStore
from tests.cluster.network import PodNetwork
from tests.cluster.rest import Rest


@dataclass(frozen=True)
class PodContext:
    api: Rest
    network: PodNetwork
    hosts: HostsTable
    lookup: RefLookup
    tokens: TokenSource
    mountpoints: MountPoints
    logs: LogStore
    settings: KubeletSettings
    pods_dir: Path
    host_ip: str
    base_env: dict[str, str]
    """The "image" environment: PATH with the repo's .venv first, locale, PYTHONPATH."""
    service_env: dict[str, str]
    """KUBERNETES_SERVICE_HOST/PORT & co., pointing at the API server on the bridge."""
    allocatable: dict[str, dict[str, str]]
    """Node name -> allocatable resources (for resourceFieldRef without limits)."""
    forget: Callable[[str], None]
    """Called with the pod UID when its worker has finished for good."""
