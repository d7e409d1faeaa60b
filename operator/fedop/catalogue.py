"""Every reason the operator gives, Event or condition, and what a person does about it.

A FederatedJob speaks to people in two places: Events (``kubectl describe fj``, ``kubectl
get events``) and its status conditions. Both carry a CamelCase reason, which is an API
(scripts and alerts match on it, so reasons never change once shipped), and a message, which
must say what happened, naming the object, client, round or field, and what to do, or that
nothing is needed. This module is the single list of reasons: ``Reason`` is the closed set
(mypy refuses any other reason at an emitting call), ``CATALOGUE`` holds for each its Event
type (or None for a condition reason that is never an Event), the conditions that carry it,
when it happens and the action; ``message`` joins what happened (worded by the caller, from
the facts of the pass) with the catalogue's action. ``docs/events.md`` is generated from it
(``python -m fedop.events_doc``) and a unit test fails when the table is stale.

A message is built partly from text the operator does not control: rejection details and
key names read from the store, failure messages of pods. ``clean`` makes that text one
printable line (control and bidirectional-format characters are shown as escapes) and
``message`` cuts what happened, never the action, to fit the limit in bytes (an Event's note
holds 1 KiB).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from fedop.rejections import ADVICE

EventType = Literal["Normal", "Warning"]

Reason = Literal[
    # Events (some also a condition's reason)
    "Created",
    "Running",
    "Suspended",
    "Resumed",
    "RoundCommitted",
    "LateUpdate",
    "UpdateRejected",
    "PrivacyBudgetReached",
    "Succeeded",
    "ClientRestarted",
    "ClientDropped",
    "SharedCredentials",
    "CommitRecordRefused",
    "ConfigurationError",
    "AggregatorFailed",
    "TooFewClients",
    "DeadlineExceeded",
    "InvalidSpec",
    "StoreWithoutSTS",
    # conditions only
    "ChildrenCreated",
    "CreatingChildren",
    "Pending",
    "Failed",
    "RoundsCompleted",
    "ScopedCredentials",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

NOTHING: Final = "Nothing to do."
"""The action of news that needs no one: not repeated in the message."""
EVENT_NOTE_BYTES: Final = 1024
"""Kubernetes' limit on an Event's note (events.k8s.io/v1 refuses a longer one)."""
CONDITION_MESSAGE_BYTES: Final = 32768
"""metav1.Condition's message limit (the CRD's ``maxLength`` is the same, in characters)."""


@dataclass(frozen=True)
class Entry:
    event: EventType | None
    """The Event's type; None for a reason only a condition carries."""
    conditions: tuple[str, ...]
    """Condition types whose reason this is (``fedop.status.ConditionType``)."""
    when: str
    """What happened, for the docs table."""
    action: str
    """What a person does: ``NOTHING``, or sentences ending the message. ``{name}`` fields
    are filled from the emitting call (``job``, ``client``, ``child``, ``aggregator``...)."""
    causes: Mapping[str, str] = field(default_factory=dict)
    """Actions for the reason's distinct causes, where one action cannot fit them all."""

    def action_for(self, cause: str | None) -> str:
        if cause is None:
            return self.action
        return self.causes[cause]


_LOGS = "`kubectl logs job/{child}`"
_NO_REJOIN = "The job goes on without it (a dropped client does not rejoin this job)"
_AGAIN = "create the job again (a new job starts from round 0)"

