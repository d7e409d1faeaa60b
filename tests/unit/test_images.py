"""The Dockerfiles lint clean and start exactly the programs the operator and chart expect.

What can be checked without building: hadolint, the final stage's user and entrypoint, that
the operator image carries no torch, and that the commands the operator puts into pods exist.
tests/images builds the images and runs them (``make images``, ``images/build.sh``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fedcore import spec as fs
from fedop.builders import names, pods
from fedop.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
OPERATOR = IMAGES / "operator.Dockerfile"
RUNTIME = IMAGES / "runtime.Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TORCH_STACK = ("torch", "safetensors", "numpy", "sklearn", "scikit-learn")


@dataclass
class Stage:
    """The instructions of a Dockerfile's last stage that decide how the container starts."""

    base: str = ""
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def base_args(dockerfile: Path) -> dict[str, str]:
    """The defaults of the ``ARG``s declared before the first ``FROM`` (what ``FROM`` may use)."""
    args: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        if line.startswith("FROM "):
            break
        if line.startswith("ARG "):
            name, _, default = line.removeprefix("ARG ").strip().partition("=")
            args[name] = default
    return args


def from_images(dockerfile: Path) -> list[str]:
    """Every ``FROM`` image, with the ``ARG`` defaults filled in (the official bases)."""
    args = base_args(dockerfile)
    images = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            for name, default in args.items():
                image = image.replace(f"${{{name}}}", default)
            images.append(image)
    return images


def final_stage(dockerfile: Path) -> Stage:
    text = dockerfile.read_text().replace("\\\n", " ")
    stage = Stage()
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        match instruction.upper():
            case "FROM":
                stage = Stage(base=from_images(dockerfile)[-1])
            case "USER":
                stage.user = rest
            case "ENTRYPOINT":
                stage.entrypoint = json.loads(rest)
            case "CMD":
                stage.cmd = json.loads(rest)
            case "RUN":
                stage.runs.append(rest)
    return stage


def hadolint() -> Path:
    path = Path(sys.executable).parent / "hadolint"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the dev extra (pip install -e '.[dev]')")
    return path


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    uid, _, gid = final_stage(dockerfile).user.partition(":")

    assert uid.isdigit(), "USER must be numeric so runAsNonRoot can check it"
    assert gid.isdigit(), "USER must name a numeric group"
    assert int(uid) > 0
    assert int(gid) > 0
    assert int(uid) == OperatorSettings().pod_user_id


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_base_image_is_pinned_by_tag(dockerfile: Path) -> None:
    for image in from_images(dockerfile):
        repository, _, tag = image.rpartition(":")
        assert "$" not in image, f"{image}: give the build argument a default"
        assert repository, f"{image}: pin the base image by tag"
        assert tag not in ("latest", ""), f"{image}: pin the base image by tag"


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_every_stage_builds_on_the_base_image_argument(dockerfile: Path) -> None:
    # images/build.sh --stand-in-bases (and air-gapped users) point FROM at a local base.
    froms = [ln.split()[1] for ln in dockerfile.read_text().splitlines() if ln.startswith("FROM ")]

    assert "BASE_IMAGE" in base_args(dockerfile)
    assert froms
    assert all(image == "${BASE_IMAGE}" for image in froms)


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_image_installs_this_version_of_fedkube(dockerfile: Path) -> None:
    pinned = f"=={PYPROJECT['project']['version']}"

    assert any("fedkube[" in run and pinned in run for run in final_stage(dockerfile).runs)


