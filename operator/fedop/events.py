"""Kubernetes Events about a FederatedJob: what ``kubectl describe fj`` tells a person.

``reconcile`` decides what to announce (phase changes, committed rounds, rejected and late
updates, client restarts and drops, failures) and announces each thing once: it compares
with what the status already records, which survives an operator restart. This module words
the announcements (each reason's type and action come from ``fedop.catalogue``, so no other
reason can be announced) and builds the core/v1 Event objects; ``kube`` posts them. The site
operator announces through ``announce_site``, from the FederatedSite's own catalogue.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from fedcore import spec as fs
from fedcore.credentials import slot_writer
from fedcore.layout import RoundRecord
from fedop import catalogue
from fedop.builders import names
from fedop.errors import ApiError, FedopError

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "fedkube.io/operator"
REJECTION_DETAIL_BYTES = 400
"""A rejection's detail in its Event (up to 1000 characters in ``round.json``): room is left
for the writer and the advice within the 1 KiB note."""
REJECTION_WRITER_BYTES = 300
NAME_BYTES = 64
"""A client name or code from a record, as an Event shows it (it may repeat in the advice)."""


@dataclass(frozen=True)
class Announcement:
    type: catalogue.EventType
    """The catalogue's type for ``reason``: a caller never picks it."""
    reason: catalogue.Reason | catalogue.SiteReason
    """CamelCase, as Kubernetes Event reasons are (``RoundCommitted``, ``ClientDropped``)."""
    message: str
    """What happened, then what to do (``fedop.catalogue.message``), within 1 KiB."""
    once: str | None = None
    """The announced thing's identity within its object (``round-3-committed``), for news
    that must show exactly once: the Event's name derives from it, so the executor posts it
    before the status that records it, and a repeat after a crash between the two is
    refused by the API server (409) instead of shown twice. None: a random name, posted
    after the status (at most once)."""


def announce(
    reason: catalogue.Reason,
    what: str,
    *,
    cause: str | None = None,
    once: str | None = None,
    **fields: object,
) -> Announcement:
    """The Event for ``reason``: its type and action come from the catalogue, ``what``
    happened from the caller; ``cause`` picks one of the reason's actions; ``once`` is
    ``Announcement.once``."""
    return _announce(reason, catalogue.CATALOGUE[reason], what, cause, once, fields)


def announce_site(
    reason: catalogue.SiteReason,
    what: str,
    *,
    cause: str | None = None,
    once: str | None = None,
    **fields: object,
) -> Announcement:
    """``announce`` about a FederatedSite: the type and the site's action come from
    ``catalogue.SITE_CATALOGUE``."""
    return _announce(reason, catalogue.SITE_CATALOGUE[reason], what, cause, once, fields)


def _announce(
    reason: catalogue.Reason | catalogue.SiteReason,
    entry: catalogue.Entry,
    what: str,
    cause: str | None,
    once: str | None,
    fields: Mapping[str, object],
) -> Announcement:
    if entry.event is None:
        raise ValueError(f"{reason} is a condition reason, never an Event")
    text = catalogue.compose(entry, what, cause=cause, limit=catalogue.EVENT_NOTE_BYTES, **fields)
    return Announcement(entry.event, reason, text, once)


def split_once(
    announcements: Iterable[Announcement],
) -> tuple[list[Announcement], list[Announcement]]:
    """(the ``once`` announcements, the rest), each in its order."""
    items = list(announcements)
    return [a for a in items if a.once is not None], [a for a in items if a.once is None]


def normal(reason: catalogue.Reason, what: str) -> Announcement:
    """``announce`` for a reason the catalogue calls Normal (no cause, no fields)."""
    return _typed("Normal", announce(reason, what))


def warning(reason: catalogue.Reason, what: str) -> Announcement:
    """``announce`` for a reason the catalogue calls Warning (no cause, no fields)."""
    return _typed("Warning", announce(reason, what))


def _typed(expected: catalogue.EventType, announcement: Announcement) -> Announcement:
    if announcement.type != expected:
        raise ValueError(f"{announcement.reason} is a {announcement.type} Event, not {expected}")
    return announcement


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
    return announce("RoundCommitted", text, once=f"round-{record.round}-committed")


