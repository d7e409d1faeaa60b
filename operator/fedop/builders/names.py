"""Deterministic names, labels and owner references of a FederatedJob's children.

Names follow the operator contract (DESIGN.md): ``<job>-spec``, ``<job>-<client>`` (Service,
Indexed Job and NetworkPolicy), ``<job>-<client>-key`` (Secret), ``<job>-commit-key`` (the
aggregator's commit signing key) and ``<job>-aggregator`` (Job and NetworkPolicy). The spec
models and the CRD keep them within DNS limits; ``check_names`` repeats the check for objects
that slipped past an older CRD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fedcore import spec as fs

MANAGED_BY = "fedkube"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "fedkube.io/job"
LABEL_ROLE = "fedkube.io/role"
LABEL_CLIENT = "fedkube.io/client"
ANNOTATION_COMMIT_PUBLIC_KEY = "fedkube.io/commit-public-key"
"""On the ``<job>-commit-key`` Secret: its public key as PEM text. Secrets are listed as
metadata only, so this is how a pass learns the public key without reading the private one."""
ANNOTATION_RESTARTS = "fedkube.io/restarts"
"""On a client Job: how many times the operator has restarted this client's group before it
(the Job carries it so a restarted operator counts on, even without the status)."""
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RESERVED_CLIENT_NAMES = fs.RESERVED_CLIENT_NAMES
"""A client of such a name would take another child's name (value: whose)."""

Role = Literal["aggregator", "client"]


@dataclass(frozen=True)
class JobRef:
    """The identity of one FederatedJob: what every child's name and owner reference need."""

    name: str
    namespace: str
    uid: str
    kind: str = fs.KIND
    """The owner's kind: ``FederatedJob``, or ``FederatedSite`` for a site's group (whose
    children the same builders make in the site's cluster)."""


def spec_configmap(job: JobRef) -> str:
    return f"{job.name}-spec"


def key_secret(job: JobRef, client: str) -> str:
    return f"{job.name}-{client}-key"


def commit_key_secret(job: JobRef) -> str:
    return f"{job.name}-commit-key"


def client_network_policy(job: JobRef, client: str) -> str:
    return f"{job.name}-{client}"


def aggregator_network_policy(job: JobRef) -> str:
    return f"{job.name}-aggregator"


def client_service(job: JobRef, client: str) -> str:
    return f"{job.name}-{client}"


def client_job(job: JobRef, client: str) -> str:
    return f"{job.name}-{client}"


def aggregator_job(job: JobRef) -> str:
    return f"{job.name}-aggregator"


def master_addr(job: JobRef, client: str) -> str:
    """DNS name of rank 0 of a client group: pod host name ``<job>-<client>-0`` under the
    client's headless Service."""
    return f"{client_job(job, client)}-0.{client_service(job, client)}"


def job_labels(job: JobRef) -> dict[str, str]:
    """Labels every child carries; ``fedkube.io/job`` selects all of a job's children."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: job.name}


def labels(job: JobRef, role: Role | None = None, client: str | None = None) -> dict[str, str]:
    out = job_labels(job)
    if role is not None:
        out[LABEL_ROLE] = role
    if client is not None:
        out[LABEL_CLIENT] = client
    return out


def children_selector(job: JobRef) -> str:
    """Label selector of every object the job owns (for list calls)."""
    return f"{LABEL_JOB}={job.name},{LABEL_MANAGED_BY}={MANAGED_BY}"


def owner_reference(job: JobRef) -> dict[str, Any]:
    """Makes the child garbage-collected with its FederatedJob (``controller: true``)."""
    return {
        "apiVersion": f"{fs.API_GROUP}/{fs.API_VERSION}",
        "kind": job.kind,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    job: JobRef, name: str, role: Role | None = None, client: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, role, client),
        "ownerReferences": [owner_reference(job)],
    }


def check_names(job: JobRef, spec: fs.FederatedJobSpec) -> list[tuple[str, str]]:
    """Problems (field, message) with the names children would get; empty when all fit."""
    problems: list[tuple[str, str]] = []
    if len(aggregator_job(job)) > fs.MAX_HOST_NAME:
        problems.append(
            (
                "metadata.name",
                f"{job.name!r} is too long: the aggregator Job {aggregator_job(job)!r} must fit in "
                f"{fs.MAX_HOST_NAME} characters; shorten the job name",
            )
        )
    if not job.name[:1].isalpha():
        problems.append(
            (
                "metadata.name",
                f"{job.name!r} must start with a letter: it prefixes Service names "
                "(DNS-1035 labels)",
            )
        )
    for index, client in enumerate(spec.clients):
        if client.name in RESERVED_CLIENT_NAMES:
            problems.append(
                (
                    f"spec.clients[{index}].name",
                    f"{client.name!r} is reserved ({RESERVED_CLIENT_NAMES[client.name]}); "
                    "rename the client",
                )
            )
        host = f"{client_job(job, client.name)}-{client.replicas - 1}"
        if len(host) > fs.MAX_HOST_NAME:
            problems.append(
                (
                    f"spec.clients[{index}].name",
                    f"pod host name {host!r} has {len(host)} characters "
                    f"(limit {fs.MAX_HOST_NAME}); shorten the job name or the client name",
                )
            )
    return problems
