"""Finds the pinned etcd, Kubernetes and helm binaries in the fedkube cache, building if needed.

``build-binaries.sh`` owns building; this module only reads ``versions.env`` to know which
versioned folders must exist, so a cached cluster starts without the Go toolchain and a pin
change is noticed (the old folder no longer matches).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.errors import BinariesUnavailable, GoToolchainMissing

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-binaries.sh"
VERSIONS_FILE = HERE / "versions.env"

CLUSTER_COMPONENTS = ("etcd", "kubernetes", "helm")
"""What a cluster needs (MinIO and mc are the store's, built on their own)."""

REAL_NODE_COMPONENTS = ("kubernetes-node", "cni", "coredns")
"""What real nodes add (tests/cluster/realnode): kubelet, kube-proxy, CNI plugins and CoreDNS
(their cluster DNS)."""

_PIN_VARIABLE = {
    "etcd": "ETCD_VERSION",
    "kubernetes": "KUBERNETES_VERSION",
    "helm": "HELM_VERSION",
    "minio": "MINIO_VERSION",
    "mc": "MC_VERSION",
    "prometheus": "PROMETHEUS_VERSION",
    "kubernetes-node": "KUBERNETES_VERSION",
    "cni": "CNI_PLUGINS_VERSION",
    "coredns": "COREDNS_VERSION",
}
_EXECUTABLES = {
    "etcd": ("etcd",),
    "kubernetes": ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    "helm": ("helm",),
    "minio": ("minio",),
    "mc": ("mc",),
    "prometheus": ("prometheus",),
    "kubernetes-node": ("kubelet", "kube-proxy"),
    "cni": ("bridge", "host-local", "loopback", "portmap"),
    "coredns": ("coredns",),
}


def cache_root() -> Path:
    """``${FEDKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedkube}``, as the build script."""
    if os.environ.get("FEDKUBE_CACHE"):
        return Path(os.environ["FEDKUBE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fedkube"


def pins(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Component name -> pinned version, from ``versions.env`` (``NAME=value`` lines)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return {name: values[var] for name, var in _PIN_VARIABLE.items() if var in values}


@dataclass(frozen=True)
class Binaries:
    """Paths of the pinned executables (the versioned folders, never the moving symlinks)."""

    bin_root: Path
    versions: dict[str, str]

    def component_dir(self, component: str) -> Path:
        return self.bin_root / f"{component}-{self.versions[component]}"

    def path(self, executable: str) -> Path:
        for component, names in _EXECUTABLES.items():
            if executable in names:
                return self.component_dir(component) / executable
        raise KeyError(f"unknown executable {executable!r}")

    def path_dirs(self, components: tuple[str, ...] = CLUSTER_COMPONENTS) -> list[Path]:
        """Folders to put on PATH so ``kubectl``, ``helm`` and ``etcd`` resolve."""
        return [self.component_dir(c) for c in components]

    def missing(self, components: tuple[str, ...]) -> list[str]:
        return [c for c in components if not (self.component_dir(c) / ".complete").is_file()]


def locate() -> Binaries:
    return Binaries(bin_root=cache_root() / "bin", versions=pins())


def ensure(components: tuple[str, ...] = CLUSTER_COMPONENTS) -> Binaries:
    """The binaries of ``components``, built first when not cached.

    Raises ``GoToolchainMissing`` when something must be built and Go is not installed, and
    ``BinariesUnavailable`` when the build fails (its progress and errors go to stderr).
    """
    bins = locate()
    missing = bins.missing(components)
    if not missing:
        return bins
    if shutil.which("go") is None:
        raise GoToolchainMissing(
            f"{', '.join(missing)} not built in {bins.bin_root} and the Go toolchain is not "
            "installed; the e2e tests need a real control plane (this skip is meant for "
            "laptops without Go). Install Go >= 1.26 and run `make binaries`"
        )
    result = subprocess.run([str(BUILD_SCRIPT), *missing], stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or bins.missing(components):
        raise BinariesUnavailable(
            f"building {', '.join(missing)} failed (exit {result.returncode}); "
            f"rerun `{BUILD_SCRIPT.name} {' '.join(missing)}` to see why"
        )
    return bins
