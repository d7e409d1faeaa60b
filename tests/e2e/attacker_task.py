"""A digits task whose client, on purpose, tries every attack of a participant on the store.

The e2e tests run it as one client of a job with scoped credentials (``FEDKUBE_TEST_ATTACK=1``
in that client's env). Before each local training pass, rank 0 of the attacker's group signs
raw S3 requests with its own minted credentials (the mounted ``credentials.json``), as a
curious or hostile participant would, and prints one ``FEDKUBE-ATTACK {json}`` line per
attempt with the store's answer. The attempts touch neither the model nor any random state,
so with the same seed the job's global models are the same bytes as a run without them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from torch import nn
from torch.utils.data import DataLoader

from fedcore import credentials as fc
from fedcore import spec as fs
from fedcore.tasks.base import TaskContext
from fedcore.tasks.digits import DigitsTask

ATTACK_ENV = "FEDKUBE_TEST_ATTACK"
JOB_FILE = "/etc/fedkube/job.json"
MARKER = "FEDKUBE-ATTACK"


def _s3(job: fs.FederatedJob) -> Any:
    creds = fc.read_credentials_file(os.environ[fc.CREDENTIALS_FILE_ENV])
    return boto3.session.Session(
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        region_name=job.spec.storage.region,
    ).client(
        "s3",
        endpoint_url=job.spec.storage.endpoint,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}
        ),
    )


def _outcome(attempt: Callable[[], object]) -> str:
    """The store's answer: its error code, or ``allowed`` when the request went through."""
    try:
        attempt()
    except botocore.exceptions.ClientError as e:
        return str(e.response.get("Error", {}).get("Code", "")) or "error"
    return "allowed"


def attacks(job: fs.FederatedJob, me: str, round_: int) -> dict[str, str]:
    """Every attack of the issue against another client and the aggregator: name -> answer."""
    s3 = _s3(job)
    bucket, prefix = job.spec.storage.bucket, fs.job_prefix(job)
    victim = next(c.name for c in job.spec.clients if c.name != me)
    base = max(round_ - 1, 0)

    def key(rel: str) -> str:
        return f"{prefix}{rel}"

    tries: dict[str, Callable[[], object]] = {
        "read-other-update": lambda: s3.get_object(
            Bucket=bucket, Key=key(f"rounds/{base:06d}/updates/{victim}.safetensors")
        ),
        "read-other-manifest": lambda: s3.get_object(
            Bucket=bucket, Key=key(f"rounds/{round_:06d}/updates/{victim}.json")
        ),
        "write-other-slot": lambda: s3.put_object(
            Bucket=bucket, Key=key(f"rounds/{round_:06d}/updates/{victim}.json"), Body=b"{}"
        ),
        "write-global-model": lambda: s3.put_object(
            Bucket=bucket, Key=key(f"rounds/{round_:06d}/global.safetensors"), Body=b"forged"
        ),
        "write-round-record": lambda: s3.put_object(
            Bucket=bucket, Key=key(f"rounds/{round_:06d}/round.json"), Body=b"{}"
        ),
        "list": lambda: s3.list_objects_v2(Bucket=bucket, Prefix=prefix),
        "delete-history": lambda: s3.delete_object(
            Bucket=bucket, Key=key("rounds/000000/round.json")
        ),
        "delete-own-update": lambda: s3.delete_object(
            Bucket=bucket, Key=key(f"rounds/{base:06d}/updates/{me}.json")
        ),
    }
    return {name: _outcome(attempt) for name, attempt in tries.items()}


class AttackerTask(DigitsTask):
    def train(
        self, model: nn.Module, loader: DataLoader[Any], ctx: TaskContext
    ) -> dict[str, float]:
        if os.environ.get(ATTACK_ENV) == "1" and ctx.rank == 0 and ctx.client is not None:
            job = fs.load_job(JOB_FILE)
            for name, answer in attacks(job, ctx.client, ctx.round).items():
                line = {"round": ctx.round, "attack": name, "answer": answer}
                print(f"{MARKER} {json.dumps(line)}", flush=True)
        return super().train(model, loader, ctx)


task = AttackerTask()
