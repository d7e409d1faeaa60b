"""Scoped store credentials on the real control plane: each participant gets its own minted
credential, never the job's; a participant that attacks the store is refused every time
without changing a single bit of the global models; credentials rotate under running pods.

Three short jobs of the digits task run side by side (module fixture): two the same but for
one client of the second, whose task (tests/e2e/attacker_task.py) tries every attack of the
issue before each training pass, and one with ``credentials: shared``. A fourth job is held
mid-round while its credentials rotate. The session's operator rotates every role's
credentials every few seconds (``credentials.refreshSeconds`` in tests/fixtures/operator.py),
so every job here rotates.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedcore import layout
from tests.cluster.handle import ClusterHandle
from tests.e2e.attacker_task import ATTACK_ENV, MARKER
from tests.fixtures.minio import MinioServer
from tests.fixtures.operator import CREDENTIALS_SECRET, FedJobs, Obj, OperatorInstall

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3
CLIENTS = ("hospital-a", "hospital-b", "hospital-c")
ATTACKER = "hospital-b"
ATTACKS = (
    "read-other-update",
    "read-other-manifest",
    "write-other-slot",
    "write-global-model",
    "write-round-record",
    "list",
    "delete-history",
    "delete-own-update",
)
STORE_FAILURES = ("ExpiredToken", "InvalidToken", "InvalidAccessKeyId", "expired", "Traceback")
"""What a pod's log would show had a request been signed with a stale or wrong credential."""


def small_job(attacker: str | None = None, *, shared: bool = False) -> Any:
    """The example made short (3 rounds, one pod per client), with the attacker's task, whose
    attempts only the client named ``attacker`` makes; finished pods stay (with their volumes
    and logs) for the tests to look at."""

    def edit(obj: Obj) -> None:
        spec = obj["spec"]
        spec["rounds"] = ROUNDS
        spec["runPolicy"]["cleanPodPolicy"] = "None"
        if shared:
            spec["storage"]["credentials"] = "shared"
        spec["task"]["entrypoint"] = "tests.e2e.attacker_task:task"
        on_path = [{"name": "PYTHONPATH", "value": str(REPO)}]  # the test task is in tests/
        spec["aggregator"]["env"] = list(on_path)
        for client in spec["clients"]:
            client["replicas"] = 1
            client["env"] = list(on_path)
            if client["name"] == attacker:
                client["env"].append({"name": ATTACK_ENV, "value": "1"})

    return edit


@dataclass(frozen=True)
class Runs:
    jobs: FedJobs
    plain: str
    attacked: str
    shared: str


@pytest.fixture(scope="module")
def runs(
    cluster: ClusterHandle,
    fedkube_operator: OperatorInstall,
    pod_minio: MinioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    namespace = cluster.create_namespace("scoped")
    jobs = FedJobs(
        cluster, fedkube_operator, pod_minio, namespace, tmp_path_factory.mktemp("scoped")
    )
    jobs.apply(jobs.example(name="plain", edit=small_job()))
    jobs.apply(jobs.example(name="attacked", edit=small_job(attacker=ATTACKER)))
    jobs.apply(jobs.example(name="shared", edit=small_job(shared=True)))
    for name in ("plain", "attacked", "shared"):
        jobs.wait_for_phase(name, "Succeeded", "Failed", timeout=600)
    try:
        yield Runs(jobs, "plain", "attacked", "shared")
    finally:
        cluster.delete_namespace(namespace)


def job_pods(jobs: FedJobs, name: str) -> list[Obj]:
    return jobs.cluster.pods(jobs.namespace, f"fedkube.io/job={name}")


def secrets_read_by(pod: Obj) -> set[str]:
    """Every Secret the pod's spec refers to: env, envFrom, volumes, projected sources."""
    found: set[str] = set()
    for container in [*pod["spec"]["containers"], *(pod["spec"].get("initContainers") or [])]:
        for item in container.get("env") or []:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                found.add(ref["name"])
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                found.add(source["secretRef"]["name"])
    for volume in pod["spec"].get("volumes") or []:
        if "secret" in volume:
            found.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "secret" in source:
                found.add(source["secret"]["name"])
    return found


def mounted_files(cluster: ClusterHandle, pod: Obj) -> dict[str, bytes]:
    """The files the pod's containers see in their volumes (read on this machine)."""
    root = cluster.pod_volumes(pod)
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "/.." not in f"/{path.relative_to(root)}"
    }


