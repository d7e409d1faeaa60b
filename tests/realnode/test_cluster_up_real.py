"""``make cluster-up-real`` by hand: ``python -m tests.cluster up --real-node NAME --image
ARCHIVE`` starts a cluster whose daemon owns a real-kubelet node holding the given image, a pod
that selects the node runs that image there, and ``down`` takes it all away again.

It starts and stops a cluster of its own, so it runs before the lane's session cluster takes
the machine-wide real-node lock (files run in name order; ``test_cluster_*`` comes first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster.realnode.node import REAL_NODE_LABEL, placement
from tests.fixtures.images import REPO, BuiltImage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NODE = "real-z"


def cli(*args: str, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.cluster", *args, "--state-dir", str(state)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def exported_env(stdout: str) -> dict[str, str]:
    """The environment after ``eval`` of the ``export PATH=...`` and ``KUBECONFIG`` lines."""
    env = dict(os.environ)
    for line in stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.replace("$PATH", env.get("PATH", ""))
    return env


def processes_under(folder: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_cluster_up_with_a_real_node_runs_the_imported_image_there_and_down_removes_it(
    built_images: dict[str, BuiltImage],
) -> None:
    operator = built_images["operator"]
    # As a user's .cluster/ would be: a short path (a unix socket path has at most 104 bytes).
    state = Path(tempfile.mkdtemp(prefix="fk-up-real-"))

    up = cli("up", "--real-node", NODE, "--image", str(operator.archive), state=state, timeout=600)
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr[-4000:]}"
        env = exported_env(up.stdout)

        def kubectl(*args: str) -> str:
            result = subprocess.run(
                ["kubectl", *args], env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
            return result.stdout

        node = json.loads(kubectl("get", "node", NODE, "-o", "json"))
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert node["metadata"]["labels"][REAL_NODE_LABEL] == "true"
        assert f"{REAL_NODE_LABEL}=true" in up.stderr  # how to land a pod there

        kubectl(
            "run", "probe", f"--image={operator.ref}", "--image-pull-policy=Never",
            "--restart=Never", "--overrides", json.dumps({"spec": placement()}), "--",
            "--version",
        )  # fmt: skip
        deadline = time.monotonic() + 180
        phase = ""
        while phase not in ("Succeeded", "Failed") and time.monotonic() < deadline:
            time.sleep(1)
            phase = kubectl("get", "pod", "probe", "-o", "jsonpath={.status.phase}")
        pod = json.loads(kubectl("get", "pod", "probe", "-o", "json"))
        logs = kubectl("logs", "probe")
        assert phase == "Succeeded", f"{pod.get('status')}\n{logs}"
        assert pod["spec"]["nodeName"] == NODE
        assert logs.startswith("kopf, version ")
    finally:
        down = cli("down", state=state, timeout=300)
    assert down.returncode == 0, down.stderr
    assert processes_under(state) == []
    assert not (state / "realnodes" / NODE / "containerd").exists()
    shutil.rmtree(state, ignore_errors=True)


def test_a_state_folder_too_deep_for_containerd_s_socket_fails_up_front_naming_the_fix(
    tmp_path: Path,
) -> None:
    state = tmp_path / ("deep-" * 12) / "cluster"

    up = cli("up", "--real-node", NODE, state=state, timeout=300)

    assert up.returncode == 1
    assert "longer than the 104 a unix socket path may be" in up.stderr
    assert "--state-dir" in up.stderr
    assert processes_under(state) == []
