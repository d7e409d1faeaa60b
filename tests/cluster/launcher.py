"""Start, find and stop a cluster daemon from another process (CLI, pytest fixture).

``start`` spawns ``python -m tests.cluster serve`` detached from the caller's terminal, waits
for its ``cluster.json`` (echoing its progress when asked) and returns what it says; ``stop``
signals the daemon and waits for its teardown, then removes anything a crashed daemon left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tests.cluster import network
from tests.cluster.config import REPO_ROOT, ClusterConfig
from tests.cluster.errors import ComponentFailed
from tests.cluster.processes import tail
from tests.cluster.serve import FAILED_FILE, INFO_FILE, PID_FILE

SERVE_LOG = "serve.log"
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ClusterInfo:
    """What a running cluster's ``cluster.json`` says."""

    pid: int
    state_dir: Path
    kubeconfig: Path
    server: str
    bridge_ip: str
    pod_subnet: str
    slot: int
    bin_dirs: list[Path]
    kubectl: Path
    helm: Path
    logs_dir: Path
    nodes: list[str]
    pids: dict[str, int]
    endpoints: dict[str, Any]
    pki: dict[str, str]
    ready_seconds: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ClusterInfo:
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterInfo:
        return cls(
            pid=int(d["pid"]),
            state_dir=Path(d["state_dir"]),
            kubeconfig=Path(d["kubeconfig"]),
            server=d["server"],
            bridge_ip=d["bridge_ip"],
            pod_subnet=d["pod_subnet"],
            slot=int(d["slot"]),
            bin_dirs=[Path(p) for p in d["bin_dirs"]],
            kubectl=Path(d["kubectl"]),
            helm=Path(d["helm"]),
            logs_dir=Path(d["logs_dir"]),
            nodes=list(d["nodes"]),
            pids={k: int(v) for k, v in d["pids"].items()},
            endpoints=dict(d["endpoints"]),
            pki=dict(d["pki"]),
            ready_seconds=float(d["ready_seconds"]),
            raw=d,
        )


def _is_daemon(pid: int, state_dir: Path) -> bool:
    """Is ``pid`` alive and the daemon of ``state_dir`` (not a reused pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tests.cluster" in cmdline and str(state_dir).encode() in cmdline


def daemon_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_daemon(pid, state_dir) else None


def running(state_dir: Path) -> ClusterInfo | None:
    """The running cluster of ``state_dir``, or None."""
    state_dir = state_dir.resolve()
    info_path = state_dir / INFO_FILE
    if daemon_pid(state_dir) is None or not info_path.is_file():
        return None
    return ClusterInfo.load(info_path)


class Started:
    """A daemon started by this process (so it can be waited for and reaped)."""

    def __init__(self, info: ClusterInfo, popen: subprocess.Popen[bytes]) -> None:
        self.info = info
        self.popen = popen

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        stop(self.info.state_dir, timeout_s=timeout_s, popen=self.popen)


def spawn_detached(module_args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m <module_args>`` from the repo root in a new session (it outlives the
    caller), output appended to ``log_path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *module_args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start(
    config: ClusterConfig, *, timeout_s: float = 300.0, progress: TextIO | None = None
) -> Started:
    """Spawn the daemon for ``config`` and return once the cluster is ready.

    Raises ``ComponentFailed`` with the daemon's reason (and its log's tail) when it cannot
    start; nothing is left running in that case.
    """
    state = config.state_dir.resolve()
    if running(state) is not None:
        raise ComponentFailed(f"a cluster is already running from {state}; stop it first")
    config = ClusterConfig(
        state_dir=state,
        nodes=config.nodes,
        kubelet=config.kubelet,
        ready_timeout_s=config.ready_timeout_s,
        parent_pid=config.parent_pid,
        audit_log=config.audit_log,
        extra_routes=config.extra_routes,
        real_nodes=config.real_nodes,
        real_node_images=config.real_node_images,
    )
    config.save()
    for name in (INFO_FILE, FAILED_FILE):
        (state / name).unlink(missing_ok=True)
    log_path = state / SERVE_LOG
    popen = spawn_detached(["tests.cluster", "serve", "--state-dir", str(state)], log_path)
    deadline = time.monotonic() + timeout_s
    offset = log_path.stat().st_size if progress else 0
    while True:
        if progress is not None:
            with log_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            progress.write(chunk.decode(errors="replace"))
            progress.flush()
        if (state / INFO_FILE).is_file():
            return Started(ClusterInfo.load(state / INFO_FILE), popen)
        code = popen.poll()
        if code is not None:
            reason = (
                (state / FAILED_FILE).read_text().strip()
                if (state / FAILED_FILE).is_file()
                else f"the daemon exited with status {code}"
            )
            raise ComponentFailed(
                f"the test cluster did not start: {reason}\n"
                f"--- last lines of {log_path}:\n{tail(log_path, 40)}"
            )
        if time.monotonic() > deadline:
            stop(state, popen=popen)
            raise ComponentFailed(
                f"the test cluster was not ready within {timeout_s:.0f}s\n"
                f"--- last lines of {log_path}:\n{tail(log_path, 40)}"
            )
        time.sleep(0.2)


def stop(
    state_dir: Path,
    *,
    timeout_s: float = STOP_TIMEOUT_S,
    popen: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Stop the daemon of ``state_dir`` (if any) and clear leftovers; True if one was running."""
    state_dir = state_dir.resolve()
    pid = popen.pid if popen is not None and popen.poll() is None else daemon_pid(state_dir)
    was_running = pid is not None
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid, popen) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, popen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if popen is not None:
        popen.wait()
    # A daemon that was SIGKILLed (above, or by someone else) could not tear down its pods.
    network.cleanup_stale()
    return was_running


def _alive(pid: int, popen: subprocess.Popen[bytes] | None) -> bool:
    if popen is not None and popen.pid == pid:
        return popen.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"