def secret_data(jobs: FedJobs, name: str) -> tuple[dict[str, str], bytes]:
    """(annotations, credentials.json) of one Secret."""
    secret = json.loads(jobs.kubectl("get", "secret", name, "-o", "json"))
    return (
        secret["metadata"].get("annotations") or {},
        base64.b64decode(secret["data"]["credentials.json"]),
    )


def global_models(jobs: FedJobs, name: str) -> dict[str, str]:
    """Round (or 'final') -> the sha256 of its global model, from the commit records."""
    s3 = jobs.minio.client()
    (prefix,) = {
        k.split("rounds/")[0]
        for k in jobs.store_keys(f"fedkube/{jobs.namespace}/{name}-")
        if "/rounds/" in k
    }
    out = {}
    for r in range(ROUNDS + 1):
        body = s3.get_object(Bucket=jobs.minio.bucket, Key=prefix + layout.round_record_key(r))
        out[str(r)] = json.loads(body["Body"].read())["model_sha256"]
    final = s3.get_object(Bucket=jobs.minio.bucket, Key=prefix + layout.FINAL_RECORD_KEY)
    out["final"] = json.loads(final["Body"].read())["model_sha256"]
    return out


# ---- (a) no pod holds the job's credential --------------------------------------------------


def test_scoped_job_succeeds_with_every_round_committed(runs: Runs) -> None:
    for name in (runs.plain, runs.attacked):
        status = runs.jobs.status(name)
        assert status["phase"] == "Succeeded", runs.jobs.explain(name)
        assert status["currentRound"] == ROUNDS


def test_no_pod_of_a_scoped_job_refers_to_the_jobs_credential(runs: Runs) -> None:
    pods = job_pods(runs.jobs, runs.plain)

    assert len(pods) == len(CLIENTS) + 1
    for pod in pods:
        names = [e["name"] for c in pod["spec"]["containers"] for e in c.get("env") or []]
        assert CREDENTIALS_SECRET not in secrets_read_by(pod), pod["metadata"]["name"]
        assert not [n for n in names if n.startswith("AWS_")], pod["metadata"]["name"]
        labels = pod["metadata"]["labels"]
        role = labels.get("fedkube.io/client") or "aggregator"
        own = f"{runs.plain}-{role}-store"
        others = {f"{runs.plain}-{c}-store" for c in (*CLIENTS, "aggregator")} - {own}
        assert own in secrets_read_by(pod)
        assert not others & secrets_read_by(pod)


def test_the_mounted_files_hold_a_minted_credential_and_nothing_of_the_jobs(runs: Runs) -> None:
    minio = runs.jobs.minio

    for pod in job_pods(runs.jobs, runs.plain):
        files = mounted_files(runs.jobs.cluster, pod)
        mounted = json.loads(files["fedkube-store-credentials/credentials.json"])
        assert mounted["sessionToken"]
        assert mounted["accessKeyId"] != minio.access_key
        for path, data in files.items():
            assert minio.secret_key.encode() not in data, path
            assert minio.access_key.encode() not in data, path


def test_every_role_has_its_own_credentials_secret_owned_by_the_job(runs: Runs) -> None:
    owned = runs.jobs.owned(runs.plain)["secrets"]

    for role in ("aggregator", *CLIENTS):
        assert f"{runs.plain}-{role}-store" in owned
    keys = {secret_data(runs.jobs, f"{runs.plain}-{r}-store")[1] for r in ("aggregator", *CLIENTS)}
    assert len(keys) == len(CLIENTS) + 1  # four different credentials


# ---- (b) an attacking participant ----------------------------------------------------------


def attack_lines(jobs: FedJobs, name: str) -> list[dict[str, Any]]:
    (pod,) = jobs.cluster.pods(
        jobs.namespace, f"fedkube.io/job={name},fedkube.io/client={ATTACKER}"
    )
    log = jobs.cluster.pod_logs(jobs.namespace, pod["metadata"]["name"])
    return [json.loads(line.split(MARKER, 1)[1]) for line in log.splitlines() if MARKER in line]


