"""Rank 0's view of the store: the newest round this job's aggregator committed, found without
listing, and what that means for the client (wait, train round r+1, finish).

A client may not list the store (its scoped credential has no ``ListBucket``: a listing of
``rounds/`` would show which other clients uploaded and when). So the newest committed round
is found by probing ``rounds/NNNNNN/round.json`` keys: from the newest round already known,
``r+1``, ``r+2``, ``r+4``, ... until a key is missing, then a binary search between the last
present and the first missing key. A poll of an idle client costs two requests (the final
record and the next round's record), however long the job has run.

A record counts only once it verifies with the aggregator's public key
(``fedcore.commit_signing``). Records past the newest verified one are tried newest first;
when the newest present one is refused, the rounds after the known one are read in order and
the last one that verifies before the first refused one wins. A refused record is logged
once per distinct content (its key, the reason and the key fingerprint), never trained on,
and read again on later polls, so the watcher keeps waiting for a valid one. (The aggregator
cannot replace a forged record: see ``fedcore.aggregator``; it fails the job instead.)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

from fedcore import layout
from fedcore.commit_signing import (
    CommitVerifier,
    UnverifiedRecord,
    read_final_record,
    read_round_record,
)
from fedcore.errors import ObjectNotFound
from fedcore.store import ObjectStore

log = logging.getLogger("fedcore.client")


@dataclass(frozen=True)
class Work:
    """Rank 0's decision, broadcast to the group after every poll."""

    kind: Literal["wait", "train", "finish"]
    base_round: int = -1
    """Train from this committed round's global model (``kind == "train"``)."""
    base_sha256: str = ""

    def as_tuple(self) -> tuple[str, int, str]:
        return (self.kind, self.base_round, self.base_sha256)


WAIT = Work("wait")
FINISH = Work("finish")


def newest_round_key(store: ObjectStore, known: int | None) -> int | None:
    """The highest round whose ``round.json`` exists, probing up from ``known`` (a round whose
    record is known to exist; None: start at round 0). None when round 0 has none.

    Exponential steps, then a binary search: O(log n) ``exists`` calls for n new rounds, one
    when nothing is new. It assumes records are contiguous from 0, as the aggregator writes
    them; a stray record further up is found or not, and the caller verifies what it gets.
    """
    if known is None:
        if not store.exists(layout.round_record_key(0)):
            return None
        known = 0
    low, step = known, 1
    while store.exists(layout.round_record_key(known + step)):
        low = known + step
        step *= 2
    high = known + step  # missing; every key probed below it existed
    while high - low > 1:
        mid = (low + high) // 2
        if store.exists(layout.round_record_key(mid)):
            low = mid
        else:
            high = mid
    return low


class RoundWatcher:
    """Decides, at each poll, whether this client has a round to train (see module docstring)."""

    def __init__(self, store: ObjectStore, client: str, verifier: CommitVerifier) -> None:
        self.store = store
        self.client = client
        self.verifier = verifier
        self._newest: layout.RoundRecord | None = None
        self._said: tuple[str, int] | None = None
        self._reported: set[tuple[str, str]] = set()
        """(key, sha256 of the bytes) of refused records already logged."""

    def poll(self) -> Work:
        if self._finished():
            return FINISH
        record = self._advance()
        if record is None:
            self._say("waiting for the aggregator to commit round 0", -1)
            return WAIT
        nxt = record.next
        if nxt is None:
            self._say(f"round {record.round} was the last; waiting for the final model", -1)
            return WAIT
        if self.client not in nxt.selected:
            self._say(f"not selected for round {nxt.round}; waiting", nxt.round)
            return WAIT
        if self.store.exists(layout.manifest_key(nxt.round, self.client)):
            self._say(f"update for round {nxt.round} is already in the store; waiting", nxt.round)
            return WAIT
        return Work("train", base_round=record.round, base_sha256=record.model_sha256)

    @property
    def newest(self) -> layout.RoundRecord | None:
        """The newest verified round record seen so far."""
        return self._newest

    def _finished(self) -> bool:
        try:
            data = self.store.get_bytes(layout.FINAL_RECORD_KEY)
        except ObjectNotFound:
            return False
        try:
            read_final_record(data, self.verifier)
        except UnverifiedRecord as e:
            self._refuse(e, data)
            return False
        return True

    def _advance(self) -> layout.RoundRecord | None:
        known = self._newest.round if self._newest is not None else None
        top = newest_round_key(self.store, known)
        if top is None or top == known:
            return self._newest
        record = self._verified(top)
        if record is not None:
            self._newest = record
            return record
        # The newest record was refused: take the rounds after the known one in order,
        # up to the first that is refused (no honest round can follow a forged one).
        for r in range(0 if known is None else known + 1, top):
            record = self._verified(r)
            if record is None:
                break
            self._newest = record
        return self._newest

    def _verified(self, r: int) -> layout.RoundRecord | None:
        try:
            data = self.store.get_bytes(layout.round_record_key(r))
        except ObjectNotFound:
            return None
        try:
            return read_round_record(data, r, self.verifier)
        except UnverifiedRecord as e:
            self._refuse(e, data)
            return None

    def _refuse(self, error: UnverifiedRecord, data: bytes) -> None:
        seen = (error.key, hashlib.sha256(data).hexdigest())
        if seen not in self._reported:
            self._reported.add(seen)
            log.error(
                "client %s: %s; not training on it, waiting for a valid one", self.client, error
            )

    def _say(self, message: str, r: int) -> None:
        """Log a waiting reason once, not on every poll."""
        if self._said != (message, r):
            self._said = (message, r)
            log.info(message)