CATALOGUE: Final[Mapping[Reason, Entry]] = {
    "Created": Entry(
        "Normal",
        (),
        "The first pass made the job's objects: the aggregator Job, one Job and Service per "
        "client group, the signing keys and store credentials.",
        NOTHING,
    ),
    "ChildrenCreated": Entry(
        None, ("Created",), "Every object the job needs exists (condition Created=True).", NOTHING
    ),
    "CreatingChildren": Entry(
        None,
        ("Created",),
        "The operator is still making the job's objects (condition Created=False).",
        "Nothing to do unless it stays False: the operator's log names the object it cannot "
        "create.",
    ),
    "Pending": Entry(
        None,
        ("Running",),
        "The job waits before training (condition Running=False, status.message says for "
        "what): pods being scheduled, the store, the commit key, or a deleted namesake.",
        "Nothing to do unless it stays Pending: `kubectl get pods -l fedkube.io/job={job}` "
        "and `kubectl describe pod` say why a pod does not start (for example no node with "
        "the requested GPUs).",
        causes={
            "store": "Fix what is named (the Secret in spec.storage.secretRef, "
            "spec.storage.endpoint, the bucket); the operator retries on its own.",
            "commit-key": "Nothing to do: the next pass reads it. If it stays, check that "
            "the operator may read Secrets in this namespace (its log says so).",
            "foreign": "Nothing to do: the garbage collector deletes them. If they stay, "
            "delete them by hand.",
        },
    ),
    "Running": Entry(
        "Normal",
        ("Running",),
        "The aggregator and the client groups run (Event when the job starts training; "
        "condition Running=True while it does).",
        NOTHING,
    ),
    "Suspended": Entry(
        "Normal",
        ("Running", "Suspended"),
        "spec.runPolicy.suspend is true: every pod is stopped, the store keeps every round.",
        "To resume, set spec.runPolicy.suspend to false.",
    ),
    "Resumed": Entry(
        "Normal",
        ("Suspended",),
        "spec.runPolicy.suspend went back to false: pods run again and training goes on "
        "from the newest committed round.",
        NOTHING,
    ),
    "RoundCommitted": Entry(
        "Normal",
        (),
        "A round's commit record was verified and folded into the status: round r/total, "
        "its participants and metrics.",
        NOTHING,
    ),
    "LateUpdate": Entry(
        "Normal",
        (),
        "A client's update reached the store after its round had closed; it was ignored.",
        "Nothing to do unless it repeats: then client {client} is slower than "
        "spec.strategy.roundTimeoutSeconds allows; raise it or give the client more "
        "resources.",
    ),
    "UpdateRejected": Entry(
        "Warning",
        (),
        "The aggregator left a client's update out of a round (a reason code from "
        "fedcore.validation.REJECT_REASONS, the detail and whose credential wrote it); the "
        "round went on without it.",
        "The round went on without it. `kubectl logs job/{aggregator}` says more.",
        causes={code: "The round went on without it. " + a for code, a in ADVICE.items()},
    ),
    "PrivacyBudgetReached": Entry(
        "Normal",
        ("Succeeded",),
        "The next round would spend more privacy than strategy.dp.targetEpsilon allows: the "
        "job ends after this round, whose model is the final one.",
        "Nothing to do: the last round's model is the final one. To train further, run a new "
        "job with a larger strategy.dp.targetEpsilon (the privacy spent adds up).",
    ),
    "Succeeded": Entry(
        "Normal",
        ("Running",),
        "The aggregator wrote the final record: every round ran (or the privacy budget was "
        "reached); the message names the final metrics and the model's URI.",
        NOTHING,
    ),
    "RoundsCompleted": Entry(
        None,
        ("Succeeded",),
        "Every round ran and the final model is in the store (status.model).",
        NOTHING,
    ),
    "ClientRestarted": Entry(
        "Warning",
        (),
        "A pod of a client group failed; the whole group was deleted and is made anew from "
        "the newest committed round (its restarts in status.clients count it).",
        "Nothing to do if the new group trains; " + _LOGS + " shows the failure. It is "
        "dropped after {left} more failure(s) (spec.runPolicy.backoffLimit).",
    ),
    "ClientDropped": Entry(
        "Warning",
        (),
        "A client was given up: its group failed past spec.runPolicy.backoffLimit, stopped "
        "on a configuration error, or (a site) sent nothing for site.timeoutSeconds. The "
        "aggregator stops waiting for it.",
        _NO_REJOIN + ".",
        causes={
            "budget": _NO_REJOIN + "; " + _LOGS + " shows why its pods failed: fix that, or "
            "raise spec.runPolicy.backoffLimit, for the next job.",
            "config": "Fix spec.task or this client's taskConfig, env or volumes ("
            + _LOGS
            + " says what is wrong; `fedkube validate` checks a job file before you apply "
            "it). " + _NO_REJOIN + ".",
            "site": _NO_REJOIN + "; check that the site runs `fedkube client --bundle` and "
            "reaches the bucket, or raise site.timeoutSeconds for the next job.",
        },
    ),
    "SharedCredentials": Entry(
        "Warning",
        ("SharedCredentials",),
        "spec.storage.credentials is shared: every pod holds the job's own store credential, "
        "so participants are not isolated from each other (condition SharedCredentials=True "
        "while it lasts, one Event).",
        "Set spec.storage.credentials: scoped (the default; needs a store with STS) so each "
        "role gets its own credential.",
    ),
    "ScopedCredentials": Entry(
        None,
        ("SharedCredentials",),
        "The job went from shared to scoped credentials (condition SharedCredentials=False).",
        NOTHING,
    ),
    "CommitRecordRefused": Entry(
        "Warning",
        ("CommitsVerified",),
        "A commit record in the store does not verify with the job's commit key (condition "
        "CommitsVerified=False): someone holding a store credential that may write records "
        "wrote or edited it. Clients do not train on it; the status leaves it out.",
        "Clients do not train on it and the status leaves it out. Revoke the store "
        "credential that wrote it (with scoped credentials only the job's own, "
        "spec.storage.secretRef, may), then rerun the job under a new storage prefix: the "
        "aggregator cannot replace the record.",
    ),
    "ConfigurationError": Entry(
        "Warning",
        ("Failed",),
        "The aggregator stopped on a configuration error (exit code 2), so it was not "
        "retried; the job failed.",
        "Fix spec.task (`kubectl logs job/{aggregator}` says what is wrong; `fedkube "
        "validate` checks a job file before you apply it), then " + _AGAIN + ".",
    ),
    "AggregatorFailed": Entry(
        "Warning",
        ("Failed",),
        "The aggregator failed past spec.runPolicy.backoffLimit, or exited without writing "
        "final/round.json; the job failed.",
        "`kubectl logs job/{aggregator}` says why; fix it, then " + _AGAIN + ".",
        causes={
            "no-final": "The aggregator or the store lost the final write: read `kubectl "
            "logs job/{aggregator}` and the store's final/ prefix, then " + _AGAIN + ".",
        },
    ),
    "TooFewClients": Entry(
        "Warning",
        ("Failed",),
        "Clients were dropped until fewer than spec.strategy.minClients remain; the job failed.",
        "Each dropped client's message in status.clients says why: fix that (or lower "
        "spec.strategy.minClients), then " + _AGAIN + ".",
    ),
    "DeadlineExceeded": Entry(
        "Warning",
        ("Failed",),
        "The job ran longer than spec.runPolicy.activeDeadlineSeconds; the job failed.",
        "Raise or unset spec.runPolicy.activeDeadlineSeconds, then " + _AGAIN + ".",
    ),
    "InvalidSpec": Entry(
        "Warning",
        ("Failed",),
        "The spec cannot run (each problem names its field and fix), or the API server "
        "refused a child object built from it; nothing was started.",
        "Fix the fields named above (`fedkube validate FILE` lists the same problems) and "
        "apply the job again: a changed spec starts it again.",
    ),
    "StoreWithoutSTS": Entry(
        "Warning",
        ("Failed",),
        "spec.storage.credentials is scoped (the default) and the store has no STS to mint "
        "per-role credentials with; nothing was started.",
        "Use a store with STS, or set spec.storage.credentials: shared (every pod then holds "
        "the job's own credential: participants can read and overwrite each other's "
        "updates); a changed spec starts the job again.",
    ),
    "Failed": Entry(
        None,
        ("Running",),
        "The job failed (condition Running=False); the Failed condition's reason says why.",
        "Read the Failed condition: its reason and message say what failed and what to do.",
    ),
}

_SPACES = re.compile(r"[ ]*[\t\n\r\v\f][ \t\n\r\v\f]*")
"""A line break or tab with the blanks around it: one space."""
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)
"""Control characters, and format characters that reorder or hide text (bidi overrides)."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str) -> str:
    """``text`` as one printable line: line breaks and tabs become a space, other control
    and format characters a visible escape. Idempotent."""
    return _UNSAFE.sub(_escape, _SPACES.sub(" ", text))


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (with '...'), never inside a
    character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: max(0, limit - 3)].decode(errors="ignore") + "..."


def message(
    reason: Reason,
    what: str,
    *,
    cause: str | None = None,
    limit: int = CONDITION_MESSAGE_BYTES,
    **fields: object,
) -> str:
    """The message for ``reason``: ``what`` happened (cleaned, cut to fit), then the
    catalogue's action (filled from ``fields``), within ``limit`` bytes."""
    action = CATALOGUE[reason].action_for(cause)
    if action == NOTHING:
        return clip(clean(what).strip(), limit)
    tail = " " + clean(action.format(**fields))
    head = clean(what).strip().rstrip(".") + "."
    return clip(head, limit - len(tail.encode())) + tail
