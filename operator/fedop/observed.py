"""What one reconcile pass saw: a FederatedJob's children and its store, as plain values.

``kube`` lists the children and ``store_view`` reads the round records; the functions here turn
the API server's dicts into small frozen views so that ``reconcile`` decides on values that a
test can write by hand (``ChildJob(name=..., failed=True)``) instead of on raw JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcore.layout import FinalRecord, RoundRecord
from fedop.builders import jobs, names


@dataclass(frozen=True)
class ChildJob:
    """A batch Job the FederatedJob owns (a client group or the aggregator)."""

    name: str
    suspended: bool = False
    terminating: bool = False
    """Deletion requested (``deletionTimestamp``): gone once its pods are."""
    complete: bool = False
    failed: bool = False
    """The Job failed, or is about to (``FailureTarget``: its pods are being stopped)."""
    failure: str = ""
    """The Job controller's reason and message for the failure."""
    config_error: bool = False
    """Failed by the ``podFailurePolicy`` rule: a pod exited ``EXIT_CONFIG`` (the job or its
    task is wrong), so no restart can help."""
    active: int = 0
    ready: int | None = None
    """Pods ready; None when the Job controller does not report it."""
    restarts: int = 0
    """``fedkube.io/restarts``: group restarts before this Job was made."""

    @property
    def finished(self) -> bool:
        return self.complete or self.failed

    @property
    def running(self) -> bool:
        if self.finished or self.suspended or self.terminating:
            return False
        return (self.ready or 0) > 0 if self.ready is not None else self.active > 0


@dataclass(frozen=True)
class Children:
    """The children of one FederatedJob found by its label selector, by kind and name."""

    jobs: Mapping[str, ChildJob] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    secret_annotations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Secret name -> its annotations (when store credentials were minted and expire)."""
    commit_public_keys: Mapping[str, str] = field(default_factory=dict)
    """Secret name -> the commit public key (PEM) it announces in its
    ``fedkube.io/commit-public-key`` annotation (Secrets are listed as metadata only)."""
    configmaps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """ConfigMap name -> its data."""
    network_policies: frozenset[str] = frozenset()
    foreign: tuple[str, ...] = ()
    """'Kind/name' of labelled objects another owner controls (a deleted namesake's leftovers)."""


@dataclass(frozen=True)
class RefusedRecord:
    """A commit record in the store that does not verify with the job's public key."""

    key: str
    """Its store key (``rounds/000002/round.json``, ``final/round.json``)."""
    reason: str
    """``unsigned``, ``bad-signature``, ``wrong-round``, ``malformed``."""
    fingerprint: str
    """The public key it was checked against (``sha256:...``)."""
    message: str


@dataclass(frozen=True)
class StoreSnapshot:
    """The job's round protocol state, as far as this pass read it."""

    available: bool = True
    """False when the store could not be read; nothing below is then known."""
    problem: str = ""
    rounds: tuple[RoundRecord, ...] = ()
    """Committed rounds from the first one the status has not folded in yet, ascending."""
    final: FinalRecord | None = None
    final_model_uri: str | None = None
    excluded: Mapping[str, str] | None = None
    """``control/excluded.json`` as stored (empty when absent); None when not read."""
    refused: tuple[RefusedRecord, ...] = ()
    """Records that failed verification; ``rounds`` stops before the first refused round, and
    a refused final record leaves ``final`` None."""


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller"):
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def child_job(obj: Mapping[str, Any]) -> ChildJob:
    meta = obj.get("metadata", {})
    spec = obj.get("spec", {})
    status = obj.get("status") or {}
    complete = failed = config_error = False
    failure = ""
    for cond in status.get("conditions") or ():
        if cond.get("status") != "True":
            continue
        kind = cond.get("type")
        if kind == "Complete":
            complete = True
        elif kind in ("Failed", "FailureTarget"):
            failed = True
            failure = ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
            config_error = cond.get("reason") == jobs.CONFIG_ERROR_REASON
    ready = status.get("ready")
    return ChildJob(
        name=meta.get("name", ""),
        suspended=bool(spec.get("suspend")),
        terminating=meta.get("deletionTimestamp") is not None,
        complete=complete,
        failed=failed and not complete,
        failure=failure,
        config_error=config_error and not complete,
        active=_int(status.get("active")),
        ready=None if ready is None else _int(ready),
        restarts=max(0, _int((meta.get("annotations") or {}).get(names.ANNOTATION_RESTARTS))),
    )


def children(
    owner_uid: str,
    jobs: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    secrets: Sequence[Mapping[str, Any]],
    configmaps: Sequence[Mapping[str, Any]],
    network_policies: Sequence[Mapping[str, Any]] = (),
) -> Children:
    """Sort listed objects into ours (controlled by ``owner_uid``) and foreign ones."""
    foreign: list[str] = []

    def ours(kind: str, items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        kept = []
        for item in items:
            if controller_uid(item) == owner_uid:
                kept.append(item)
            else:
                foreign.append(f"{kind}/{item.get('metadata', {}).get('name', '?')}")
        return kept

    own_jobs = [child_job(j) for j in ours("Job", jobs)]
    own_secrets = ours("Secret", secrets)
    public_keys = {}
    for secret in own_secrets:
        annotations = secret["metadata"].get("annotations") or {}
        value = annotations.get(names.ANNOTATION_COMMIT_PUBLIC_KEY)
        if isinstance(value, str) and value:
            public_keys[secret["metadata"]["name"]] = value
    return Children(
        jobs={j.name: j for j in own_jobs},
        services=frozenset(s["metadata"]["name"] for s in ours("Service", services)),
        secrets=frozenset(s["metadata"]["name"] for s in own_secrets),
        secret_annotations={
            s["metadata"]["name"]: dict(s["metadata"].get("annotations") or {}) for s in own_secrets
        },
        commit_public_keys=public_keys,
        network_policies=frozenset(
            p["metadata"]["name"] for p in ours("NetworkPolicy", network_policies)
        ),
        configmaps={
            c["metadata"]["name"]: dict(c.get("data") or {}) for c in ours("ConfigMap", configmaps)
        },
        foreign=tuple(sorted(foreign)),
    )
