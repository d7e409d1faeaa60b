"""A site on the real control plane: the operator launches nothing for a site client, shows
it as waiting, writes its join bundle Secret; the bundle exported with ``fedkube site bundle``
lets ``fedkube client --bundle`` (two gloo processes on this machine, no cluster access, no
AWS variables) take part in every round, and the job succeeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.handle import ClusterHandle
from tests.fixtures.minio import MinioServer
from tests.fixtures.operator import FedJobs, Obj, OperatorInstall

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
JOB = "sited"
SITE = "hospital-c"
ROUNDS = 2


def with_a_site(obj: Obj) -> None:
    spec = obj["spec"]
    spec["rounds"] = ROUNDS
    spec["strategy"]["minClients"] = 3  # every round waits for the site
    for client in spec["clients"]:
        client["replicas"] = 1
        if client["name"] == SITE:
            for field in ("resources", "replicas"):
                client.pop(field, None)
            client["site"] = {"timeoutSeconds": 600}


def site_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
    return {**env, "PYTHONPATH": str(REPO)}


def test_a_site_joins_a_cluster_job_through_its_exported_bundle(
    cluster: ClusterHandle,
    fedkube_operator: OperatorInstall,
    pod_minio: MinioServer,
    tmp_path: Path,
) -> None:
    namespace = cluster.create_namespace("sites")
    jobs = FedJobs(cluster, fedkube_operator, pod_minio, namespace, tmp_path)
    try:
        jobs.apply(jobs.example(name=JOB, edit=with_a_site))
        waiting = jobs.wait_until(
            JOB,
            lambda s: (
                (s.get("clients") or {})
                .get(SITE, {})
                .get("message", "")
                .startswith("Waiting for site")
            ),
            "to wait for its site",
            timeout=180,
        )
        cluster.wait_for(
            lambda: jobs.kubectl("get", "secret", f"{JOB}-{SITE}-join", check=False) or None,
            timeout=120,
            what="the join bundle Secret",
        )
        bundle = tmp_path / "site.json"
        exported = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedcore.cli",
                "site",
                "bundle",
                JOB,
                SITE,
                "-n",
                namespace,
                "--kubeconfig",
                str(cluster.kubeconfig),
                "-o",
                str(bundle),
            ],
            env={**cluster.env(), "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert exported.returncode == 0, exported.stderr
        site = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedcore.cli",
                "client",
                "--bundle",
                str(bundle),
                "--nproc-per-node",
                "2",
            ],
            env=site_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        final = jobs.wait_for_phase(JOB, "Succeeded", "Failed", timeout=300)

        assert site.returncode == 0, site.stderr[-4000:]
        assert final["phase"] == "Succeeded", jobs.explain(JOB)
        assert waiting["clients"][SITE]["phase"] == "Pending"
        owned = jobs.owned(JOB)
        for kind in ("jobs", "services", "networkpolicies"):
            assert f"{JOB}-{SITE}" not in owned[kind], owned
        assert f"{JOB}-{SITE}-join" in owned["secrets"]
        assert not [p for p in owned["pods"] if SITE in p]
        mine: dict[str, Any] = final["clients"][SITE]
        assert (mine["phase"], mine["lastRound"]) == ("Succeeded", ROUNDS)
        assert mine["lastSeen"]
        assert SITE in final["lastRound"]["participants"]
        data = json.loads(bundle.read_text())
        assert data["store"]["endpoint"] == pod_minio.endpoint
        assert data["credentials"]["sessionToken"]
    finally:
        cluster.delete_namespace(namespace)
