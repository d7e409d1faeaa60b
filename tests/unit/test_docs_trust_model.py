"""docs/cluster.md shows the session policies the operator really sends, for a sample job."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedcore import credentials as fc
from fedcore import spec as fs
from fedop import minting
from fedop.builders import credentials

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


def sample_job() -> fs.FederatedJob:
    return fs.parse_job(
        {
            "apiVersion": f"{fs.API_GROUP}/{fs.API_VERSION}",
            "kind": fs.KIND,
            "metadata": {"name": "digits", "namespace": "fl", "uid": "0f1e2d3c-0000-0000"},
            "spec": {
                "rounds": 10,
                "task": {"entrypoint": "fedcore.tasks.digits:task"},
                "clients": [{"name": "hospital-a"}, {"name": "hospital-b"}],
                "storage": {"endpoint": "http://minio:9000", "secretRef": {"name": "s3-creds"}},
            },
        }
    )


def documented_policies() -> list[object]:
    text = DOC.read_text()
    section = text[text.index("### The policies, for a sample job") :]
    section = section[: section.index("\n### ", 1)]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.DOTALL)]


def test_trust_model_shows_the_policies_session_policy_makes() -> None:
    job = sample_job()

    expected = [
        minting.policy(job, credentials.client_role("hospital-a")),
        minting.policy(job, credentials.AGGREGATOR),
    ]

    assert fs.job_prefix(job) == "fedkube/fl/digits-0f1e2d3c/"
    assert documented_policies() == expected
    assert fc.Role.for_client("hospital-a").client == "hospital-a"


def test_a_scaffold_jobs_client_policy_names_its_own_variate_and_no_other() -> None:
    job = sample_job()
    spec = job.spec.model_copy(
        update={"strategy": job.spec.strategy.model_copy(update={"name": "scaffold"})}
    )
    scaffold = job.model_copy(update={"spec": spec})
    prefix = "arn:aws:s3:::fedkube/fedkube/fl/digits-0f1e2d3c/"

    policy = minting.policy(scaffold, credentials.client_role("hospital-a"))
    aggregator = minting.policy(scaffold, credentials.AGGREGATOR)

    own = policy["Statement"][1]
    assert own["Sid"] == "OwnUpdate"
    assert f"{prefix}clients/hospital-a/scaffold.safetensors" in own["Resource"]
    assert "hospital-b" not in json.dumps(policy)
    assert "clients/" not in json.dumps(aggregator)  # it reads everything, writes no variate
    assert "clients/" not in json.dumps(minting.policy(job, credentials.client_role("hospital-a")))
