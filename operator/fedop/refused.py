"""How the operator reports commit records that fail verification.

The store view leaves such a record out of the rounds it hands to the plan (so it is never
folded into the status) and lists it under ``StoreSnapshot.refused``. The plan turns the list
into the condition ``CommitsVerified=False`` and one Warning Event ``CommitRecordRefused``,
naming each record's key, the reason and the public key's fingerprint; it announces again only
when what is refused changes, as every announcement of a level-based pass must.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcore import spec as fs
from fedop import status
from fedop.observed import RefusedRecord

REASON = "CommitRecordRefused"
CONDITION: status.ConditionType = "CommitsVerified"


def message(refused: Sequence[RefusedRecord]) -> str:
    """The condition's and the Event's text for these refused records."""
    text = "; ".join(
        f"commit record {x.key} refused ({x.reason}): it does not verify with the job's commit "
        f"key {x.fingerprint}"
        for x in refused
    )
    return status.truncate(
        text + ". Someone holding a store credential that may write records wrote it; "
        "clients do not train on it and the status does not show it"
    )


def news(refused: Sequence[RefusedRecord], current: fs.Condition | None) -> str | None:
    """The message to set and announce, or None when there is nothing (new) to report."""
    if not refused:
        return None
    text = message(refused)
    if current is not None and current.status == "False" and current.message == text:
        return None
    return text
