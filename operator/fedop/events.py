"""Kubernetes Events about a FederatedJob: what ``kubectl describe fj`` tells a person.

``reconcile`` decides what to announce (phase changes, committed rounds, rejected and late
updates, client restarts and drops, failures) and announces each thing once: it compares
with what the status already records, which survives an operator restart. This module words
the announcements and builds the core/v1 Event objects; ``kube`` posts them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fedcore import spec as fs
from fedcore.layout import RoundRecord
from fedop.builders import names

REPORTING_CONTROLLER = "fedkube.io/operator"
MAX_EVENT_MESSAGE = 1024


@dataclass(frozen=True)
class Announcement:
    type: Literal["Normal", "Warning"]
    reason: str
    """CamelCase, as Kubernetes Event reasons are (``RoundCommitted``, ``ClientDropped``)."""
    message: str


def normal(reason: str, message: str) -> Announcement:
    return Announcement("Normal", reason, message)


def warning(reason: str, message: str) -> Announcement:
    return Announcement("Warning", reason, message)


def metrics_text(metrics: Mapping[str, float]) -> str:
    """The metrics a person looks at first: accuracy and loss when present."""
    shown = [f"{k} {metrics[k]:.4g}" for k in ("accuracy", "loss") if k in metrics]
    return ", ".join(shown)


def round_committed(record: RoundRecord, total: int) -> Announcement:
    n = len(record.participants)
    text = f"round {record.round}/{total} committed: {n} participant{'s' if n != 1 else ''}"
    shown = metrics_text(record.metrics)
    if shown:
        text += f", {shown}"
    if record.closed_by == "deadline":
        text += " (closed at its deadline with a quorum)"
    return normal("RoundCommitted", text)


def slot_writer(record_round: int, client: str, credentials: Literal["scoped", "shared"]) -> str:
    """Who wrote a client's update slot, as far as the store's access rules tell.

    With scoped credentials only ``client``'s own credential may write its slot, so what
    sits there is that client's doing, not its victim's; with shared ones anybody holding the
    job's credential could have written it, and the Event must not blame the slot's owner.
    """
    slot = f"rounds/{record_round:06d}/updates/{client}.*"
    if credentials == "scoped":
        return f"written with client {client}'s own store credential: only it may write {slot}"
    return (
        f"who wrote {slot} is unknown: every pod holds the job's store credential "
        "(spec.storage.credentials: shared)"
    )


def round_problems(
    record: RoundRecord, credentials: Literal["scoped", "shared"] = "scoped"
) -> list[Announcement]:
    out = [
        warning(
            "UpdateRejected",
            f"round {record.round}: update from client {r.client} rejected ({r.reason}): "
            f"{r.detail} ({slot_writer(record.round, r.client, credentials)})",
        )
        for r in record.rejected
    ]
    out += [
        normal(
            "LateUpdate",
            f"update from client {late.client} for round {late.round} arrived after the "
            "round closed; ignored",
        )
        for late in record.late
    ]
    return out


def event_object(
    job: names.JobRef, announcement: Announcement, now: datetime, *, count: int = 1
) -> dict[str, Any]:
    """A core/v1 Event about the FederatedJob (``kubectl describe fj`` lists it)."""
    stamp = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    message = announcement.message
    if len(message) > MAX_EVENT_MESSAGE:
        message = message[: MAX_EVENT_MESSAGE - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{job.name}.{secrets.token_hex(8)}",
            "namespace": job.namespace,
            "labels": names.job_labels(job),
        },
        "involvedObject": {
            "apiVersion": f"{fs.API_GROUP}/{fs.API_VERSION}",
            "kind": fs.KIND,
            "name": job.name,
            "namespace": job.namespace,
            "uid": job.uid,
        },
        "type": announcement.type,
        "reason": announcement.reason,
        "message": message,
        "source": {"component": "fedkube-operator"},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": "fedkube-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": count,
    }
