"""The ConfigMap ``<job>-spec``: the job file every pod of the job reads.

It holds the whole FederatedJob (apiVersion, kind, metadata name/namespace/uid, the validated
spec with defaults filled in) as ``job.json``, mounted at ``/etc/fedkube/job.json``: the
runtime's ``--job FILE`` (``fedcore.spec.load_job``). The uid is in it because the default
store prefix is derived from it, so a recreated job of the same name never resumes an old run.

It also holds the aggregator's commit public key (``commit-public-key.pem``, next to the job
file: ``FEDKUBE_COMMIT_PUBLIC_KEY_FILE``) that every pod verifies commit records with. It is
public by design; the private half is only in the ``<job>-commit-key`` Secret.
"""

from __future__ import annotations

import json
from typing import Any

from fedcore import spec as fs
from fedop.builders import names

JOB_FILE_KEY = "job.json"
JOB_FILE_DIR = "/etc/fedkube"
JOB_FILE = f"{JOB_FILE_DIR}/{JOB_FILE_KEY}"
COMMIT_PUBLIC_KEY_KEY = "commit-public-key.pem"
COMMIT_PUBLIC_KEY_FILE = f"{JOB_FILE_DIR}/{COMMIT_PUBLIC_KEY_KEY}"


def job_document(job: names.JobRef, spec: fs.FederatedJobSpec) -> dict[str, Any]:
    """The FederatedJob object the runtime loads (no status, no server-side metadata)."""
    meta = fs.ObjectMeta(name=job.name, namespace=job.namespace, uid=job.uid)
    return fs.FederatedJob(metadata=meta, spec=spec).to_object()


def job_file_text(job: names.JobRef, spec: fs.FederatedJobSpec) -> str:
    """``job.json`` exactly as written: sorted keys, so equal specs give equal bytes."""
    return json.dumps(job_document(job, spec), indent=2, sort_keys=True) + "\n"


def spec_configmap(
    job: names.JobRef, spec: fs.FederatedJobSpec, commit_public_key: str
) -> dict[str, Any]:
    """The ConfigMap; ``commit_public_key`` is the PEM text of the job's commit public key."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(job, names.spec_configmap(job)),
        "data": {
            JOB_FILE_KEY: job_file_text(job, spec),
            COMMIT_PUBLIC_KEY_KEY: commit_public_key,
        },
    }
