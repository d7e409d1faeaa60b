"""The product, end to end: `helm install`, `kubectl apply -f examples/digits-k8s.yaml`, and the
job trains across three clients of two pods each to Succeeded, visible in `kubectl get fj`.

One run of the example (module fixture) is looked at from several sides: the status, the
Events, the store, the columns, and finally its deletion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.handle import ClusterHandle
from tests.fixtures.minio import MinioServer
from tests.fixtures.operator import FedJobs, OperatorInstall
from tests.fixtures.terminal import Terminal

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 10
"""The example's rounds; the test trusts the file rather than overriding it."""


@dataclass(frozen=True)
class Run:
    jobs: FedJobs
    name: str
    status: dict[str, Any]
    obj: dict[str, Any]
    watched: str
    """The terminal after ``fedkube watch digits`` ran beside the job (typed before it ran)."""


@pytest.fixture(scope="module")
def digits(
    cluster: ClusterHandle,
    fedkube_operator: OperatorInstall,
    pod_minio: MinioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    namespace = cluster.create_namespace("digits")
    jobs = FedJobs(
        cluster, fedkube_operator, pod_minio, namespace, tmp_path_factory.mktemp("digits")
    )
    manifest = jobs.example()
    jobs.apply(manifest)
    with Terminal("watch", user_env(cluster, pod_minio)) as terminal:
        cluster.wait_for(lambda: "digits-spec" in jobs.owned("digits")["configmaps"] or None,
                         120, "the job's ConfigMap (its job file and public key)")  # fmt: skip
        watch_cluster_job(terminal, "digits", namespace, cluster)
        status = jobs.wait_for_phase("digits", "Succeeded", "Failed", timeout=720)
        watched = terminal.wait_for("watch exited", timeout=120)
    obj = jobs.get("digits")
    assert obj is not None
    try:
        yield Run(jobs, "digits", status, obj, watched)
    finally:
        cluster.delete_namespace(namespace)


def user_env(cluster: ClusterHandle, minio: MinioServer) -> dict[str, str]:
    """A person's shell: kubectl and a kubeconfig, and read access to the bucket."""
    return {
        **{k: v for k, v in cluster.env().items() if k in ("PATH", "KUBECONFIG", "HOME")},
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
        "PYTHONPATH": str(REPO),
        "TERM": "xterm-256color",
    }


def watch_cluster_job(
    terminal: Terminal, name: str, namespace: str, cluster: ClusterHandle
) -> None:
    terminal.type([sys.executable, "-m", "fedcore.cli", "watch", name, "-n", namespace,
                   "--interval", "1", "--kubeconfig", str(cluster.kubeconfig)])  # fmt: skip
    # Runs once watch returns (typed ahead). The typed line is echoed at once, so it must not
    # contain the text it prints: printf's format keeps the two words apart until it runs.
    terminal.type(["printf", "watch %s\\n", "exited"])


def test_operator_runs_in_cluster_under_its_service_account(
    cluster: ClusterHandle, fedkube_operator: OperatorInstall
) -> None:
    pods = json.loads(cluster.run_kubectl(
        "get", "pods", "-n", fedkube_operator.namespace, "-o", "json",
        "-l", "app.kubernetes.io/name=fedkube").stdout)["items"]  # fmt: skip

    (pod,) = pods
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == fedkube_operator.service_account
    assert pod["spec"]["containers"][0]["args"][:3] == ["run", "-m", "fedop"]


def test_example_reaches_succeeded_with_every_round_committed(digits: Run) -> None:
    status = digits.status

    assert status["phase"] == "Succeeded", digits.jobs.explain(digits.name)
    assert status["currentRound"] == status["totalRounds"] == ROUNDS
    assert [h["round"] for h in status["history"]] == list(range(ROUNDS + 1))
    assert status["progress"] == f"{ROUNDS}/{ROUNDS}"
    assert all(len(h["participants"]) == 3 for h in status["history"][1:])


def test_final_accuracy_is_at_least_ninety_percent(digits: Run) -> None:
    assert digits.status["lastRound"]["metrics"]["accuracy"] >= 0.9


def test_status_names_the_model_and_the_store_holds_it(digits: Run) -> None:
    uri = digits.status["model"]["uri"]
    bucket = digits.jobs.minio.bucket

    assert uri.startswith(f"s3://{bucket}/")
    key = uri.removeprefix(f"s3://{bucket}/")
    assert digits.jobs.store_keys(key) == [key]
    assert len(digits.status["model"]["sha256"]) == 64


def test_fedkube_watch_in_a_terminal_followed_the_cluster_job_to_its_end(digits: Run) -> None:
    screen = digits.watched

    assert f"finished {ROUNDS} rounds" in screen
    assert "Succeeded" in screen
    assert "test accuracy" in screen
    assert "restarts" in screen
    for client in ("hospital-a", "hospital-b", "hospital-c"):
        assert client in screen
    assert "Traceback" not in screen


def test_fedkube_plot_draws_a_cluster_job_from_its_store(digits: Run, tmp_path: Path) -> None:
    out = tmp_path / "digits.png"
    env = user_env(digits.jobs.cluster, digits.jobs.minio)

    done = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "plot", digits.name, "-n", digits.jobs.namespace,
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert f"plot: {out}" in done.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # six panels of curves, not an empty canvas


def test_clients_report_their_rounds_samples_and_no_restarts(digits: Run) -> None:
    clients = digits.status["clients"]

    assert sorted(clients) == ["hospital-a", "hospital-b", "hospital-c"]
    for client in clients.values():
        assert client["phase"] == "Succeeded"
        assert client["lastRound"] == ROUNDS
        assert client["numSamples"] > 0
        assert client["restarts"] == 0


def test_conditions_and_events_tell_the_story_once(digits: Run) -> None:
    conditions = {c["type"]: c for c in digits.status["conditions"]}
    events = digits.jobs.events(digits.name)
    committed = [m for r, m in events if r == "RoundCommitted"]

    assert conditions["Created"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "True"
    assert conditions["Running"]["status"] == "False"
    assert sorted(int(m.split()[1].split("/")[0]) for m in committed) == list(range(1, ROUNDS + 1))
    assert [r for r, _ in events].count("Succeeded") == 1
    assert [r for r, _ in events].count("Created") == 1


def test_kubectl_get_fj_shows_the_columns(digits: Run) -> None:
    table = digits.jobs.kubectl("get", "fj", digits.name)
    header, row = table.splitlines()[:2]

    assert header.split()[:4] == ["NAME", "PHASE", "ROUND", "ACCURACY"]
    assert "CLIENTS" in header
    assert row.split()[:3] == [digits.name, "Succeeded", f"{ROUNDS}/{ROUNDS}"]
    assert float(row.split()[3]) >= 0.9


def test_one_job_per_client_plus_the_aggregator_and_no_more(digits: Run) -> None:
    owned = digits.jobs.owned(digits.name)

    assert owned["jobs"] == [
        "digits-aggregator",
        "digits-hospital-a",
        "digits-hospital-b",
        "digits-hospital-c",
    ]
    assert owned["services"] == ["digits-hospital-a", "digits-hospital-b", "digits-hospital-c"]
    assert owned["secrets"] == sorted(
        [
            "digits-aggregator-store",
            "digits-commit-key",
            *(f"digits-hospital-{c}-{kind}" for c in "abc" for kind in ("key", "store")),
        ]
    )
    assert owned["configmaps"] == ["digits-spec"]
    assert owned["networkpolicies"] == [
        "digits-aggregator",
        "digits-hospital-a",
        "digits-hospital-b",
        "digits-hospital-c",
    ]


def test_still_running_client_pods_are_cleaned_up_when_the_job_ends(digits: Run) -> None:
    def running_client_pods() -> list[str]:
        pods = json.loads(
            digits.jobs.kubectl("get", "pods", "-l", "fedkube.io/role=client", "-o", "json")
        )["items"]
        return [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]

    digits.jobs.cluster.wait_for(
        lambda: not running_client_pods() or None,
        120,
        "the client pods to stop (cleanPodPolicy: Running)",
    )
    suspended = json.loads(
        digits.jobs.kubectl("get", "jobs", "-l", "fedkube.io/role=client", "-o", "json")
    )["items"]
    assert all(j["spec"]["suspend"] or j["status"].get("succeeded") for j in suspended)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param(
            lambda s: s["clients"].append(dict(s["clients"][0])),
            "spec.clients",
            id="duplicate client names",
        ),
        pytest.param(
            lambda s: s["strategy"].update(minClients=4),
            "spec.strategy.minClients",
            id="minClients above the number of clients",
        ),
        pytest.param(lambda s: s.update(rounds=-3), "spec.rounds", id="negative rounds"),
    ],
)
def test_invalid_manifest_is_refused_by_kubectl_apply_naming_the_field(
    digits: Run, tmp_path: Path, edit: Any, field: str
) -> None:
    obj = yaml.safe_load(digits.jobs.example(name="refused").read_text())
    edit(obj["spec"])
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(obj))

    result = digits.jobs.apply(path, check=False)

    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert digits.jobs.get("refused") is None
    assert not any(digits.jobs.owned("refused").values())


def test_deleting_the_job_leaves_no_pods_jobs_services_or_secrets(digits: Run) -> None:
    digits.jobs.kubectl("delete", "fj", digits.name, "--wait=true", "--timeout=60s")

    digits.jobs.wait_until_nothing_owned(digits.name)
    secrets = json.loads(digits.jobs.kubectl("get", "secrets", "-o", "json"))["items"]
    assert [s["metadata"]["name"] for s in secrets] == ["s3-creds"]
