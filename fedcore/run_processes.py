"""The processes of a local run (``fedkube run``): start, watch and stop them the way the
operator's pods are, and say why one ended.

Why a module of its own: the runner (``fedcore.runner``) decides what to start and when to
restart or exclude; this module holds the mechanics it needs for that, on Linux and
elsewhere: a ``Member`` is one OS process (the aggregator, or one pod of a client group),
started from scratch or forked from the run's fork server (``fedcore.zygote``); a ``Group``
is the members that live and die together; ``stop_processes`` ends process trees, and
``become_subreaper`` makes sure none of them escapes the runner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

import psutil

from fedcore.zygote import Zygote, ZygoteError

STOP_GRACE_SECONDS = 10.0
"""How long stopped processes get to exit after SIGTERM before SIGKILL."""
LOG_TAIL_LINES = 15
"""Lines of a failed process's log quoted in the failure message."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def become_subreaper() -> None:
    """Orphaned descendants (torch puts its workers in sessions of their own) are re-parented
    to this process instead of init, so the runner can still find and stop them."""
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _is_banner(line: str) -> bool:
    return len(line.strip()) >= 10 and set(line.strip()) == {"="}


def _without_launcher_summary(lines: list[str]) -> list[str]:
    """Drop the '====' framed summary torch's elastic launcher ends a failed group's log
    with: it says only "exitcode 1", while the cause is in the lines above it."""
    if not lines or not _is_banner(lines[-1]):
        return lines
    for i in range(len(lines) - 2, -1, -1):
        if _is_banner(lines[i]) and lines[i + 1].strip().endswith("FAILED"):
            kept = lines[:i]
            while kept and not kept[-1].strip():
                kept.pop()
            return kept
    return lines


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, indented for quoting in a failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    tail = _without_launcher_summary(text.splitlines())[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


def stop_processes(pids: Sequence[int], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every process (and process group) given and all their descendants; SIGKILL
    whatever is left after ``grace`` seconds; reap them."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            procs[pid] = proc
            for child in proc.children(recursive=True):
                procs[child.pid] = child
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    for proc in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


class Process(Protocol):
    """What the runner uses of a started process: ``subprocess.Popen`` or ``ForkedProcess``."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class Member:
    """One OS process of the run: the aggregator, or one "pod" of a client's DDP group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    zygote: Zygote | None = None
    """The run's fork server, if it has one: the process is forked from it, torch imported."""
    proc: Process | None = None
    _log_file: IO[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in close_log()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log_file.write(f"--- fedkube run: starting {self.name} at {stamp}\n".encode())
        self._log_file.flush()
        if self.zygote is not None and self.zygote.alive():
            try:
                self.proc = self.zygote.start(self.argv, self.env, self.log)
                return
            except ZygoteError as e:
                self._log_file.write(f"--- {e}; starting it without\n".encode())
                self._log_file.flush()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class Group:
    """Processes that live and die together: the aggregator alone, or one client's pods."""

    name: str
    kind: Literal["aggregator", "client"]
    make_members: Callable[[], list[Member]]
    members: list[Member] = field(default_factory=list)
    restarts: int = 0
    state: Literal["running", "succeeded", "excluded", "stopped"] = "running"

    def start(self) -> None:
        self.members = self.make_members()
        for member in self.members:
            member.start()
        self.state = "running"

    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        stop_processes(self.pids(), grace)
        for member in self.members:
            if member.proc is not None:
                member.proc.wait()
            member.close_log()

    def failed_member(self) -> Member | None:
        """The first member that exited non-zero, if any."""
        for member in self.members:
            code = member.returncode()
            if code is not None and code != 0:
                return member
        return None

    def all_succeeded(self) -> bool:
        return all(m.returncode() == 0 for m in self.members)
