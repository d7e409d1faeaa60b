"""The operator's read of a job's object store: committed rounds, the final record, drops.

A pass needs only what is new since the status was last written, so it probes the next
round's ``round.json`` instead of listing the store (a listing grows with rounds x clients).
Commit records are immutable once written, so every record read is cached for the life of
the process; only "is there a next one?" and the final record's absence are asked again.

The operator also writes one object: ``control/excluded.json`` (clients dropped after their
restart budget), which the aggregator reads to stop waiting for them.

Every commit record is verified with the job's commit public key (from the job's ConfigMap)
before it is used (``fedcore.commit_signing``). A record that fails is never cached nor
returned: the snapshot lists it under ``refused`` (the plan reports it) and the rounds stop
before it, and it is read again on the next pass.

Store trouble never fails a pass: the snapshot says the store is unavailable and why, the
status shows it, and the next pass tries again. Credentials come from the job's
``spec.storage.secretRef`` Secret (read by the caller) and are never logged.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from fedcore import layout
from fedcore import spec as fs
from fedcore.commit_signing import (
    CommitVerifier,
    UnverifiedRecord,
    read_final_record,
    read_round_record,
)
from fedcore.errors import ObjectNotFound, StoreError
from fedcore.store import ObjectStore, open_store
from fedop.observed import RefusedRecord, StoreSnapshot

log = logging.getLogger(__name__)
_R = TypeVar("_R", bound=BaseModel)

MAX_ROUNDS_PER_PASS = 200
"""Records read in one pass when catching up (a restarted operator on a long job): the rest
come in the next passes, so one job cannot hold a worker for minutes."""


@dataclass(frozen=True)
class Credentials:
    """S3 access key pair read from the job's credentials Secret. Never printed."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    def fingerprint(self) -> str:
        text = f"{self.access_key_id}\0{self.secret_access_key}".encode()
        return hashlib.sha256(text).hexdigest()[:16]


StoreOpener = Callable[[fs.StorageSpec, str, "Credentials | None"], ObjectStore]


def open_job_store(
    storage: fs.StorageSpec, prefix: str, credentials: Credentials | None
) -> ObjectStore:
    """The job's S3 store, signed with ``credentials`` (else the operator's own environment)."""
    if credentials is None or storage.endpoint is None:
        return open_store(storage, prefix)
    keys = (credentials.access_key_id, credentials.secret_access_key)
    return open_store(storage, prefix, credentials=keys)


@dataclass
class _JobCache:
    store_key: tuple[str, ...]
    store: ObjectStore
    rounds: dict[int, layout.RoundRecord]
    final: layout.FinalRecord | None = None
    excluded: dict[str, str] | None = None


