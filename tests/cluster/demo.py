"""``make cluster-demo``: the operator on the Docker-free cluster, ready for a person's kubectl.

``python -m tests.cluster.demo up`` puts together what the operator e2e tests use, but leaves
it running for someone to try by hand: the ``make cluster-up`` cluster (started if needed),
MinIO bound to the cluster's bridge address (so pods reach it) with the bucket ``fedkube``,
the ``s3-creds`` Secret in ``default``, the fedkube chart installed in ``fedkube-system`` (the
operator runs in-cluster as a pod), and ``.cluster/digits-k8s.yaml``: the example pointed at
that MinIO. It ends by printing what to type next.

MinIO runs under a small keeper process (``minio-serve``, detached from the terminal) whose
pid and credentials live in ``.cluster/minio/``. The keeper stops MinIO on SIGTERM (``down``,
``make cluster-down``) and on its own when the cluster daemon is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.cluster import launcher
from tests.cluster.config import REPO_ROOT, ClusterConfig
from tests.cluster.errors import ClusterError, ComponentFailed
from tests.cluster.handle import ClusterHandle

DEFAULT_STATE = REPO_ROOT / ".cluster"
MINIO_DIR = "minio"
MINIO_INFO = "minio.json"
"""Written by the keeper once MinIO is live and the bucket exists: pid, endpoint, keys."""
KEEPER_LOG = "keeper.log"
MANIFEST = "digits-k8s.yaml"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


# -- MinIO keeper ------------------------------------------------------------------------------


def _keeper_pid(state: Path) -> int | None:
    """The live keeper of ``state``'s MinIO (not a reused pid), or None."""
    try:
        info = json.loads((state / MINIO_DIR / MINIO_INFO).read_text())
        pid = int(info["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError):
        return None
    ours = b"tests.cluster.demo" in cmdline and str(state).encode() in cmdline
    return pid if ours else None


def running_minio(state: Path) -> dict[str, Any] | None:
    """What the keeper wrote (endpoint, bucket, keys), if its MinIO is running."""
    if _keeper_pid(state) is None:
        return None
    info: dict[str, Any] = json.loads((state / MINIO_DIR / MINIO_INFO).read_text())
    return info


def serve_minio(state: Path) -> int:
    """The keeper (``minio-serve``): run MinIO until SIGTERM or until the cluster is gone."""
    from tests.fixtures.minio import MinioServer, minio_binary

    cluster = launcher.running(state)
    if cluster is None:
        print("no cluster is running from this state folder", file=sys.stderr)
        return 1
    workdir = state / MINIO_DIR
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    shutil.rmtree(workdir / "data", ignore_errors=True)  # fresh keys: start from an empty drive
    server = MinioServer(minio_binary(), workdir, host=cluster.bridge_ip)
    with server:
        info = {
            "pid": os.getpid(),
            "endpoint": server.endpoint,
            "bucket": server.bucket,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            "log": str(server.log_path),
        }
        path = workdir / MINIO_INFO
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.chmod(0o600)
        tmp.replace(path)
        try:
            while not stop.wait(1.0) and launcher.daemon_pid(state) is not None:
                pass
        finally:
            path.unlink(missing_ok=True)
    return 0


def start_minio(state: Path) -> dict[str, Any]:
    """Start the keeper detached (it outlives this process) and wait until MinIO is ready."""
    workdir = state / MINIO_DIR
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MINIO_INFO).unlink(missing_ok=True)
    log_path = workdir / KEEPER_LOG
    keeper = launcher.spawn_detached(
        ["tests.cluster.demo", "minio-serve", "--state-dir", str(state)], log_path
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while (info := running_minio(state)) is None:
        if keeper.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                keeper.kill()
            raise ComponentFailed(
                f"MinIO did not start (keeper exit status {keeper.poll()}); see {log_path} "
                f"and {workdir / 'minio.log'}"
            )
        time.sleep(0.2)
    return info


def stop_minio(state: Path) -> bool:
    """Stop the demo's MinIO (if running); True if it was. Used by ``make cluster-down`` too."""
    pid = _keeper_pid(state.resolve())
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


# -- up / down ---------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def cmd_up(state: Path) -> int:
    from tests.cluster.__main__ import _exports
    from tests.fixtures.operator import (
        CREDENTIALS_SECRET,
        HELM_INSTALL_ARGS,
        RELEASE,
        example_manifest,
    )

    t0 = time.monotonic()
    info = launcher.running(state)
    if info is None:
        print(f"starting the test cluster (state in {state}) ...", file=sys.stderr)
        info = launcher.start(ClusterConfig(state_dir=state), progress=sys.stderr).info
    else:
        print(f"test cluster already running (pid {info.pid})", file=sys.stderr)

    minio = running_minio(state)
    if minio is None or f"//{info.bridge_ip}:" not in minio["endpoint"]:
        stop_minio(state)
        print("starting MinIO on the pod network ...", file=sys.stderr)
        minio = start_minio(state)
    print(f"MinIO at {minio['endpoint']}, bucket {minio['bucket']}", file=sys.stderr)

    handle = ClusterHandle(info)
    try:
        secret = handle.run_kubectl(
            "create", "secret", "generic", CREDENTIALS_SECRET, "-n", "default",
            f"--from-literal=AWS_ACCESS_KEY_ID={minio['access_key']}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={minio['secret_key']}",
            "--dry-run=client", "-o", "yaml",
        ).stdout  # fmt: skip
        handle.run_kubectl("apply", "-f", "-", input=secret)
        print(f"Secret default/{CREDENTIALS_SECRET} holds MinIO's keys", file=sys.stderr)
        print("installing the fedkube chart (operator in fedkube-system) ...", file=sys.stderr)
        handle.run_helm("upgrade", "--install", RELEASE, *HELM_INSTALL_ARGS, timeout=240)
    finally:
        handle.close()

    import yaml

    manifest = state / MANIFEST
    obj = example_manifest(minio["endpoint"])
    manifest.write_text(
        f"# examples/digits-k8s.yaml with its endpoint on the demo MinIO ({minio['endpoint']})\n"
        + yaml.safe_dump(obj, sort_keys=False)
    )
    print(f"ready in {time.monotonic() - t0:.0f}s. Now, in this shell:\n", file=sys.stderr)
    print(
        f"{_exports(info)}\n"
        f"kubectl apply -f {_rel(manifest)}\n"
        "kubectl get fj -w                # Ctrl-C once PHASE is Succeeded (about a minute)\n"
        "kubectl describe fj digits\n"
        "kubectl get events --sort-by=.lastTimestamp\n"
        "kubectl logs -l fedkube.io/role=aggregator --tail=20\n"
        "kubectl delete fj digits\n"
        "make cluster-down                # stops the cluster and MinIO"
    )
    return 0


def cmd_down(state: Path) -> int:
    was = stop_minio(state)
    print(f"demo MinIO {'stopped' if was else 'was not running'}", file=sys.stderr)
    if launcher.running(state) is not None:
        print("the cluster is still running: make cluster-down stops it", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "minio-serve"),
        help="up: cluster, MinIO, chart and manifest; down: stop MinIO (minio-serve: internal)",
    )
    parser.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE),
        help="the cluster's state folder (default: .cluster/)",
    )
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    commands = {"up": cmd_up, "down": cmd_down, "minio-serve": serve_minio}
    try:
        return commands[args.command](state)
    except (ClusterError, AssertionError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
