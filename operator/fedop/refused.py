"""How the operator reports commit records that fail verification.

The store view leaves such a record out of the rounds it hands to the plan (so it is never
folded into the status) and lists it under ``StoreSnapshot.refused``. The plan turns the list
into the condition ``CommitsVerified=False`` and one Warning Event ``CommitRecordRefused``,
naming each record's key, the reason and the public key's fingerprint; it announces again only
when what is refused changes, as every announcement of a level-based pass must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fedcore import spec as fs
from fedop import catalogue, status
from fedop.observed import RefusedRecord

REASON: Final = "CommitRecordRefused"
CONDITION: status.ConditionType = "CommitsVerified"


def what(refused: Sequence[RefusedRecord]) -> str:
    """What happened to these records; ``message`` adds what to do. Keys and reasons come
    from the store's listing: ``fedop.catalogue`` cleans them."""
    return "; ".join(
        f"commit record {x.key} refused ({x.reason}): it does not verify with the job's commit "
        f"key {x.fingerprint}"
        for x in refused
    )


def message(what: str) -> str:
    """The condition's text."""
    return catalogue.message(REASON, what)


def news(refused: Sequence[RefusedRecord], current: fs.Condition | None) -> str | None:
    """What happened, to set and announce, or None when there is nothing (new) to report."""
    if not refused:
        return None
    text = what(refused)
    if current is not None and current.status == "False" and current.message == message(text):
        return None
    return text
