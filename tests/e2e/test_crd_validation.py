"""The real API server enforces the CRD: bad FederatedJobs are refused, naming the field.

Everything here goes through ``kubectl`` against the test control plane (the ``cluster``
fixture), the way a user meets it. Refusals use ``--dry-run=server``: the API server runs
the whole validation (schema, CEL rules, strict field validation) and stores nothing, so no
operator that might be running ever sees these objects.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcore import spec as fs
from fedcore.errors import SpecError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "federatedjob.yaml"
CRD_NAME = "federatedjobs.fedkube.io"
Obj = dict[str, Any]


@dataclass(frozen=True)
class Kubectl:
    path: Path
    kubeconfig: Path
    cache_dir: Path
    namespace: str

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(self.path), "--kubeconfig", str(self.kubeconfig),
                "--cache-dir", str(self.cache_dir), "-n", self.namespace, *args,
            ],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def apply(self, obj: Obj, *extra: str) -> subprocess.CompletedProcess[str]:
        return self("apply", *extra, "-f", "-", stdin=json.dumps(obj))


@pytest.fixture(scope="module")
def kubectl(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    namespace = f"crd-validation-{uuid.uuid4().hex[:6]}"
    k = Kubectl(
        path=Path(cluster.kubectl),
        kubeconfig=Path(cluster.kubeconfig),
        cache_dir=tmp_path_factory.mktemp("kubectl-cache"),
        namespace=namespace,
    )
    k.ok("apply", "--server-side", "--force-conflicts", "--field-manager=fedkube-e2e",
         "-f", str(CRD))  # fmt: skip
    k.ok("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    k.ok("create", "namespace", namespace)
    try:
        yield k
    finally:
        k("delete", "namespace", namespace, "--wait=false")


def make_job(name: str = "digits", **spec: Any) -> Obj:
    """A valid FederatedJob; keyword arguments replace top-level spec fields."""
    obj: Obj = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": name},
        "spec": {
            "rounds": 10,
            "task": {"entrypoint": "fedcore.tasks.digits:task", "config": {"hidden": 64}},
            "storage": {
                "endpoint": "http://minio.minio.svc.cluster.local:9000",
                "secretRef": {"name": "s3-creds"},
            },
            "strategy": {"minClients": 2},
            "clients": [
                {"name": "hospital-a", "replicas": 2},
                {"name": "hospital-b", "replicas": 2},
                {"name": "hospital-c", "replicas": 2},
            ],
        },
    }
    obj["spec"].update(copy.deepcopy(spec))
    return obj


def _with(change: Callable[[Obj], None]) -> Obj:
    obj = make_job()
    change(obj)
    return obj


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


INVALID = [
    pytest.param(
        _with(_set("spec.clients.1.name", "hospital-a")),
        "spec.clients[1]: Duplicate value",
        True,
        id="duplicate client names",
    ),
    pytest.param(
        _with(_set("spec.strategy.minClients", 4)),
        "spec.strategy.minClients",
        True,
        id="minClients above the number of clients",
    ),
    pytest.param(_with(_set("spec.rounds", -1)), "spec.rounds", True, id="negative rounds"),
    pytest.param(
        _with(_set("metadata.name", "j" * (fs.MAX_JOB_NAME + 1))),
        "metadata.name",
        True,
        id="job name too long for the aggregator Job",
    ),
    pytest.param(
        make_job("j" * 30, clients=[{"name": "c" * 40}], strategy={}),  # j-c-0: 73 characters
        "spec.clients",
        True,
        id="job and client names too long for pod host names",
    ),
    pytest.param(
        _with(_set("spec.roundz", 3)), 'unknown field "spec.roundz"', True, id="unknown field"
    ),
    pytest.param(
        _with(_set("spec.clients.0.replica", 3)),
        'unknown field "spec.clients[0].replica"',
        True,
        id="unknown field in a client",
    ),
    pytest.param(
        _with(_set("spec.clients.0.name", "aggregator")),
        "spec.clients[0].name",
        True,
        id="client named like the aggregator",
    ),
    pytest.param(
        _with(_set("spec.task.entrypoint", "not a module path")),
        "spec.task.entrypoint",
        True,
        id="entrypoint that is not module:attr",
    ),
    pytest.param(
        _with(_set("spec.strategy.serverMomentum", 0.9)),
        "spec.strategy.serverMomentum",
        True,
        id="server momentum without fedavgm",
    ),
    pytest.param(
        _with(_set("metadata.name", "1digits")),
        "metadata.name",
        True,
        id="job name starting with a digit",
    ),
    pytest.param(
        _with(_set("spec.clients.0.env", [{"name": "PET_NODE_RANK", "value": "0"}])),
        "spec.clients[0].env[0].name",
        True,
        id="reserved env name",
    ),
    pytest.param(
        _with(_set("spec.aggregator", {"env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]})),
        "spec.storage.secretRef",
        True,
        id="credentials in env next to a secretRef",
    ),
    pytest.param(
        _with(_set("spec.storage.prefix", "teams/../other/")),
        "spec.storage.prefix",
        True,
        id="prefix with a '..' segment",
    ),
    pytest.param(
        _with(
            _set(
                "spec.clients.0",
                {
                    "name": "hospital-a",
                    "gpu": True,
                    "procsPerReplica": 2,
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                },
            )
        ),
        "spec.clients[0].resources.limits",
        True,
        id="GPU limit disagreeing with procsPerReplica",
    ),
]


@pytest.mark.parametrize(("obj", "field", "models_agree"), INVALID)
def test_api_server_refuses_invalid_job_naming_the_field(
    kubectl: Kubectl, obj: Obj, field: str, models_agree: bool
) -> None:
    result = kubectl.apply(obj, "--dry-run=server")

    assert result.returncode != 0, f"accepted: {json.dumps(obj)}"
    assert field in result.stderr, result.stderr
    if models_agree:
        with pytest.raises(SpecError):
            fs.parse_job(obj)


def example_jobs() -> list[Any]:
    found = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == fs.KIND:
                found.append(pytest.param(doc, id=path.name))
    return found


@pytest.mark.parametrize("obj", example_jobs())
def test_api_server_accepts_the_examples(kubectl: Kubectl, obj: Obj) -> None:
    obj = copy.deepcopy(obj)
    obj.setdefault("metadata", {}).setdefault("name", "example")

    result = kubectl.apply(obj, "--dry-run=server")

    assert result.returncode == 0, result.stderr


def test_api_server_fills_the_models_defaults(kubectl: Kubectl) -> None:
    obj = make_job(name="defaults")

    created = json.loads(kubectl.ok("apply", "--dry-run=server", "-o", "json", "-f", "-",
                                    stdin=json.dumps(obj)))  # fmt: skip

    assert created["spec"]["strategy"]["roundTimeoutSeconds"] == 600
    assert created["spec"]["clients"][0]["procsPerReplica"] == 1
    assert fs.parse_job(created).spec == fs.parse_job(obj).spec


@pytest.fixture
def running_job(kubectl: Kubectl) -> Iterator[str]:
    """A stored FederatedJob whose status says Running (as the operator would write it)."""
    name = f"frozen-{uuid.uuid4().hex[:6]}"
    kubectl.ok("apply", "-f", "-", stdin=json.dumps(make_job(name=name)))
    status = {"phase": "Running", "progress": "3/10", "activeClients": 3, "currentRound": 3,
              "lastRound": {"round": 3, "metrics": {"accuracy": 0.875}}}  # fmt: skip
    kubectl.ok("patch", "fj", name, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))  # fmt: skip
    try:
        yield name
    finally:
        kubectl("delete", "fj", name, "--wait=false")


def merge_patch(kubectl: Kubectl, name: str, spec: Obj) -> subprocess.CompletedProcess[str]:
    return kubectl("patch", "fj", name, "--type=merge", "-p", json.dumps({"spec": spec}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rounds": 20}, "spec.rounds"),
        ({"seed": 7}, "spec.seed"),
        ({"task": {"config": {"hidden": 32}}}, "spec.task"),
        ({"strategy": {"minClients": 3}}, "spec.strategy"),
        ({"clients": [{"name": "hospital-a", "replicas": 2}]}, "spec.clients"),
    ],
    ids=["rounds", "seed", "task config", "strategy", "clients"],
)
def test_training_fields_cannot_change_while_running(
    kubectl: Kubectl, running_job: str, change: Obj, field: str
) -> None:
    result = merge_patch(kubectl, running_job, change)

    assert result.returncode != 0
    assert f"{field}: Forbidden: cannot change while the job is Running" in result.stderr


def test_suspend_and_status_stay_writable_while_running(kubectl: Kubectl, running_job: str) -> None:
    kubectl.ok("patch", "fj", running_job, "--type=merge",
               "-p", json.dumps({"spec": {"runPolicy": {"suspend": True}}}))  # fmt: skip
    kubectl.ok("patch", "fj", running_job, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": {"phase": "Suspended"}}))  # fmt: skip
    kubectl.ok("patch", "fj", running_job, "--type=merge",
               "-p", json.dumps({"spec": {"runPolicy": {"suspend": False}}}))  # fmt: skip

    stored = json.loads(kubectl.ok("get", "fj", running_job, "-o", "json"))
    assert stored["spec"]["runPolicy"]["suspend"] is False
    assert stored["status"]["phase"] == "Suspended"


def test_training_fields_are_free_again_once_the_job_finished(
    kubectl: Kubectl, running_job: str
) -> None:
    kubectl.ok("patch", "fj", running_job, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": {"phase": "Succeeded"}}))  # fmt: skip

    result = merge_patch(kubectl, running_job, {"rounds": 20})

    assert result.returncode == 0, result.stderr


def test_kubectl_get_shows_phase_round_accuracy_and_clients(
    kubectl: Kubectl, running_job: str
) -> None:
    header, row = kubectl.ok("get", "fj", running_job).splitlines()

    assert header.split() == ["NAME", "PHASE", "ROUND", "ACCURACY", "CLIENTS", "AGE"]
    assert row.split()[:5] == [running_job, "Running", "3/10", "0.875", "3"]


@pytest.mark.parametrize("alias", ["fj", "fedjob", "federatedjobs", "fedkube"])
def test_short_names_and_category_list_jobs(kubectl: Kubectl, running_job: str, alias: str) -> None:
    names = kubectl.ok("get", alias, "-o", "name").split()

    assert f"federatedjob.fedkube.io/{running_job}" in names
