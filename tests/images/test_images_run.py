"""The built images start what the operator and chart start, as they start it.

Each container runs the way a pod of the operator or the chart runs: as UID 65532, with a
read-only root filesystem, ``/tmp`` the only writable place (an emptyDir in a pod, a tmpfs
here), ``HOME=/tmp`` and no network. The images come from the ``built_images`` fixture
(tests/fixtures/images.py): built on Debian stand-in bases, no registry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.fixtures.images import REPO, BuiltImage, Engine
from tests.unit.test_images import TORCH_STACK, pod_commands

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

RUN_SECONDS = 600
"""Upper bound for one container (a one-round run takes ~30 s): a hang fails, not blocks."""
POD_USER = "65532:65532"


def pod_like(*, workdir: str | None = None) -> list[str]:
    """``podman run`` options matching the security context the operator gives job pods."""
    options = [
        "run",
        "--rm",
        f"--user={POD_USER}",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,mode=1777",
        "--env=HOME=/tmp",
        "--network=none",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--shm-size=256m",
    ]
    if workdir:
        options.append(f"--workdir={workdir}")
    return options


def docker_compatible(engine: Engine, options: list[str]) -> list[str]:
    # Docker has no --read-only-tmpfs (its --read-only mounts nothing writable by itself).
    return [o for o in options if engine.program == "podman" or not o.startswith("--read-only-")]


def run_in(
    engine: Engine, image: BuiltImage, args: list[str], *, extra: list[str] | None = None
) -> str:
    options = docker_compatible(engine, pod_like()) + (extra or [])
    result = engine.run([*options, image.ref, *args], timeout=RUN_SECONDS)
    assert result.returncode == 0, (
        f"{' '.join(args)} in {image.ref} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


# ---- both images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["operator", "runtime"])
def test_image_is_saved_as_the_archive_the_contract_names(
    built_images: dict[str, BuiltImage], engine: Engine, name: str
) -> None:
    image = built_images[name]
    inspected = engine.run(["image", "inspect", "--format", "{{.Id}}", image.ref], timeout=60)

    assert image.archive.name == f"{name}-{image.record['key']}.tar"
    assert image.archive.stat().st_size > 0
    assert inspected.stdout.strip().removeprefix("sha256:") == str(
        image.record["imageId"]
    ).removeprefix("sha256:")
    assert image.size_bytes > 0


@pytest.mark.parametrize("name", ["operator", "runtime"])
def test_image_runs_as_the_pod_user_by_default(
    built_images: dict[str, BuiltImage], engine: Engine, name: str
) -> None:
    image = built_images[name]
    options = [o for o in docker_compatible(engine, pod_like()) if not o.startswith("--user")]

    result = engine.run([*options, "--entrypoint=id", image.ref, "-u"], timeout=RUN_SECONDS)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == POD_USER.split(":")[0]


SOURCE_PACKAGES = {"fedcore": REPO / "fedcore", "fedop": REPO / "operator" / "fedop"}
"""fedkube's packages and where this checkout keeps them."""

DIGEST_PROBE = (
    "import hashlib, importlib.util, json, pathlib\n"
    "out = {}\n"
    f"for name in {sorted(SOURCE_PACKAGES)!r}:\n"
    "    root = pathlib.Path(importlib.util.find_spec(name).submodule_search_locations[0])\n"
    "    for f in sorted(root.rglob('*.py')):\n"
    "        out[f'{name}/{f.relative_to(root)}'] = hashlib.sha256(f.read_bytes()).hexdigest()\n"
    "print(json.dumps(out))\n"
)


def checkout_digests() -> dict[str, str]:
    return {
        f"{name}/{f.relative_to(root)}": hashlib.sha256(f.read_bytes()).hexdigest()
        for name, root in SOURCE_PACKAGES.items()
        for f in sorted(root.rglob("*.py"))
    }


