"""The site operator's read of the bucket: the coordinator's committed rounds, verified.

A FederatedSite reports how far the job it takes part in has come: the newest round the
coordinator's aggregator committed, and the newest one this site's update was folded into.
Both come from commit records, which are hostile bytes until their Ed25519 signature checks
out with the job's commit public key from the bundle (``fedcore.commit_signing``); a record
that fails is reported (``refused``) and never counted. Like the coordinator's view it probes
the next round's ``round.json`` instead of listing (a site's credential may not list), and
store trouble never fails a pass: the progress says the store is unavailable and why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedcore import join_bundle as jb
from fedcore import layout
from fedcore.commit_signing import (
    UnverifiedRecord,
    read_final_record,
    read_round_record,
    verifier_from_pem,
)
from fedcore.errors import FedcoreError, ObjectNotFound, StoreError
from fedcore.site_store import open_bundle_store
from fedcore.store import ObjectStore

log = logging.getLogger(__name__)

MAX_ROUNDS_PER_PASS = 200
"""Records read in one pass when catching up, as the coordinator's view."""


@dataclass(frozen=True)
class SiteProgress:
    """What one pass read from the bucket."""

    available: bool = True
    problem: str = ""
    current_round: int | None = None
    """Newest verified committed round (None: none read yet)."""
    last_round: int | None = None
    """Newest of the rounds read whose participants include this site."""
    finished: bool = False
    """The verified final record exists: the job is done."""
    refused: str = ""
    """Why a commit record failed verification (empty when none did)."""


StoreOpener = Callable[[jb.JoinBundle, Path], ObjectStore]


@dataclass
class _Cached:
    digest: str
    store: ObjectStore
    folder: Path


class SiteStoreView:
    """Opens (and keeps, per FederatedSite and bundle) a store signed with the bundle's
    credential, and reads the rounds committed since the status last counted."""

    def __init__(self, opener: StoreOpener = open_bundle_store) -> None:
        self._opener = opener
        self._sites: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _store(self, uid: str, bundle: jb.JoinBundle, digest: str) -> ObjectStore:
        with self._lock:
            cached = self._sites.get(uid)
            if cached is not None and cached.digest == digest:
                return cached.store
        folder = Path(tempfile.mkdtemp(prefix="fedkube-site-store-"))
        store = self._opener(bundle, folder)
        with self._lock:
            old = self._sites.get(uid)
            self._sites[uid] = _Cached(digest, store, folder)
        if old is not None:
            shutil.rmtree(old.folder, ignore_errors=True)
        return store

    def forget(self, uid: str) -> None:
        with self._lock:
            old = self._sites.pop(uid, None)
        if old is not None:
            shutil.rmtree(old.folder, ignore_errors=True)

    def progress(
        self,
        uid: str,
        bundle: jb.JoinBundle,
        digest: str,
        *,
        current_round: int | None,
        last_round: int | None,
    ) -> SiteProgress:
        """Rounds committed after ``current_round`` (the status' newest), folded into the
        status' ``current_round``/``last_round``."""
        try:
            verifier = verifier_from_pem(
                bundle.commit_public_key.encode(), source="the bundle's commitPublicKey"
            )
            store = self._store(uid, bundle, digest)
            newest, mine, refused = current_round, last_round, ""
            first = 0 if current_round is None else current_round + 1
            for r in range(first, first + MAX_ROUNDS_PER_PASS):
                data = _get(store, layout.round_record_key(r))
                if data is None:
                    break
                try:
                    record = read_round_record(data, r, verifier)
                except UnverifiedRecord as e:
                    refused = str(e)
                    break
                newest = r
                if bundle.client in record.participants:
                    mine = r
            finished = False
            data = _get(store, layout.FINAL_RECORD_KEY)
            if data is not None and not refused:
                try:
                    read_final_record(data, verifier)
                    finished = True
                except UnverifiedRecord as e:
                    refused = str(e)
        except (StoreError, FedcoreError) as e:
            log.warning("store of site %s unavailable: %s", uid, e)
            return SiteProgress(available=False, problem=str(e))
        return SiteProgress(
            current_round=newest, last_round=mine, finished=finished, refused=refused
        )


def _get(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ObjectNotFound:
        return None
