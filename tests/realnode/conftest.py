"""The real-node lane: its own pytest session (``make test-realnode``), on its own cluster.

It runs apart from tests/e2e because it installs the chart with the built images, and the
e2e session's operator (installed cluster-wide from the checkout) would otherwise handle its
jobs too. The ``cluster`` and ``namespace`` fixtures are the e2e ones; ``real_nodes`` adds a
real-kubelet node to that cluster (tests/fixtures/realnode.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.handle import ClusterHandle
from tests.cluster.realnode.node import RealNodes
from tests.e2e.conftest import cluster, namespace
from tests.realnode import minio_pod as minio_pod_module
from tests.realnode.minio_pod import MinioPod

__all__ = ["cluster", "namespace"]

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.realnode)


@pytest.fixture(scope="session")
def minio_pod(cluster: ClusterHandle, real_nodes: RealNodes) -> Iterator[MinioPod]:
    """MinIO as a pod on the real node, bucket ``fedkube`` created, ClusterIP Service."""
    name = cluster.create_namespace("minio")
    try:
        yield minio_pod_module.start(cluster, name)
    finally:
        cluster.delete_namespace(name)