@pytest.mark.parametrize("name", ["operator", "runtime"])
def test_image_holds_this_checkouts_fedkube(
    built_images: dict[str, BuiltImage], engine: Engine, name: str
) -> None:
    """Every source file in the image is the checkout's: a builder that reuses a cached layer
    after a source change (podman did, with the wheel only bind-mounted) fails here."""
    out = run_in(engine, built_images[name], ["-c", DIGEST_PROBE], extra=["--entrypoint=python3"])

    in_image = json.loads(out.strip().splitlines()[-1])
    expected = checkout_digests()
    stale = sorted(k for k in expected.keys() & in_image.keys() if expected[k] != in_image[k])
    assert not stale, f"{name} image holds other versions of {stale[:10]} than this checkout"
    assert in_image.keys() == expected.keys(), (
        f"only in the checkout: {sorted(expected.keys() - in_image.keys())[:10]}; "
        f"only in the image: {sorted(in_image.keys() - expected.keys())[:10]}"
    )


# ---- operator image: kopf and fedop, no torch -------------------------------------------------


def test_operator_image_runs_kopf(built_images: dict[str, BuiltImage], engine: Engine) -> None:
    image = built_images["operator"]

    version = run_in(engine, image, ["--version"])
    usage = run_in(engine, image, ["run", "--help"])

    assert version.startswith("kopf, version ")
    assert "--standalone" in usage
    assert "--liveness" in usage


def test_operator_image_imports_every_fedop_module_without_torch(
    built_images: dict[str, BuiltImage], engine: Engine
) -> None:
    probe = (
        "import importlib, importlib.util, pkgutil, sys\n"
        "import fedop\n"
        "for m in pkgutil.walk_packages(fedop.__path__, 'fedop.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(sorted(set({TORCH_STACK!r}) & set(sys.modules)))\n"
        f"print([n for n in {TORCH_STACK!r} if importlib.util.find_spec(n)])\n"
    )

    out = run_in(engine, built_images["operator"], ["-c", probe], extra=["--entrypoint=python3"])

    imported, installed = out.strip().splitlines()[-2:]
    assert imported == "[]", f"importing fedop pulled in {imported}"
    assert installed == "[]", f"the operator image carries {installed}"


# ---- runtime image: a real run, as a pod would ------------------------------------------------


@pytest.mark.parametrize("command", pod_commands(), ids=lambda c: c[1])
def test_runtime_image_has_the_pod_commands(
    built_images: dict[str, BuiltImage], engine: Engine, command: list[str]
) -> None:
    _, subcommand, *arguments = command
    flags = [a for a in arguments if a.startswith("--")]

    usage = run_in(engine, built_images["runtime"], [subcommand, "--help"])

    for flag in flags:
        assert flag in usage, f"`fedkube {subcommand}` in the image has no {flag} option"


def synthetic_job() -> dict[str, object]:
    return {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "image-check"},
        "spec": {
            "rounds": 1,
            "seed": 0,
            "task": {
                "entrypoint": "fedcore.tasks.synthetic:task",
                "config": {"params": 2000, "samples": 64, "testSamples": 64, "batchSize": 16},
            },
            "strategy": {"name": "fedavg", "minClients": 1, "roundTimeoutSeconds": 300},
            # One client whose DDP group is two processes: gloo over the container's loopback.
            "clients": [{"name": "site-a", "replicas": 1, "procsPerReplica": 2}],
        },
    }


def test_runtime_image_runs_a_round_as_non_root_on_a_read_only_root(
    built_images: dict[str, BuiltImage], engine: Engine, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the container's user (65532) writes the run here
    (work / "job.yaml").write_text(yaml.safe_dump(synthetic_job()))

    out = run_in(
        engine,
        built_images["runtime"],
        ["run", "job.yaml", "--store", "run"],
        extra=[f"--volume={work}:/work", "--workdir=/work"],
    )

    finals = list((work / "run" / "store").rglob("final/round.json"))
    assert len(finals) == 1, f"no final commit; the run printed:\n{out[-3000:]}"
    record = json.loads(finals[0].read_text())
    assert record["rounds"] == 1
    assert (finals[0].parent / "model.safetensors").stat().st_size > 0
    rounds = list((work / "run" / "store").rglob("rounds/000001/round.json"))
    assert json.loads(rounds[0].read_text())["participants"] == ["site-a"]