class StoreView:
    """Reads (and caches) the round protocol state of every job the operator watches."""

    def __init__(self, opener: StoreOpener = open_job_store) -> None:
        self._opener = opener
        self._jobs: dict[str, _JobCache] = {}
        self._lock = threading.Lock()

    def _cache(self, job: fs.FederatedJob, credentials: Credentials | None) -> _JobCache:
        uid = job.metadata.uid or job.name
        storage = job.spec.storage
        prefix = fs.job_prefix(job)
        key = (
            storage.endpoint or "",
            storage.bucket,
            storage.region,
            prefix,
            credentials.fingerprint() if credentials else "",
        )
        with self._lock:
            cache = self._jobs.get(uid)
            if cache is not None and cache.store_key == key:
                return cache
        store = self._opener(storage, prefix, credentials)
        with self._lock:
            cache = self._jobs.get(uid)
            if cache is None or cache.store_key != key:
                # New store or credentials: records stay valid only for the same location.
                same_place = cache is not None and cache.store_key[:4] == key[:4]
                rounds = cache.rounds if cache is not None and same_place else {}
                cache = _JobCache(store_key=key, store=store, rounds=rounds)
                self._jobs[uid] = cache
            return cache

    def forget(self, uid: str) -> None:
        """Drop what is cached about a deleted job."""
        with self._lock:
            self._jobs.pop(uid, None)

    def snapshot(
        self,
        job: fs.FederatedJob,
        credentials: Credentials | None,
        first_round: int,
        verifier: CommitVerifier,
    ) -> StoreSnapshot:
        """Verified rounds committed from ``first_round`` on, the final record, the drop list
        and the records that failed verification."""
        refused: list[RefusedRecord] = []
        try:
            cache = self._cache(job, credentials)
            rounds = self._rounds(cache, first_round, verifier, refused)
            final = self._final(cache, verifier, refused)
            excluded = self._excluded(cache)
            uri = cache.store.uri(final.model_key) if final is not None else None
        except StoreError as e:
            log.warning("store of %s unavailable: %s", job.name, e)
            return StoreSnapshot(available=False, problem=str(e))
        for x in refused:
            log.error("job %s/%s: %s", job.metadata.namespace, job.name, x.message)
        return StoreSnapshot(
            rounds=tuple(rounds),
            final=final,
            final_model_uri=uri,
            excluded=dict(excluded),
            refused=tuple(refused),
        )

    def write_excluded(
        self, job: fs.FederatedJob, credentials: Credentials | None, clients: dict[str, str]
    ) -> None:
        """Record dropped clients for the aggregator (overwrites; the list only grows)."""
        cache = self._cache(job, credentials)
        record = layout.ExcludedClients(clients=dict(sorted(clients.items())))
        cache.store.put_bytes(layout.EXCLUDED_KEY, record.to_json())
        cache.excluded = dict(record.clients)

    def _rounds(
        self,
        cache: _JobCache,
        first: int,
        verifier: CommitVerifier,
        refused: list[RefusedRecord],
    ) -> list[layout.RoundRecord]:
        found: list[layout.RoundRecord] = []
        for r in range(first, first + MAX_ROUNDS_PER_PASS):
            record = cache.rounds.get(r)
            if record is None:
                data = _get(cache.store, layout.round_record_key(r))
                if data is None:
                    break
                try:
                    record = read_round_record(data, r, verifier)
                except UnverifiedRecord as e:
                    refused.append(_refused(e))
                    break
                cache.rounds[r] = record
            found.append(record)
        # Older records are in the status now; keep the cache from growing with the job.
        for r in [r for r in cache.rounds if r < first - 1]:
            del cache.rounds[r]
        return found

    def _final(
        self, cache: _JobCache, verifier: CommitVerifier, refused: list[RefusedRecord]
    ) -> layout.FinalRecord | None:
        if cache.final is None:
            data = _get(cache.store, layout.FINAL_RECORD_KEY)
            if data is not None:
                try:
                    cache.final = read_final_record(data, verifier)
                except UnverifiedRecord as e:
                    refused.append(_refused(e))
        return cache.final

    def _excluded(self, cache: _JobCache) -> dict[str, str]:
        if cache.excluded is None:
            data = _get(cache.store, layout.EXCLUDED_KEY)
            record = (
                layout.ExcludedClients()
                if data is None
                else _parse(layout.ExcludedClients, data, cache.store.uri(layout.EXCLUDED_KEY))
            )
            cache.excluded = dict(record.clients)
        return cache.excluded


def _refused(error: UnverifiedRecord) -> RefusedRecord:
    return RefusedRecord(
        key=error.key, reason=error.reason, fingerprint=error.fingerprint, message=str(error)
    )


def _get(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ObjectNotFound:
        return None


def _parse(kind: type[_R], data: bytes, uri: str) -> _R:
    try:
        return kind.model_validate_json(data)
    except ValidationError as e:
        raise StoreError(
            f"{uri} is not a valid {kind.__name__} ({e.error_count()} problems); it was not "
            "written by a compatible fedkube aggregator"
        ) from e
