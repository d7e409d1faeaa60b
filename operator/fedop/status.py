"""The FederatedJob's status: reading it back, conditions, and the patch that writes it.

The status is the operator's memory between passes and across restarts (restart counts,
rounds already announced), so reading it is forgiving: fields this version does not know are
ignored rather than failing the pass. Writing it sends only what changed, as a JSON merge
patch on the status subresource.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from fedcore import spec as fs
from fedop import catalogue

log = logging.getLogger(__name__)

ConditionType = Literal[
    "Created", "Running", "Suspended", "Succeeded", "Failed", "CommitsVerified", "SharedCredentials"
]
CONDITION_ORDER: tuple[ConditionType, ...] = (
    "Created",
    "Running",
    "Suspended",
    "Succeeded",
    "Failed",
    "CommitsVerified",
    "SharedCredentials",
)
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def parse_status(raw: Mapping[str, Any] | None) -> fs.FederatedJobStatus:
    """The status as stored, keeping the fields this version knows; empty when unreadable."""
    if not raw:
        return fs.FederatedJobStatus()
    known = {f.alias or name for name, f in fs.FederatedJobStatus.model_fields.items()}
    kept = {k: v for k, v in raw.items() if k in known}
    try:
        return fs.FederatedJobStatus.model_validate(kept)
    except ValidationError as e:
        log.warning("ignoring unreadable status (%d problems); rebuilding it", e.error_count())
        return fs.FederatedJobStatus()


def to_wire(status: fs.FederatedJobStatus) -> dict[str, Any]:
    """JSON-ready status in wire form (camelCase, unset fields left out)."""
    wire: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return wire


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch turning ``old`` into ``new`` (None deletes; lists are replaced)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before or key not in old:
            patch[key] = value
    return patch


def next_round_to_read(status: fs.FederatedJobStatus) -> int:
    """First round whose commit record the status has not folded in yet."""
    return 0 if status.last_round is None else status.current_round + 1


def truncate(text: str, limit: int = fs.MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def second(now: datetime) -> datetime:
    """Times in status have whole seconds, like metav1.Time."""
    return now.replace(microsecond=0)


def set_condition(
    conditions: Iterable[fs.Condition],
    kind: ConditionType,
    status: Literal["True", "False", "Unknown"],
    reason: catalogue.Reason,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[fs.Condition]:
    """Conditions with ``kind`` set; its ``lastTransitionTime`` moves only when the status
    flips, as metav1.Condition asks. The list keeps a fixed order by type. ``reason`` is one
    of the catalogue's; ``message`` is cleaned to one printable line and cut to fit."""
    by_type = {c.type: c for c in conditions}
    old = by_type.get(kind)
    changed_at = old.last_transition_time if old is not None and old.status == status else None
    by_type[kind] = fs.Condition(
        type=kind,
        status=status,
        reason=reason,
        message=catalogue.clip(catalogue.clean(message), catalogue.CONDITION_MESSAGE_BYTES),
        last_transition_time=changed_at or second(now),
        observed_generation=generation,
    )
    order: dict[str, int] = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(by_type.values(), key=lambda c: order.get(c.type, len(order)))


def condition(status: fs.FederatedJobStatus, kind: ConditionType) -> fs.Condition | None:
    return next((c for c in status.conditions if c.type == kind), None)
