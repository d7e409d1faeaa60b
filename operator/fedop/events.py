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
from fedcore.credentials import slot_writer
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
    if record.privacy is not None:
        text += f", epsilon {record.privacy.epsilon:.4g}"
    if record.closed_by == "deadline":
        text += " (closed at its deadline with a quorum)"
    return normal("RoundCommitted", text)


def privacy_budget_reached(record: RoundRecord, total: int) -> Announcement | None:
    """A Normal Event when ``record`` ends the job because the next round would spend more
    privacy than ``strategy.dp.targetEpsilon`` allows; None otherwise."""
    if record.privacy is None or not record.privacy.budget_reached:
        return None
    return normal("PrivacyBudgetReached", record.privacy.stop_message(record.round, total))


def round_problems(
    record: RoundRecord, credentials: Literal["scoped", "shared"] = "scoped"
) -> list[Announcement]:
    """Events for a record's rejected and late updates. Each rejection names whose credential
    wrote the slot: the record's own word, or (records of earlier versions) the job's mode."""
    out = [
        warning(
            "UpdateRejected",
            f"round {record.round}: update from client {r.client} rejected ({r.reason}): "
            f"{r.detail} ("
            + (
                r.writer
                or slot_writer(
                    record.round, r.client, scoped=credentials == "scoped", is_client=True
                )
            )
            + ")",
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
