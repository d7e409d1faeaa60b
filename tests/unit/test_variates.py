"""A SCAFFOLD client's variates in the store (fedcore.variates): its own slot reflects only
rounds that folded its update, a crash before the manifest retrains from the same variate,
and everything read back is checked."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import layout
from fedcore.commit_signing import CommitSigner
from fedcore.errors import RoundProtocolError
from fedcore.store import LocalStore
from fedcore.tasks.scaffold import zero_variate
from fedcore.variates import (
    read_client_variate,
    read_server_variate,
    write_client_variate,
)
from fedcore.weights import Tensors, save_weights, sha256_file, template_of

CLIENT = "a"
SIGNER = CommitSigner(Ed25519PrivateKey.generate())
MODEL = template_of({"w": torch.zeros(2, 3), "steps": torch.tensor(0)})


def variate(value: float) -> Tensors:
    return {"control/w": torch.full((2, 3), value)}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", "job/")


def commit(store: LocalStore, r: int, participants: list[str], state_sha256: str = "") -> None:
    now = layout.utcnow()
    record = layout.RoundRecord(
        round=r,
        participants=participants,
        model_key=layout.global_key(r),
        model_sha256="0" * 64,
        strategy_sha256=state_sha256,
        started_at=now,
        next=layout.NextRound(round=r + 1, selected=[CLIENT], deadline=now + timedelta(hours=1)),
    )
    store.put_bytes(layout.round_record_key(r), SIGNER.sign("round", record).to_json())


def read(store: LocalStore, tmp_path: Path, train_round: int) -> Tensors:
    return read_client_variate(store, CLIENT, train_round, SIGNER.public, MODEL, tmp_path)


def test_a_client_without_a_variate_starts_from_zero(store: LocalStore, tmp_path: Path) -> None:
    got = read(store, tmp_path, 1)

    assert torch.equal(got["control/w"], torch.zeros(2, 3))


def test_the_next_variate_counts_once_the_round_folded_the_update(
    store: LocalStore, tmp_path: Path
) -> None:
    write_client_variate(store, CLIENT, 2, variate(1.0), variate(2.0), tmp_path)
    commit(store, 2, [CLIENT, "b"])

    assert torch.equal(read(store, tmp_path, 5)["control/w"], variate(2.0)["control/w"])


def test_a_round_that_did_not_fold_the_update_leaves_the_variate_as_before(
    store: LocalStore, tmp_path: Path
) -> None:
    write_client_variate(store, CLIENT, 2, variate(1.0), variate(2.0), tmp_path)
    commit(store, 2, ["b"])  # rejected, late, or past the deadline: not a participant

    assert torch.equal(read(store, tmp_path, 3)["control/w"], variate(1.0)["control/w"])


def test_a_group_that_crashed_before_its_manifest_retrains_from_the_variate_before(
    store: LocalStore, tmp_path: Path
) -> None:
    write_client_variate(store, CLIENT, 4, variate(1.0), variate(2.0), tmp_path)

    assert torch.equal(read(store, tmp_path, 4)["control/w"], variate(1.0)["control/w"])


def test_a_variate_from_a_later_round_is_refused(store: LocalStore, tmp_path: Path) -> None:
    write_client_variate(store, CLIENT, 6, variate(1.0), variate(2.0), tmp_path)

    with pytest.raises(RoundProtocolError, match="rolled back or altered"):
        read(store, tmp_path, 4)


def test_a_variate_whose_round_record_is_forged_is_refused(
    store: LocalStore, tmp_path: Path
) -> None:
    write_client_variate(store, CLIENT, 2, variate(1.0), variate(2.0), tmp_path)
    forger = CommitSigner(Ed25519PrivateKey.generate())
    record = layout.RoundRecord(
        round=2,
        participants=[CLIENT],
        model_key=layout.global_key(2),
        model_sha256="0" * 64,
        started_at=layout.utcnow(),
    )
    store.put_bytes(layout.round_record_key(2), forger.sign("round", record).to_json())

    with pytest.raises(RoundProtocolError, match="cannot be read and verified"):
        read(store, tmp_path, 3)


def put_variate(
    store: LocalStore, tmp_path: Path, tensors: Tensors, meta: dict[str, str | int]
) -> None:
    path = tmp_path / "forged.safetensors"
    save_weights(path, tensors, meta)
    store.put_file(layout.client_variate_key(CLIENT), path)


GOOD_META: dict[str, str | int] = {"kind": "scaffold-variate", "client": CLIENT, "round": "1"}


@pytest.mark.parametrize(
    ("tensors", "meta", "match"),
    [
        (
            {"current/control/w": torch.zeros(2, 3), "next/control/w": torch.zeros(3, 2)},
            GOOD_META,
            r"'next/control/w' is float32\[3, 2\], expected float32\[2, 3\]",
        ),
        (
            {
                "current/control/w": torch.zeros(2, 3),
                "next/control/w": torch.full((2, 3), float("inf")),
            },
            GOOD_META,
            "holds NaN or inf",
        ),
        ({"current/control/w": torch.zeros(2, 3)}, GOOD_META, "missing"),
        (
            {"current/control/w": torch.zeros(2, 3), "next/control/w": torch.zeros(2, 3)},
            {**GOOD_META, "client": "b"},
            "not a scaffold-variate of client 'a'",
        ),
        (
            {"current/control/w": torch.zeros(2, 3), "next/control/w": torch.zeros(2, 3)},
            {**GOOD_META, "round": "-1"},
            "is not a round",
        ),
    ],
    ids=["shape", "inf", "missing-side", "other-client", "bad-round"],
)
def test_a_bad_variate_file_fails_naming_the_key_and_the_fix(
    store: LocalStore,
    tmp_path: Path,
    tensors: Tensors,
    meta: dict[str, str | int],
    match: str,
) -> None:
    put_variate(store, tmp_path, tensors, meta)

    with pytest.raises(RoundProtocolError, match=match) as caught:
        read(store, tmp_path, 2)
    assert "clients/a/scaffold.safetensors" in str(caught.value)
    assert "delete it to restart its variate from zero" in str(caught.value)


def test_a_variate_file_larger_than_a_variate_is_refused_unread(
    store: LocalStore, tmp_path: Path
) -> None:
    store.put_bytes(layout.client_variate_key(CLIENT), b"x" * (2 << 20))

    with pytest.raises(RoundProtocolError, match="nothing was downloaded"):
        read(store, tmp_path, 2)


def test_the_server_variate_is_zero_at_round_zero_and_read_from_the_committed_state(
    store: LocalStore, tmp_path: Path
) -> None:
    path = tmp_path / "state.safetensors"
    save_weights(path, {**variate(0.5), "clip/bound": torch.tensor([1.0], dtype=torch.float64)})
    store.put_file(layout.strategy_state_key(3), path)
    commit(store, 3, [CLIENT], state_sha256=sha256_file(path))
    record = layout.RoundRecord.model_validate_json(store.get_bytes(layout.round_record_key(3)))

    zero = read_server_variate(store, record.model_copy(update={"round": 0}), MODEL, tmp_path)
    got = read_server_variate(store, record, MODEL, tmp_path)

    assert torch.equal(zero["control/w"], zero_variate(MODEL)["control/w"])
    assert list(got) == ["control/w"]
    assert torch.equal(got["control/w"], variate(0.5)["control/w"])


def test_a_server_state_that_is_not_the_committed_one_is_refused(
    store: LocalStore, tmp_path: Path
) -> None:
    path = tmp_path / "state.safetensors"
    save_weights(path, variate(0.5))
    store.put_file(layout.strategy_state_key(3), path)
    commit(store, 3, [CLIENT], state_sha256="1" * 64)
    record = layout.RoundRecord.model_validate_json(store.get_bytes(layout.round_record_key(3)))

    with pytest.raises(RoundProtocolError, match="does not match the sha256"):
        read_server_variate(store, record, MODEL, tmp_path)
    with pytest.raises(RoundProtocolError, match="names no strategy state"):
        read_server_variate(
            store, record.model_copy(update={"strategy_sha256": ""}), MODEL, tmp_path
        )
