"""A fork server for ``fedkube run``: torch is imported once, not once per process.

Why it exists: a local run starts the aggregator and one process per client pod, and each of
them spent seconds importing torch (and the task's libraries) before doing anything; on a
small machine ten clients took over a minute to reach round 1, growing with the client
count. The zygote is one process that imports those modules once and then forks every
process of the run from that state: a fork costs milliseconds, whatever was imported.

How a process is started (``Zygote.start``), and why each step is there:

- The runner sends the zygote one end of a fresh socket pair (``SCM_RIGHTS``) and nothing
  else. The zygote forks an intermediate child at once; it is the intermediate that reads
  the request (argv, environment, working directory, log file) from the socket. So the
  zygote's memory never holds any process's environment: a client's store credentials and
  key paths exist only in that client's process, not in the zygote and so not in the heap
  of every process forked after it.
- The intermediate forks the real process and exits; the zygote reaps it and only then
  reports "done". The runner is the subreaper of its descendants (``become_subreaper``), so
  by then the process is the runner's own child: the runner waits for it, reads its exit
  status and signals it exactly like a process it started with ``subprocess``.
- The process starts a session of its own, waits until it is the runner's child, and then
  asks for SIGTERM when the runner dies (``PR_SET_PDEATHSIG``), like every other process of
  a run. It takes the requested environment and directory, sends stdout and stderr to its
  log, and runs ``python -m MODULE ARGS`` in-process (``runpy``); its exit code is the
  module's.

Forking is only safe from a process with one thread: the zygote imports modules and runs no
torch operation, so no thread pool exists yet (``preload`` refuses to serve if a thread
appeared). It serves only the runner that started it (one connection, its stdin), and
exits when the runner goes away. Each started process sets its own torch thread count
(``init_distributed``), and Python reseeds ``random`` in every child; a task that wants
other per-process state must create it in its process, as it would anyway.

Linux only (subreaper, ``PR_SET_PDEATHSIG``): elsewhere, or when the zygote cannot start,
the runner starts processes the usual way.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PRELOAD = (
    "torch",
    "torch._inductor.config",
    "fedcore.cli",
    "fedcore.client",
    "fedcore.aggregator",
)
"""Modules imported once by the zygote: what every process of a run imports. (Inductor's
config is imported by ``torch.use_deterministic_algorithms``, which every client calls; it
alone took as long as ``import torch``.)"""
REPARENT_TIMEOUT_SECONDS = 10.0
"""How long a forked process waits to become the runner's child before giving up."""

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_HEADER = struct.Struct("!I")


def preload_modules(entrypoint: str) -> list[str]:
    """``PRELOAD`` and the module of the job's task (``spec.task.entrypoint``,
    ``module:attribute``): imported by every client anyway, often the next heaviest."""
    module = entrypoint.partition(":")[0]
    return [*PRELOAD, module] if module and module not in PRELOAD else list(PRELOAD)


class ZygoteError(RuntimeError):
    """The zygote could not start a process (it is gone, or answered nonsense)."""


# ---- the runner's side ---------------------------------------------------------------------------


