"""Stopping a cluster, or cleaning up after one that crashed, leaves nothing behind.

Each test starts its own one-node cluster (not the session's), so it can stop it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster import ClusterConfig, NodeSpec, Started, start
from tests.cluster.handle import ClusterHandle, container_pid, make_pod
from tests.cluster.network import Slot, cleanup_stale, find_leftovers, ip

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def own_cluster(cluster: ClusterHandle, tmp_path: Path) -> Iterator[tuple[Started, ClusterHandle]]:
    # Depends on ``cluster`` only for its skip/fail decision about the binaries.
    started = start(ClusterConfig(
        state_dir=tmp_path / "cluster", nodes=(NodeSpec("solo"),), parent_pid=os.getpid(),
    ))  # fmt: skip
    handle = ClusterHandle(started.info)
    try:
        yield started, handle
    finally:
        handle.close()
        started.stop()


def _run_sleeper(handle: ClusterHandle) -> int:
    namespace = handle.create_namespace("teardown")
    handle.create_pod(namespace, make_pod("sleeper", ["sleep", "600"]))
    return container_pid(handle.wait_for_phase(namespace, "sleeper", "Running"))


def _bridge_exists(slot: Slot) -> bool:
    return slot.bridge in ip("-o", "link", "show")


def test_stopping_a_cluster_leaves_no_process_namespace_or_veth(
    own_cluster: tuple[Started, ClusterHandle],
) -> None:
    started, handle = own_cluster
    pod_pid = _run_sleeper(handle)
    slot = Slot(started.info.slot)
    pids = [pod_pid, started.info.pid, *started.info.pids.values()]
    before = find_leftovers(slot)
    assert before.netns
    assert before.links

    handle.close()
    started.stop()

    assert [p for p in pids if psutil.pid_exists(p)] == []
    assert find_leftovers(slot).empty()
    assert not _bridge_exists(slot)


def test_cleanup_removes_what_a_killed_cluster_left_behind(
    own_cluster: tuple[Started, ClusterHandle],
) -> None:
    started, handle = own_cluster
    pod_pid = _run_sleeper(handle)
    slot = Slot(started.info.slot)
    control_plane = list(started.info.pids.values())

    os.kill(started.info.pid, signal.SIGKILL)
    started.popen.wait()
    # The kernel takes the control plane down with the daemon (PR_SET_PDEATHSIG)...
    handle.wait_for(lambda: not any(psutil.pid_exists(p) for p in control_plane), 30,
                    "the control plane to die with its daemon")  # fmt: skip
    # ... but the pod's processes and network objects are left for the cleanup.
    assert psutil.pid_exists(pod_pid)
    assert not find_leftovers(slot).empty()

    removed = cleanup_stale()

    assert slot.index in removed
    assert pod_pid in removed[slot.index].pids
    handle.wait_for(lambda: not psutil.pid_exists(pod_pid), 10, "the pod process to die")
    assert find_leftovers(slot).empty()
    assert not _bridge_exists(slot)
