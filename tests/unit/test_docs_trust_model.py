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
