"""Ed25519 signatures on commit records: what is signed, what is refused, how keys are kept."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedcore import layout
from fedcore.commit_signing import (
    CommitSigner,
    UnverifiedRecord,
    canonical_bytes,
    generate_key_pair,
    load_signer,
    load_verifier,
    read_final_record,
    read_round_record,
    signer_from_env,
    signer_from_pem,
    verifier_from_env,
    verifier_from_pem,
)
from fedcore.errors import FedcoreError, RoundProtocolError

T0 = layout.utcnow().replace(microsecond=123456)


@pytest.fixture(scope="module")
def signer() -> CommitSigner:
    return signer_from_pem(generate_key_pair()[0])


def round_record(r: int = 3, **changes: object) -> layout.RoundRecord:
    record = layout.RoundRecord(
        round=r,
        participants=["a", "b"],
        num_samples={"a": 10, "b": 20},
        metrics={"loss": 0.1 + 0.2, "accuracy": 1e-7},
        client_metrics={"a": {"train_loss": 2.5}},
        model_key=layout.global_key(r),
        model_sha256="ab" * 32,
        started_at=T0,
        committed_at=T0 + timedelta(seconds=2),
        next=layout.NextRound(round=r + 1, selected=["a", "b"], deadline=T0),
    )
    return record.model_copy(update=changes)


def test_a_signed_record_verifies_after_a_trip_through_the_store(signer: CommitSigner) -> None:
    signed = signer.sign("round", round_record())

    read = read_round_record(signed.to_json(), 3, signer.public)

    assert read == signed
    assert signer.public.verify("round", read)
    # Re-serialised once more (e.g. pretty-printed by a tool): the same canonical bytes.
    reformatted = json.dumps(json.loads(signed.to_json()), indent=7).encode()
    assert read_round_record(reformatted, 3, signer.public) == signed


def test_canonical_bytes_leave_out_the_signature_and_name_the_record_kind(
    signer: CommitSigner,
) -> None:
    record = round_record()
    signed = signer.sign("round", record)

    assert canonical_bytes("round", signed) == canonical_bytes("round", record)
    assert canonical_bytes("round", record) != canonical_bytes("final", record)
    assert b"signature" not in canonical_bytes("round", signed)
    assert b'"model_sha256":"' + b"ab" * 32 in canonical_bytes("round", record)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"model_sha256": "cd" * 32}, id="another model"),
        pytest.param({"participants": ["a"]}, id="fewer participants"),
        pytest.param({"metrics": {"loss": 0.0, "accuracy": 1.0}}, id="better metrics"),
        pytest.param({"next": None}, id="no next round"),
    ],
)
def test_any_edit_of_a_signed_record_breaks_its_signature(
    signer: CommitSigner, change: dict[str, object]
) -> None:
    signed = signer.sign("round", round_record())
    edited = signed.model_copy(update=change)

    with pytest.raises(UnverifiedRecord) as caught:
        read_round_record(edited.to_json(), 3, signer.public)

    assert caught.value.reason == "bad-signature"
    assert caught.value.key == "rounds/000003/round.json"
    assert caught.value.fingerprint == signer.fingerprint
    assert isinstance(caught.value, RoundProtocolError)


def test_a_round_signature_is_not_a_final_signature(signer: CommitSigner) -> None:
    final = signer.sign("final", layout.FinalRecord(rounds=3, model_sha256="ab" * 32))
    as_round = {**json.loads(final.to_json())}

    assert signer.public.verify("final", as_round)
    assert not signer.public.verify("round", as_round)


def test_a_genuine_record_replayed_into_another_round_is_refused(signer: CommitSigner) -> None:
    signed = signer.sign("round", round_record(3))

    with pytest.raises(UnverifiedRecord, match=r"round 3 .*replayed into round 5") as caught:
        read_round_record(signed.to_json(), 5, signer.public)

    assert caught.value.reason == "wrong-round"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\xff\xfe", "malformed", id="not JSON"),
        pytest.param(b"[1, 2]", "malformed", id="not an object"),
        pytest.param(round_record().to_json(), "unsigned", id="no signature"),
        pytest.param(round_record(signature="zz" * 64).to_json(), "bad-signature", id="not hex"),
        pytest.param(round_record(signature="00" * 64).to_json(), "bad-signature", id="zeros"),
    ],
)
def test_records_that_are_not_signed_records_are_refused_with_a_reason(
    signer: CommitSigner, data: bytes, reason: str
) -> None:
    with pytest.raises(UnverifiedRecord) as caught:
        read_round_record(data, 3, signer.public)

    assert caught.value.reason == reason
    assert signer.fingerprint in str(caught.value)


def test_a_signed_but_invalid_record_is_refused_as_malformed(signer: CommitSigner) -> None:
    fields = {"round": 3, "nonsense": True}
    fields["signature"] = signer._key.sign(canonical_bytes("round", fields)).hex()

    with pytest.raises(UnverifiedRecord) as caught:
        read_round_record(json.dumps(fields).encode(), 3, signer.public)

    assert caught.value.reason == "malformed"


def test_the_final_record_must_name_the_final_model(signer: CommitSigner) -> None:
    good = signer.sign("final", layout.FinalRecord(rounds=3, model_sha256="ab" * 32))
    elsewhere = signer.sign(
        "final", layout.FinalRecord(rounds=3, model_sha256="ab" * 32, model_key="x/y")
    )

    assert read_final_record(good.to_json(), signer.public) == good
    with pytest.raises(UnverifiedRecord, match="wrong-round"):
        read_final_record(elsewhere.to_json(), signer.public)


def test_key_files_round_trip_and_the_private_key_never_shows(tmp_path: Path) -> None:
    private, public = generate_key_pair()
    (tmp_path / "private.pem").write_bytes(private)
    (tmp_path / "public.pem").write_bytes(public)

    signer = load_signer(tmp_path / "private.pem")
    verifier = load_verifier(tmp_path / "public.pem")

    assert signer.fingerprint == verifier.fingerprint
    assert verifier.fingerprint.startswith("sha256:")
    assert len(verifier.fingerprint) == len("sha256:") + 16
    assert "PRIVATE" not in repr(signer)
    assert private.decode() not in f"{signer} {signer!r}"
    with pytest.raises(TypeError, match="cannot be pickled"):
        signer.__reduce__()


def test_keys_come_from_the_environment(tmp_path: Path) -> None:
    private, public = generate_key_pair()
    (tmp_path / "k").write_bytes(private)
    (tmp_path / "p").write_bytes(public)

    signer = signer_from_env({"FEDKUBE_COMMIT_KEY_FILE": str(tmp_path / "k")})
    verifier = verifier_from_env({"FEDKUBE_COMMIT_PUBLIC_KEY_FILE": str(tmp_path / "p")})

    assert signer.fingerprint == verifier.fingerprint
    with pytest.raises(FedcoreError, match="FEDKUBE_COMMIT_KEY_FILE is not set"):
        signer_from_env({})
    with pytest.raises(FedcoreError, match="FEDKUBE_COMMIT_PUBLIC_KEY_FILE is not set"):
        verifier_from_env({})
    with pytest.raises(FedcoreError, match=r"cannot read the commit public key file .*nope"):
        verifier_from_env({"FEDKUBE_COMMIT_PUBLIC_KEY_FILE": str(tmp_path / "nope")})


def test_keys_of_the_wrong_kind_are_refused_naming_the_file(tmp_path: Path) -> None:
    other = X25519PrivateKey.generate()
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "x25519.pem").write_bytes(pem)
    (tmp_path / "garbage.pem").write_text("not a key")

    with pytest.raises(FedcoreError, match=r"x25519\.pem holds a .*not an Ed25519 private key"):
        load_signer(tmp_path / "x25519.pem")
    with pytest.raises(FedcoreError, match=r"garbage\.pem is not a PEM public key"):
        load_verifier(tmp_path / "garbage.pem")


def test_a_record_signed_by_another_key_is_refused() -> None:
    ours = CommitSigner(Ed25519PrivateKey.generate())
    theirs = CommitSigner(Ed25519PrivateKey.generate())
    forged = theirs.sign("round", round_record())

    with pytest.raises(UnverifiedRecord, match=ours.fingerprint):
        read_round_record(forged.to_json(), 3, ours.public)
    assert verifier_from_pem(ours.public.public_pem()).fingerprint == ours.fingerprint