class ForkedProcess:
    """A process the zygote started, now the runner's child: the part of ``subprocess.Popen``
    that the runner uses (``pid``, ``poll``, ``wait``, ``returncode``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._wait(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self._wait(0 if deadline is None else os.WNOHANG)
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"process {self.pid} still running after {timeout} s")
            time.sleep(0.05)

    def _wait(self, options: int) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:
            # Reaped elsewhere (psutil's wait_procs when stopping it): the status is lost,
            # as subprocess.Popen also reports it then.
            self.returncode = 0
            return 0
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class Zygote:
    """The runner's handle on its zygote process."""

    def __init__(self, proc: Any, control: socket.socket) -> None:
        self._proc = proc  # subprocess.Popen of the zygote (started by the runner)
        self._control = control
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        pid: int = self._proc.pid
        return pid

    def alive(self) -> bool:
        return bool(self._proc.poll() is None)

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        timeout: float = 60.0,
    ) -> ForkedProcess:
        """Start ``argv`` (``[python, "-m", MODULE, *args]``) with ``env``, output appended
        to ``log`` (opened by the runner, which wrote its header); the started process."""
        if len(argv) < 3 or argv[1] != "-m":
            raise ZygoteError(f"the zygote runs modules only (python -m MODULE ...), not {argv}")
        request = {
            "module": argv[2],
            "args": list(argv[3:]),
            "env": dict(env),
            "cwd": os.getcwd(),
            "log": str(log),
            "parent": os.getpid(),
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, self._lock:
            try:
                with theirs:
                    socket.send_fds(self._control, [b"F"], [theirs.fileno()])
                ours.settimeout(timeout)
                _send_message(ours, request)
                reply = _recv_lines(ours)
            except OSError as e:
                raise ZygoteError(f"the zygote did not start {argv[2]}: {e}") from e
        if len(reply) != 2 or reply[1] != "done" or not reply[0].isdigit():
            raise ZygoteError(f"the zygote did not start {argv[2]} (it answered {reply!r})")
        return ForkedProcess(int(reply[0]))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._control.close()
        try:
            self._proc.wait(timeout=5)
        except Exception:
            self._proc.kill()
            self._proc.wait()


def start_zygote(env: Mapping[str, str], log: Path, modules: Sequence[str]) -> Zygote:
    """Start a zygote that preloads ``modules`` (stderr to ``log``) and wait until it is
    ready; ``ZygoteError`` when it cannot serve (the caller starts processes itself)."""
    import subprocess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with theirs, open(log, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, *modules],
                env=dict(env),
                stdin=theirs.fileno(),
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
    except OSError as e:
        ours.close()
        raise ZygoteError(f"the zygote did not start ({e})") from e
    assert proc.stdout is not None
    line = ""
    with proc.stdout:
        for raw in proc.stdout:  # a module may print while it is imported: skip that
            line = raw.decode(errors="replace").strip()
            if line == "ready" or line.startswith("not ready"):
                break
    if line != "ready":
        ours.close()
        with contextlib.suppress(Exception):
            proc.kill()
        proc.wait()
        raise ZygoteError(f"the zygote did not start ({line or 'no answer'}; see {log})")
    return Zygote(proc, ours)


def _die_with_parent() -> None:  # runs in the zygote between fork and exec
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_message(sock: socket.socket) -> dict[str, Any]:
    (length,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    message: dict[str, Any] = json.loads(_recv_exactly(sock, length))
    return message


def _recv_exactly(sock: socket.socket, length: int) -> bytes:
    chunks, left = [], length
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the peer closed the connection mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv_lines(sock: socket.socket) -> list[str]:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode(errors="replace").split()
        data += chunk


# ---- the zygote's side ---------------------------------------------------------------------------


def preload(modules: Sequence[str]) -> None:
    """Import ``modules``; refuse to serve if a thread is left that a fork would lose.

    Counted after one trial fork: numpy's OpenBLAS starts its thread pool at import and
    stops it in a ``pthread_atfork`` handler before every fork (restarting it on next use),
    so its threads never meet a fork; any other thread would.
    """
    for name in modules:
        importlib.import_module(name)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise ZygoteError(f"importing {', '.join(modules)} left {threads - 1} thread(s) running")


def serve(control: socket.socket) -> None:
    """Fork a process for every socket the runner sends, until the runner closes ``control``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when the run stops
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if not fds:
            return  # the runner closed its end
        conn = socket.socket(fileno=fds[0])
        try:
            child = os.fork()
            if child == 0:  # the intermediate
                control.close()
                code = 1
                try:
                    code = _intermediate(conn)
                finally:
                    os._exit(code)
            os.waitpid(child, 0)
            with contextlib.suppress(OSError):
                conn.sendall(b" done\n")
        finally:
            conn.close()


def _intermediate(conn: socket.socket) -> int:
    """Read the request, fork the process, tell the runner its pid; exiting then hands the
    process to the runner (its subreaper)."""
    request = _recv_message(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become_process(request)  # never returns
    conn.sendall(f"{pid}\n".encode())
    return 0


def _become_process(request: Mapping[str, Any]) -> None:
    code = 1
    try:
        os.setsid()
        _wait_for_parent(int(request["parent"]))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        libc.prctl(_PR_SET_NAME, Path(request["log"]).stem.encode()[:15], 0, 0, 0)
        if os.getppid() != int(request["parent"]):
            os._exit(128 + signal.SIGTERM)  # the runner died before PDEATHSIG was armed
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        sys.argv = [request["module"], *request["args"]]
        code = _run_module(request["module"], list(request["args"]))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_module(module: str, args: list[str]) -> int:
    """``python -m module``'s exit code, with its exit handlers run. A module with a
    ``main(argv)`` (fedkube's are) has it called: running an imported module again as
    ``__main__`` would define its classes twice."""
    try:
        entry = getattr(importlib.import_module(module), "main", None)
        if callable(entry):
            code = _exit_code(entry(args))
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _wait_for_parent(parent: int) -> None:
    deadline = time.monotonic() + REPARENT_TIMEOUT_SECONDS
    while os.getppid() != parent:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.001)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedcore.zygote MODULE...``: preload, say "ready" on stdout, serve the
    control socket passed as stdin."""
    modules = list(argv if argv is not None else sys.argv[1:]) or list(PRELOAD)
    control = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        preload(modules)
    except Exception as e:
        print(f"not ready: {e}", flush=True)
        return 1
    print("ready", flush=True)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # the runner stopped reading
    os.close(null)
    serve(control)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "PRELOAD",
    "ForkedProcess",
    "Zygote",
    "ZygoteError",
    "preload",
    "preload_modules",
    "serve",
    "start_zygote",
]