@pytest.mark.parametrize("dockerfile", [OPERATOR, RUNTIME], ids=lambda p: p.name)
def test_build_context_keeps_what_the_dockerfile_copies(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    copied = [
        line.split()[1:-1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    ]

    assert "*" in ignore
    for sources in copied:
        for source in sources:
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, missing here"


# ---- runtime image: the pods' commands ----------------------------------------------------------


def test_runtime_entrypoint_is_the_fedkube_console_script() -> None:
    stage = final_stage(RUNTIME)

    assert stage.base.startswith("pytorch/pytorch:")
    assert "cuda" in stage.base
    assert stage.entrypoint == ["fedkube"]
    assert PYPROJECT["project"]["scripts"]["fedkube"] == "fedcore.cli:main"


def pod_commands() -> list[list[str]]:
    """The commands the operator's builders put into a job's aggregator and client pods."""
    job = fs.parse_job(
        {
            "metadata": {"name": "job", "namespace": "ns", "uid": "0" * 32},
            "spec": {
                "rounds": 1,
                "task": {"entrypoint": "fedcore.tasks.digits:task"},
                "clients": [{"name": "a", "replicas": 2}],
            },
        }
    )
    ref = names.JobRef(name="job", namespace="ns", uid="0" * 32)
    settings = OperatorSettings()
    templates = [
        pods.aggregator_pod_template(ref, job.spec, settings),
        pods.client_pod_template(ref, job.spec, job.spec.clients[0], settings),
    ]
    return [t["spec"]["containers"][0]["command"] for t in templates]


def fedkube_help(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from fedcore.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", pod_commands(), ids=lambda c: c[1])
def test_pod_command_is_a_fedkube_subcommand_the_runtime_image_has(command: list[str]) -> None:
    program, subcommand, *arguments = command
    flags = [a for a in arguments if a.startswith("--")]

    assert [program] == final_stage(RUNTIME).entrypoint
    assert subcommand in ("aggregator", "client")
    usage = fedkube_help(subcommand, "--help")
    for flag in flags:
        assert flag in usage, f"`fedkube {subcommand}` has no {flag} option"


# ---- operator image: kopf, no torch -------------------------------------------------------------


def test_operator_entrypoint_is_kopf_running_the_fedop_module() -> None:
    stage = final_stage(OPERATOR)

    assert stage.base.startswith("python:3.11")
    assert stage.entrypoint == ["kopf"]
    assert stage.cmd[:4] == ["run", "-m", "fedop", "--standalone"]
    assert any(arg.startswith("--liveness=http://0.0.0.0:") for arg in stage.cmd)
    assert [ep.value for ep in entry_points(group="console_scripts", name="kopf")] == [
        "kopf.cli:main"
    ]


def test_operator_image_installs_no_torch() -> None:
    runs = " ".join(final_stage(OPERATOR).runs)
    requirements = (
        PYPROJECT["project"]["dependencies"]
        + (PYPROJECT["project"]["optional-dependencies"]["operator"])
    )

    assert "fedkube[operator]" in runs
    assert "runtime" not in runs
    assert not [r for r in requirements if r.split(">")[0].split("=")[0] in TORCH_STACK]


def test_kopf_can_import_fedop_without_torch() -> None:
    # What `kopf run -m fedop` does first, in a fresh interpreter: every module of the
    # operator package, then a look at what came along.
    probe = (
        "import importlib, pkgutil, sys\n"
        "import fedop\n"
        "for m in pkgutil.walk_packages(fedop.__path__, 'fedop.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(sorted(set({TORCH_STACK!r}) & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- images/build.sh without a container engine ------------------------------------------------


def run_build_without_engines(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """images/build.sh --optional on a PATH holding only the shell tools it needs first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "mkdir", "date", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--optional", "--stand-in-bases"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), "FEDKUBE_CACHE": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_build_without_podman_or_docker_names_them_and_builds_nothing(tmp_path: Path) -> None:
    result = run_build_without_engines(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # no image lines: the image tests skip
    assert "podman" in result.stderr
    assert "make images-tools" in result.stderr


def test_build_without_podman_or_docker_fails_when_images_are_required(tmp_path: Path) -> None:
    result = run_build_without_engines(tmp_path, FEDKUBE_E2E="required")

    assert result.returncode == 3
    assert result.stdout == ""
    assert "podman" in result.stderr
