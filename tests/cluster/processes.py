"""Child processes of the cluster daemon: start with a log file, stop politely, never leak.

Control-plane processes get ``PR_SET_PDEATHSIG`` so that when the daemon dies without running
its teardown (SIGKILL, OOM) the kernel kills them too; they also lead their own process group
so a stop reaches any helper they fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. The signal is sent when the *thread* that forked
    # exits, so only the daemon's main thread (alive until teardown) spawns these processes.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it; tiny reuse race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One long-running component (etcd, kube-apiserver, ...) with its log in a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.stop_timeout_s = stop_timeout_s
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # spawned from the main thread only
            )

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit status."""
        return self._popen.poll() if self._popen else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the process group, wait up to ``timeout_s``, then SIGKILL it."""
        if self._popen is None:
            return
        if timeout_s is None:
            timeout_s = self.stop_timeout_s
        proc = self._popen
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        # Helpers left in the group die too, even when the leader exited on its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def describe_failure(self) -> str:
        code = self.exit_code()
        state = "is not healthy" if code is None else f"exited with status {code}"
        return f"{self.name} {state}; last lines of {self.log_path}:\n{tail(self.log_path)}"