def test_every_attack_of_the_participant_is_refused_by_the_store(runs: Runs) -> None:
    lines = attack_lines(runs.jobs, runs.attacked)

    assert {line["round"] for line in lines} == set(range(1, ROUNDS + 1))
    assert {line["attack"] for line in lines} == set(ATTACKS)
    refused = [line for line in lines if line["answer"] == "AccessDenied"]
    assert refused == lines, [line for line in lines if line not in refused]


def test_the_attack_changes_no_bit_of_any_global_model(runs: Runs) -> None:
    plain = global_models(runs.jobs, runs.plain)
    attacked = global_models(runs.jobs, runs.attacked)

    assert attacked == plain
    assert len(set(plain.values())) > 1  # the models did change from round to round


def test_the_attacked_job_rejected_no_update_and_took_every_client(runs: Runs) -> None:
    status = runs.jobs.status(runs.attacked)

    assert "UpdateRejected" not in [reason for reason, _ in runs.jobs.events(runs.attacked)]
    assert all(len(h["participants"]) == len(CLIENTS) for h in status["history"][1:])


def test_only_the_attacker_attacked(runs: Runs) -> None:
    assert attack_lines(runs.jobs, runs.plain) == []


# ---- shared: the opt-out, said out loud -----------------------------------------------------


def test_shared_job_runs_with_the_jobs_credential_and_a_warning(runs: Runs) -> None:
    status = runs.jobs.status(runs.shared)
    conditions = {c["type"]: c for c in status["conditions"]}
    warnings = [m for r, m in runs.jobs.events(runs.shared) if r == "SharedCredentials"]

    assert status["phase"] == "Succeeded", runs.jobs.explain(runs.shared)
    assert conditions["SharedCredentials"]["status"] == "True"
    assert "scoped" in conditions["SharedCredentials"]["message"]
    assert len(warnings) == 1
    assert not [s for s in runs.jobs.owned(runs.shared)["secrets"] if s.endswith("-store")]
    for pod in job_pods(runs.jobs, runs.shared):
        assert CREDENTIALS_SECRET in secrets_read_by(pod)


def test_scoped_job_carries_no_shared_warning(runs: Runs) -> None:
    status = runs.jobs.status(runs.plain)

    assert "SharedCredentials" not in {c["type"] for c in status["conditions"]}
    assert "SharedCredentials" not in [r for r, _ in runs.jobs.events(runs.plain)]


# ---- (c) rotation under running pods -------------------------------------------------------


def rotations(jobs: FedJobs, name: str) -> dict[str, int]:
    return {
        role: int(secret_data(jobs, f"{name}-{role}-store")[0]["fedkube.io/credentials-rotations"])
        for role in ("aggregator", *CLIENTS)
    }


def test_credentials_rotate_twice_under_running_pods_without_a_failed_request(
    fedjobs: FedJobs,
) -> None:
    name = "rotating"
    fedjobs.apply(fedjobs.example(name=name, edit=small_job()))
    fedjobs.wait_for_commit(name, 1)
    # Hold one client so the round cannot close while the credentials rotate (twice).
    assert fedjobs.signal_client(name, "hospital-a", signal.SIGSTOP) > 0
    try:
        fedjobs.cluster.wait_for(
            lambda: min(rotations(fedjobs, name).values()) >= 2,
            180,
            "every role's credentials to rotate twice",
            interval=1.0,
        )
        running = [p for p in job_pods(fedjobs, name) if p["status"].get("phase") == "Running"]

        def propagated() -> bool:
            for pod in running:
                labels = pod["metadata"]["labels"]
                role = labels.get("fedkube.io/client") or "aggregator"
                current = secret_data(fedjobs, f"{name}-{role}-store")[1]
                files = mounted_files(fedjobs.cluster, pod)
                if files.get("fedkube-store-credentials/credentials.json") != current:
                    return False
            return True

        fedjobs.cluster.wait_for(propagated, 60, "the running pods to see the rotated files")
    finally:
        fedjobs.signal_client(name, "hospital-a", signal.SIGCONT)

    status = fedjobs.wait_for_phase(name, "Succeeded", "Failed", timeout=600)

    assert status["phase"] == "Succeeded", fedjobs.explain(name)
    assert len(running) == len(CLIENTS) + 1
    for pod in job_pods(fedjobs, name):
        log = fedjobs.cluster.pod_logs(fedjobs.namespace, pod["metadata"]["name"])
        assert not [word for word in STORE_FAILURES if word in log], log[-3000:]