def privacy_budget_reached(record: RoundRecord, total: int) -> Announcement | None:
    """A Normal Event when ``record`` ends the job because the next round would spend more
    privacy than ``strategy.dp.targetEpsilon`` allows; None otherwise."""
    if record.privacy is None or not record.privacy.budget_reached:
        return None
    return announce(
        "PrivacyBudgetReached",
        record.privacy.stop_message(record.round, total),
        once=f"round-{record.round}-budget",
    )


def round_problems(
    job: names.JobRef, record: RoundRecord, credentials: Literal["scoped", "shared"] = "scoped"
) -> list[Announcement]:
    """Events for a record's rejected and late updates. Each rejection names whose credential
    wrote the slot: the record's own word, or (records of earlier versions) the job's mode.
    The record verified, but its client names, codes and details repeat what the store held:
    they are cleaned and cut (``round.json`` keeps them whole)."""
    out = []
    for i, r in enumerate(record.rejected):
        client, code = _short(r.client), _short(r.reason)
        writer = r.writer or slot_writer(
            record.round, r.client, scoped=credentials == "scoped", is_client=True
        )
        what = (
            f"round {record.round}: update from client {client} rejected ({code}): "
            f"{_short(r.detail, REJECTION_DETAIL_BYTES)} "
            f"({_short(writer, REJECTION_WRITER_BYTES)})"
        )
        known = r.reason in catalogue.CATALOGUE["UpdateRejected"].causes
        out.append(
            announce(
                "UpdateRejected",
                what,
                cause=r.reason if known else None,
                once=f"round-{record.round}-rejected-{i}",
                client=client,
                child=names.client_job(job, client),
                aggregator=names.aggregator_job(job),
            )
        )
    out += [
        announce(
            "LateUpdate",
            f"update from client {_short(late.client)} for round {late.round} arrived after "
            "the round closed; ignored",
            client=_short(late.client),
            once=f"round-{record.round}-late-{i}",
        )
        for i, late in enumerate(record.late)
    ]
    return out


def _short(text: str, limit: int = NAME_BYTES) -> str:
    return catalogue.clip(catalogue.clean(text), limit)


class EventPoster(Protocol):
    def post_event(self, event: Mapping[str, Any]) -> None: ...


def post(poster: EventPoster, job: names.JobRef, note: Announcement, now: datetime) -> None:
    """Post the Event for ``note`` (``fedop.kube.Kube`` posts). A refused Event is logged,
    never an error of the pass; a 409 for an ``once`` announcement means an earlier pass
    already showed it."""
    try:
        poster.post_event(event_object(job, note, now))
    except ApiError as e:
        if e.status == 409 and note.once is not None:
            log.debug("%s %s/%s: already announced", note.reason, job.namespace, job.name)
        else:
            log.warning("could not post event %s for %s: %s", note.reason, job.name, e)
        return
    except FedopError as e:
        log.warning("could not post event %s for %s: %s", note.reason, job.name, e)
        return
    log.info("%s %s/%s: %s", note.reason, job.namespace, job.name, note.message)


def event_name(job: names.JobRef, announcement: Announcement) -> str:
    """``<object>.<16 hex>``, as kubectl names Events: random, or for an ``once``
    announcement a digest of the object's uid, kind and the identity (the same thing about
    the same object always gets the same name; a recreated object, a new uid)."""
    if announcement.once is None:
        return f"{job.name}.{secrets.token_hex(8)}"
    identity = f"{job.kind}\0{job.uid}\0{announcement.once}".encode()
    return f"{job.name}.{hashlib.sha256(identity).hexdigest()[:16]}"


def event_object(
    job: names.JobRef, announcement: Announcement, now: datetime, *, count: int = 1
) -> dict[str, Any]:
    """A core/v1 Event about the FederatedJob (``kubectl describe fj`` lists it), or about
    the FederatedSite ``job`` names by its ``kind``."""
    stamp = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    message = catalogue.clip(catalogue.clean(announcement.message), catalogue.EVENT_NOTE_BYTES)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(job, announcement),
            "namespace": job.namespace,
            "labels": names.job_labels(job),
        },
        "involvedObject": {
            "apiVersion": f"{fs.API_GROUP}/{fs.API_VERSION}",
            "kind": job.kind,
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
