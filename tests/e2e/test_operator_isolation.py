"""A job's commits and its network are its own: a forged commit record is refused by every
client and reported, and the job's NetworkPolicies select exactly the right pods.

One job (module fixture) is attacked the way an insider holding the job's own store
credential could: before the aggregator commits round 0, the attacker writes round 0's model
and ``round.json`` (well formed, selecting every client, signed with the attacker's key). The
record is create-if-absent, so the real aggregator can never write it: it stops on the
forgery (and keeps being restarted until its Job's retries are spent), while every client
refuses the record, names the job's key, and waits. Its pods stay up meanwhile, which is when
the NetworkPolicies are checked against the pods the API server lists.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import layout
from fedcore import spec as fs
from fedcore.commit_signing import CommitSigner, verifier_from_pem
from fedcore.store.s3 import S3Config, S3Store
from fedcore.weights import save_weights, sha256_file
from fedop.builders import names, network
from tests.cluster.handle import ClusterHandle
from tests.fixtures.minio import MinioServer
from tests.fixtures.operator import FedJobs, OperatorInstall

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "forged"
CLIENTS = {"hospital-a": 2, "hospital-b": 1}
"""Client -> replicas: one group of two pods (a DDP group to isolate), one of one."""
WAIT_SECONDS = 300


@dataclass(frozen=True)
class Attacked:
    jobs: FedJobs
    uid: str
    prefix: str
    store: S3Store


def forge_round_zero(store: S3Store) -> None:
    """The attacker's model and commit record of round 0, signed with the attacker's key."""
    forger = CommitSigner(Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attacker.safetensors"
        save_weights(path, {"backdoor": torch.ones(4)}, {"kind": "global", "round": 0})
        store.put_file(layout.global_key(0), path)
        sha = sha256_file(path)
    now = layout.utcnow()
    record = layout.RoundRecord(
        round=0,
        model_key=layout.global_key(0),
        model_sha256=sha,
        started_at=now,
        next=layout.NextRound(round=1, selected=sorted(CLIENTS), deadline=now),
        closed_by="initial",
    )
    store.put_bytes(layout.round_record_key(0), forger.sign("round", record).to_json())


@pytest.fixture(scope="module")
def attacked(
    cluster: ClusterHandle,
    fedkube_operator: OperatorInstall,
    pod_minio: MinioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Attacked]:
    namespace = cluster.create_namespace("isolation")
    jobs = FedJobs(
        cluster, fedkube_operator, pod_minio, namespace, tmp_path_factory.mktemp("isolation")
    )
    prefix = f"isolation/{namespace}/"

    def edit(obj: dict[str, Any]) -> None:
        obj["spec"]["storage"]["prefix"] = prefix
        obj["spec"]["clients"] = [
            {**c, "replicas": CLIENTS[c["name"]]}
            for c in obj["spec"]["clients"]
            if c["name"] in CLIENTS
        ]
        obj["spec"]["runPolicy"]["backoffLimit"] = 6  # keep the pods up while we look

    # The job's own credential (the Secret its spec names) writes the forgery.
    store = S3Store(
        S3Config(endpoint=pod_minio.endpoint, bucket=pod_minio.bucket, prefix=prefix),
        session=pod_minio.session(),
    )
    forge_round_zero(store)
    jobs.apply(jobs.example(name=NAME, rounds=2, edit=edit))
    obj = jobs.get(NAME)
    assert obj is not None
    try:
        yield Attacked(jobs, obj["metadata"]["uid"], prefix, store)
    finally:
        cluster.delete_namespace(namespace)


def rank0_log(jobs: FedJobs, client: str) -> str:
    selector = f"fedkube.io/job={NAME},fedkube.io/client={client}"
    pods = [
        p
        for p in jobs.cluster.pods(jobs.namespace, selector)
        if p["metadata"].get("annotations", {}).get(names.COMPLETION_INDEX_ANNOTATION) == "0"
    ]
    return "".join(jobs.kubectl("logs", p["metadata"]["name"], check=False) for p in pods)


def public_key_fingerprint(jobs: FedJobs) -> str:
    """The job's commit key, as its ConfigMap publishes it (made in the operator's 2nd pass)."""
    found: list[str] = []

    def published(_: dict[str, Any]) -> bool:
        out = jobs.kubectl("get", "configmap", f"{NAME}-spec", "-o", "json", check=False)
        if out:
            found.append(json.loads(out)["data"]["commit-public-key.pem"])
        return bool(found)

    jobs.wait_until(NAME, published, "to publish its commit public key", WAIT_SECONDS)
    return verifier_from_pem(found[0].encode()).fingerprint


def test_every_client_refuses_the_forged_record_and_trains_nothing(attacked: Attacked) -> None:
    jobs = attacked.jobs
    fingerprint = public_key_fingerprint(jobs)
    refusal = "refused commit record rounds/000000/round.json (bad-signature)"

    for client in CLIENTS:
        jobs.wait_until(
            NAME,
            lambda _s, c=client: refusal in rank0_log(jobs, c),  # type: ignore[misc]
            f"client {client} to refuse the forged round 0",
            WAIT_SECONDS,
        )
        log = rank0_log(jobs, client)
        assert fingerprint in log
        assert "uploaded update" not in log
    assert jobs.store_keys(f"{attacked.prefix}rounds/000001/") == []
    status = jobs.status(NAME)
    assert status.get("currentRound", 0) == 0
    assert not status.get("history")


def test_the_forgery_is_reported_on_the_job_naming_the_round_and_the_key(
    attacked: Attacked,
) -> None:
    jobs = attacked.jobs
    fingerprint = public_key_fingerprint(jobs)

    status = jobs.wait_until(
        NAME,
        lambda s: any(c.get("type") == "CommitsVerified" for c in s.get("conditions", [])),
        "to report the forged record",
        WAIT_SECONDS,
    )
    events = [m for r, m in jobs.events(NAME) if r == "CommitRecordRefused"]

    (condition,) = [c for c in status["conditions"] if c["type"] == "CommitsVerified"]
    assert condition["status"] == "False"
    assert len(events) == 1
    for message in (events[0], condition["message"]):
        assert "rounds/000000/round.json" in message
        assert fingerprint in message


def test_network_policies_select_exactly_each_group_and_the_aggregator(
    attacked: Attacked,
) -> None:
    jobs = attacked.jobs
    policies = {
        p["metadata"]["name"]: p
        for p in json.loads(jobs.kubectl("get", "networkpolicies", "-o", "json"))["items"]
    }

    def listed(selector: dict[str, Any]) -> set[str]:
        """Pods the API server selects with a policy's selector."""
        labels = ",".join(f"{k}={v}" for k, v in selector["matchLabels"].items())
        return {p["metadata"]["name"] for p in jobs.cluster.pods(jobs.namespace, labels)}

    def of_job(job_name: str) -> set[str]:
        """Pods the Job controller made for one of our Jobs (its own label, not ours)."""
        selector = f"batch.kubernetes.io/job-name={job_name}"
        return {p["metadata"]["name"] for p in jobs.cluster.pods(jobs.namespace, selector)}

    assert sorted(policies) == sorted([f"{NAME}-aggregator", *(f"{NAME}-{c}" for c in CLIENTS)])
    for policy in policies.values():
        assert policy["metadata"]["ownerReferences"][0]["uid"] == attacked.uid
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    aggregator = policies[f"{NAME}-aggregator"]["spec"]
    assert listed(aggregator["podSelector"]) == of_job(f"{NAME}-aggregator") != set()
    assert aggregator.get("ingress", []) == []
    for client, replicas in CLIENTS.items():
        spec = policies[f"{NAME}-{client}"]["spec"]
        group = of_job(f"{NAME}-{client}")
        (rule,) = spec["ingress"]
        (peer,) = rule["from"]
        assert len(group) >= replicas
        assert listed(spec["podSelector"]) == listed(peer["podSelector"]) == group


def test_the_builders_policies_pass_server_side_dry_run(attacked: Attacked) -> None:
    jobs = attacked.jobs
    obj = jobs.get(NAME)
    assert obj is not None
    spec = fs.parse_spec(obj["spec"])
    ref = names.JobRef(NAME, jobs.namespace, attacked.uid)
    built = network.network_policies(ref, spec)
    for policy in built:
        policy["metadata"]["name"] += "-dry-run"
    manifest = jobs.workdir / "policies.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": built}))

    out = jobs.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-f", str(manifest), "-o", "name"
    )

    assert sorted(out.split()) == sorted(
        f"networkpolicy.networking.k8s.io/{p['metadata']['name']}" for p in built
    )
