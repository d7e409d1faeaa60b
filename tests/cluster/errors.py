"""Errors of the test cluster, one small hierarchy so callers can tell "skip" from "broken".

ClusterError
├── BinariesUnavailable   a pinned binary is not cached and its build failed
│   └── GoToolchainMissing  ... and cannot even be tried: no Go toolchain (tests skip)
├── ComponentFailed       a component exited or did not become healthy in time
└── NetworkError          an `ip` command failed (not root, no netns support, name clash)
"""

from __future__ import annotations


class ClusterError(Exception):
    """Something kept the test cluster from starting or stopping cleanly."""


class BinariesUnavailable(ClusterError):
    """The pinned binaries are not cached and cannot be built here (the message says why)."""


class GoToolchainMissing(BinariesUnavailable):
    """Binaries are missing and Go is not installed: the one reason e2e tests may skip."""


class ComponentFailed(ClusterError):
    """A control-plane component or the kubelet exited, or was not healthy in time."""


class NetworkError(ClusterError):
    """Setting up or tearing down the pod network failed."""
