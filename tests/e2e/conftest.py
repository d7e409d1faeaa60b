"""Fixtures for tests against a real Kubernetes control plane: ``cluster`` and ``namespace``.

``cluster`` (one per session) starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the process kubelet as local processes (tests/cluster) and yields a
``ClusterHandle``. The tests skip only when the binaries are not built and the Go toolchain
to build them is missing (a laptop without Go), and never when ``FEDKUBE_E2E=required`` (CI):
then, as for any component that cannot start, the run fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import ClusterConfig, GoToolchainMissing, binaries, start
from tests.cluster.handle import ClusterHandle

E2E_DIR = Path(__file__).resolve().parent


def e2e_required() -> bool:
    return os.environ.get("FEDKUBE_E2E", "") == "required"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/e2e as ``e2e`` and build missing binaries up front.

    Building here, before any test runs, keeps a cold build (minutes) out of the first test's
    timeout; ``make test`` has normally built them already, so this is a no-op.
    """
    selected = [i for i in items if E2E_DIR in Path(str(i.path)).parents]
    for item in selected:
        item.add_marker(pytest.mark.e2e)
    if not selected:
        return
    missing = binaries.locate().missing(binaries.CLUSTER_COMPONENTS)
    if missing and shutil.which("go"):
        print(f"\nbuilding {', '.join(missing)} for the e2e tests ...", file=sys.stderr)
        # Without Go the ``cluster`` fixture skips (or fails when required), saying why.
        with contextlib.suppress(GoToolchainMissing):
            binaries.ensure()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    try:
        binaries.ensure()
        reason = ""
    except GoToolchainMissing as e:
        reason = str(e)
    if not reason and (os.geteuid() != 0 or sys.platform != "linux"):
        # Pods get network and mount namespaces: Linux, as root (CI and the docs' VM are).
        reason = (
            "the test cluster needs Linux and root (each pod runs in its own network "
            "namespace); on a laptop run the e2e tests as root in a Linux VM"
        )
    if reason and e2e_required():
        pytest.fail(f"FEDKUBE_E2E=required, so this is a failure: {reason}", pytrace=False)
    if reason:
        pytest.skip(f"{reason} (skipped on laptops only; CI sets FEDKUBE_E2E=required)")
    state = tmp_path_factory.mktemp("cluster")
    started = start(ClusterConfig(state_dir=state, parent_pid=os.getpid()))
    handle = ClusterHandle(started.info)
    try:
        yield handle
    finally:
        handle.close()
        started.stop()


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) afterwards."""
    prefix = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))
    name = cluster.create_namespace(prefix[:30].strip("-") or "t")
    yield name
    cluster.delete_namespace(name)
