"""One container = one process tree on this machine, inside its pod's network namespace.

The command runs as ``ip netns exec <pod-netns> unshare --uts -- /bin/sh launch.sh CMD...``:
``ip netns exec`` enters the pod's network namespace and a private mount namespace (with the
pod's hosts file over /etc/hosts), ``unshare --uts`` gives the pod its own hostname, and the
generated launch script bind-mounts the volumes at their ``mountPath``, enters
``workingDir`` and ``exec``s the command. None of them forks, so the process we started *is* the
container's main process: SIGTERM reaches it directly, as it reaches PID 1 of a container.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from tests.cluster.kubelet.volumes import Mount


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise FileNotFoundError(f"{name} is needed to run pods (install iproute2/util-linux)")
    return path


class MountPoints:
    """Mount targets created on this machine's filesystem (a bind mount needs one to exist).

    They stay empty on the host (the mounts live in each pod's private mount namespace) and are
    left in place: another cluster on this machine may be starting a container on the same
    path right now (e.g. /var/run/secrets/kubernetes.io/serviceaccount), and an empty folder
    is harmless where removing it from under that container is not.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def ensure(self, target: Path, is_dir: bool) -> None:
        with self._lock:
            if target.exists() or target.is_symlink():
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            if is_dir:
                target.mkdir(exist_ok=True)
            else:
                target.touch()


def launch_script(
    *,
    hostname: str,
    mounts: Sequence[Mount],
    workdir: str,
    header: str,
    keep: Sequence[str] = (),
) -> str:
    """The shell script that finishes the "container" and execs its command ("$@").

    ``keep`` are host folders the "image" consists of (the repository and its virtualenv):
    a volume mounted over one of their ancestors (an emptyDir at /tmp while the checkout
    lives under /tmp) must not hide them, so each is first bind-mounted into the volume's
    source at the same relative place, and reappears at its own path once the volume is.
    """
    q = shlex.quote
    lines = ["#!/bin/sh", f"# {header}", "set -e", f"hostname {q(hostname)}"]
    for m in mount_order(mounts):
        bind = "--bind"
        for path in keep:
            inside = Path(path)
            if inside != Path(m.target) and inside.is_relative_to(m.target) and m.source.is_dir():
                hole = Path(m.source) / inside.relative_to(m.target)
                lines.append(f"mkdir -p {q(str(hole))}")
                lines.append(f"mount --bind {q(path)} {q(str(hole))}")
                bind = "--rbind"  # carry the kept folder's mount along with the volume
        lines.append(f"mount {bind} {q(str(m.source))} {q(m.target)}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {q(m.target)}")
    lines += [f"mkdir -p {q(workdir)}", f"cd {q(workdir)}", 'exec "$@"', ""]
    return "\n".join(lines)


def mount_order(mounts: Sequence[Mount]) -> list[Mount]:
    """The order to bind-mount in: a target before the targets nested in it, and a mount whose
    target would hide another mount's source after that mount.

    The second rule matters because volume folders live in the cluster's state folder: with the
    state under /tmp, an emptyDir mounted at /tmp first would hide every later source (e.g. the
    service-account token). Where the rules contradict each other, the given order decides.
    """

    def before(a: Mount, b: Mount) -> bool:
        nested = Path(b.target) != Path(a.target) and Path(b.target).is_relative_to(a.target)
        return nested or Path(a.source).is_relative_to(b.target)

    remaining, ordered = list(mounts), []
    while remaining:
        free = [m for m in remaining if not any(before(o, m) for o in remaining if o is not m)]
        pick = free[0] if free else remaining[0]
        ordered.append(pick)
        remaining.remove(pick)
    return ordered


def host_mountpoints(mounts: Sequence[Mount], points: MountPoints) -> None:
    """Make every target exist, inside an enclosing volume when the target is nested in one."""
    done: list[Mount] = []
    for m in sorted(mounts, key=lambda m: len(Path(m.target).parts)):
        target = Path(m.target)
        parent = next(
            (d for d in reversed(done) if target.is_relative_to(d.target) and d.source.is_dir()),
            None,
        )
        is_dir = m.source.is_dir()
        if parent is not None:
            inner = parent.source / target.relative_to(parent.target)
            inner.parent.mkdir(parents=True, exist_ok=True)
            if is_dir:
                inner.mkdir(exist_ok=True)
            elif not inner.exists():
                inner.touch()
        else:
            points.ensure(target, is_dir)
        done.append(m)


class ContainerProcess:
    """One run (attempt) of a container's command."""

    def __init__(
        self,
        *,
        netns: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        script: Path,
        log_path: Path,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [
                    _tool("ip"),
                    "netns",
                    "exec",
                    netns,
                    _tool("unshare"),
                    "--uts",
                    "--",
                    "/bin/sh",
                    str(script),
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                cwd="/",
            )
        self.pid = self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def terminate(self) -> None:
        """SIGTERM to the main process only, as a container runtime does."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole tree: the process group and any descendant that left it."""
        try:
            tree = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self._popen.wait()
