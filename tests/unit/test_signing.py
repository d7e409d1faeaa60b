"""Manifest signatures: what they cover, who can make them, and keys kept secret."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from fedcore.errors import FedcoreError
from fedcore.layout import UpdateManifest
from fedcore.signing import (
    SigningKey,
    canonical_bytes,
    generate_key,
    key_from_env,
    keys_from_env,
    load_key,
    load_keys_dir,
    sign_manifest,
    verify,
)

KEY_A = SigningKey(b"a" * 64)
KEY_B = SigningKey(b"b" * 64)


def make_manifest(**overrides: Any) -> UpdateManifest:
    fields: dict[str, Any] = {
        "client": "hospital-a",
        "round": 3,
        "base_round": 2,
        "base_sha256": "1" * 64,
        "num_samples": 120,
        "metrics": {"loss": 0.25, "accuracy": 0.875},
        "update_sha256": "2" * 64,
        "update_bytes": 4096,
        "dtype": "float32",
    }
    fields.update(overrides)
    return UpdateManifest(**fields)


def test_signed_manifest_verifies_with_the_same_key() -> None:
    signed = sign_manifest(make_manifest(), KEY_A)

    assert len(signed.signature) == 64
    assert verify(signed, KEY_A)


def test_signature_survives_the_json_round_trip_through_the_store() -> None:
    signed = sign_manifest(make_manifest(metrics={"loss": 0.1, "f1": 1 / 3}), KEY_A)

    received = UpdateManifest.model_validate_json(signed.to_json())

    assert verify(received, KEY_A)
    assert verify(json.loads(signed.to_json()), KEY_A)


def test_another_clients_key_does_not_verify() -> None:
    assert not verify(sign_manifest(make_manifest(), KEY_A), KEY_B)


@pytest.mark.parametrize(
    "change",
    [
        {"client": "hospital-b"},
        {"round": 4},
        {"num_samples": 121},
        {"update_sha256": "3" * 64},
        {"update_bytes": 4097},
        {"metrics": {"loss": 0.0, "accuracy": 0.875}},
        {"base_sha256": "0" * 64},
    ],
    ids=lambda change: f"changing {next(iter(change))}",
)
def test_changing_any_field_after_signing_breaks_the_signature(change: dict[str, Any]) -> None:
    signed = sign_manifest(make_manifest(), KEY_A)

    tampered = signed.model_copy(update=change)

    assert not verify(tampered, KEY_A)


def test_unsigned_manifest_does_not_verify() -> None:
    assert not verify(make_manifest(), KEY_A)


def test_canonical_bytes_are_sorted_compact_json_without_the_signature() -> None:
    signed = sign_manifest(make_manifest(), KEY_A)

    text = canonical_bytes(signed).decode("ascii")

    fields = json.loads(text)
    assert "signature" not in fields
    assert list(fields) == sorted(fields)
    assert " " not in text
    assert fields["update_sha256"] == "2" * 64


def test_a_nan_metric_cannot_be_put_in_a_manifest_nor_signed() -> None:
    with pytest.raises(ValueError, match="finite number"):
        make_manifest(metrics={"loss": float("nan")})
    fields = json.loads(make_manifest().to_json())
    fields["metrics"]["loss"] = float("inf")

    with pytest.raises(ValueError, match="NaN or infinite"):
        canonical_bytes(fields)


@pytest.mark.parametrize(
    "signature",
    ["\ud800" * 64, "Z" * 64, "a" * 63, "A" * 64, 12, None, ["a" * 64]],
    ids=["lone surrogates", "not hex", "too short", "upper case", "a number", "null", "a list"],
)
def test_hostile_signatures_do_not_verify_and_never_raise(signature: Any) -> None:
    fields = json.loads(sign_manifest(make_manifest(), KEY_A).to_json())
    fields["signature"] = signature

    assert not verify(fields, KEY_A)


def test_fields_that_cannot_be_signed_do_not_verify() -> None:
    fields = json.loads(sign_manifest(make_manifest(), KEY_A).to_json())
    fields["metrics"]["loss"] = float("nan")

    assert not verify(fields, KEY_A)


def test_keys_never_show_their_bytes() -> None:
    secret = b"s3cr3t-" * 8
    key = SigningKey(secret)

    assert "s3cr3t" not in repr(key)
    assert "s3cr3t" not in str(key)
    assert "s3cr3t" not in f"{key}"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


def test_short_keys_are_refused() -> None:
    with pytest.raises(FedcoreError, match="at least 32 bytes"):
        SigningKey(b"short")


def test_generated_keys_are_64_hex_characters_and_differ() -> None:
    first, second = generate_key(), generate_key()

    assert len(first) == 64
    int(first, 16)
    assert first != second


def test_key_file_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    secret = generate_key()
    (tmp_path / "key").write_text(f"  {secret}\n")

    key = load_key(tmp_path / "key")

    manifest = make_manifest()
    assert (
        sign_manifest(manifest, key).signature
        == sign_manifest(manifest, SigningKey(secret.encode())).signature
    )


def test_a_too_short_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("tiny\n")

    with pytest.raises(FedcoreError, match="generate_key"):
        load_key(tmp_path / "key")


def test_keys_dir_reads_a_mounted_secret_and_skips_its_hidden_entries(tmp_path: Path) -> None:
    # The layout Kubernetes uses for a Secret volume: visible symlinks into a hidden dir.
    data = tmp_path / "..2024_01_01_00_00_00.000000001"
    data.mkdir()
    for name in ("hospital-a", "hospital-b"):
        (data / name).write_text(generate_key())
    (tmp_path / "..data").symlink_to(data.name)
    for name in ("hospital-a", "hospital-b"):
        (tmp_path / name).symlink_to(f"..data/{name}")

    keys = load_keys_dir(tmp_path)

    assert sorted(keys) == ["hospital-a", "hospital-b"]
    signed = sign_manifest(make_manifest(), keys["hospital-a"])
    assert not verify(signed, keys["hospital-b"])


def test_keys_come_from_the_files_the_environment_names(tmp_path: Path) -> None:
    (tmp_path / "own").write_text(generate_key())
    keys_dir = tmp_path / "all"
    keys_dir.mkdir()
    (keys_dir / "hospital-a").write_text((tmp_path / "own").read_text())

    own = key_from_env({"FEDKUBE_SIGNING_KEY_FILE": str(tmp_path / "own")})
    all_keys = keys_from_env({"FEDKUBE_SIGNING_KEYS_DIR": str(keys_dir)})

    assert verify(sign_manifest(make_manifest(), own), all_keys["hospital-a"])


def test_missing_key_configuration_names_the_variable() -> None:
    with pytest.raises(FedcoreError, match="FEDKUBE_SIGNING_KEY_FILE is not set"):
        key_from_env({})
    with pytest.raises(FedcoreError, match="FEDKUBE_SIGNING_KEYS_DIR is not set"):
        keys_from_env({})


def test_missing_key_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FedcoreError, match=r"nope.*FEDKUBE_SIGNING_KEY_FILE"):
        load_key(tmp_path / "nope")
