"""The operator's store reads: new commit records only, cached, and trouble as a snapshot."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import layout
from fedcore import spec as fs
from fedcore.commit_signing import CommitSigner
from fedcore.errors import StoreUnavailable
from fedcore.store import LocalStore, ObjectStore
from fedop.store_view import Credentials, StoreView
from tests.fixtures.fedjobs import COMMIT_KEY, final, make_job, record

VERIFIER = COMMIT_KEY.public
FORGER = CommitSigner(Ed25519PrivateKey.generate())


class CountingStore(LocalStore):
    def __init__(self, root: Path, prefix: str) -> None:
        super().__init__(root, prefix)
        self.reads: list[str] = []
        self.down = False

    def get_bytes(self, key: str) -> bytes:
        if self.down:
            raise StoreUnavailable("connection refused")
        self.reads.append(key)
        return super().get_bytes(key)


def view_of(tmp_path: Path) -> tuple[StoreView, CountingStore]:
    stores: list[CountingStore] = []

    def opener(storage: fs.StorageSpec, prefix: str, creds: Credentials | None) -> ObjectStore:
        stores.append(CountingStore(tmp_path, prefix))
        return stores[-1]

    view = StoreView(opener)
    view.snapshot(make_job(), None, 0, VERIFIER)  # opens the store
    return view, stores[0]


def commit(store: ObjectStore, *records: layout.RoundRecord) -> None:
    for r in records:
        store.put_bytes(layout.round_record_key(r.round), r.to_json())


def test_reads_committed_rounds_from_the_first_unseen_one(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)
    commit(store, record(0), record(1), record(2))

    snap = view.snapshot(make_job(), None, 1, VERIFIER)

    assert [r.round for r in snap.rounds] == [1, 2]
    assert snap.final is None
    assert snap.excluded == {}


def test_records_are_read_once(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)
    commit(store, record(0), record(1))
    view.snapshot(make_job(), None, 0, VERIFIER)
    store.reads.clear()

    again = view.snapshot(make_job(), None, 0, VERIFIER)

    assert [r.round for r in again.rounds] == [0, 1]
    assert layout.round_record_key(0) not in store.reads
    assert layout.round_record_key(2) in store.reads  # only "is there a next one?"


def test_a_forged_round_is_refused_not_cached_and_stops_the_rounds(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)
    forged = FORGER.sign("round", record(2, accuracy=0.99).model_copy(update={"signature": ""}))
    commit(store, record(0), record(1), forged)
    store.reads.clear()

    snap = view.snapshot(make_job(), None, 0, VERIFIER)
    again = view.snapshot(make_job(), None, 0, VERIFIER)

    assert [r.round for r in snap.rounds] == [0, 1]
    assert [(x.key, x.reason, x.fingerprint) for x in snap.refused] == [
        (layout.round_record_key(2), "bad-signature", VERIFIER.fingerprint)
    ]
    assert again.refused == snap.refused
    assert store.reads.count(layout.round_record_key(2)) == 2  # read again, never cached


def test_a_forged_final_record_is_refused(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)
    store.put_bytes(layout.FINAL_RECORD_KEY, FORGER.sign("final", final()).to_json())

    snap = view.snapshot(make_job(), None, 0, VERIFIER)

    assert snap.final is None
    assert [(x.key, x.reason) for x in snap.refused] == [(layout.FINAL_RECORD_KEY, "bad-signature")]


def test_final_record_comes_with_the_models_uri(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)
    store.put_bytes(layout.FINAL_RECORD_KEY, final().to_json())

    snap = view.snapshot(make_job(), None, 0, VERIFIER)

    assert snap.final is not None
    assert snap.final_model_uri == store.uri(layout.FINAL_MODEL_KEY)


def test_dropped_clients_are_written_for_the_aggregator(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)

    view.write_excluded(make_job(), None, {"b": "failed 4 times"})

    stored = layout.ExcludedClients.model_validate_json(store.get_bytes(layout.EXCLUDED_KEY))
    assert stored.clients == {"b": "failed 4 times"}
    assert view.snapshot(make_job(), None, 0, VERIFIER).excluded == {"b": "failed 4 times"}


def test_an_unreachable_store_gives_an_unavailable_snapshot(tmp_path: Path) -> None:
    view, store = view_of(tmp_path)
    store.down = True

    snap = view.snapshot(make_job(), None, 0, VERIFIER)

    assert not snap.available
    assert "connection refused" in snap.problem


def test_credentials_never_show_in_a_repr() -> None:
    creds = Credentials("AKIAEXAMPLE", "s3cr3t")

    assert "s3cr3t" not in repr(creds)
    assert "AKIA" not in repr(creds)
