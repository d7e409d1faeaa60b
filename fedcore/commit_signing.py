"""Ed25519 signatures on commit records: only the job's aggregator can announce a round.

The store's create-if-absent commit only says who wrote *first*: anyone holding a credential
that may write ``rounds/NNNNNN/round.json`` (the job's own one, an insider's) could commit a
round before the aggregator and point every client at a model of their choosing. So the
aggregator signs each ``RoundRecord`` and the ``FinalRecord`` with the job's Ed25519 private
key, and every reader (clients, ``fedkube status``, the operator, the aggregator itself on
resume) verifies with the public key before it trusts a single field.

What is signed (``canonical_bytes``): a domain tag naming the record kind, then the record's
JSON members except ``signature``, re-serialised with sorted keys, no whitespace and ASCII
escapes. It is computed from the JSON as stored (``json.loads`` of the object's bytes), not
from a parsed model, so it is stable under re-serialisation and a reader verifies exactly
the values it will then use. The record names its model's sha256, so the signature covers
the model's bytes too. A valid signature alone is not enough for a round record: it must
also be the record of the round whose key it sits under (``round`` and ``model_key``), or an
old, genuinely signed record could be replayed into a later round's slot.

Key files are PEM: the private key PKCS#8 (unencrypted: it lives in a Secret mounted only
into the aggregator pod, or in ``fedkube run``'s state directory, mode 0600), the public key
SubjectPublicKeyInfo. ``CommitSigner`` never shows its key in a repr or a log line. A key is
named in logs and Events by its fingerprint: ``sha256:`` and the first 16 hex digits of the
sha256 of the raw 32-byte public key.

Where keys come from: ``FEDKUBE_COMMIT_KEY_FILE`` (the aggregator's private key) and
``FEDKUBE_COMMIT_PUBLIC_KEY_FILE`` (everybody else's public key). No torch here: the
operator makes key pairs and verifies records with this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from fedcore import layout
from fedcore.errors import FedcoreError, RoundProtocolError

COMMIT_KEY_FILE_ENV = "FEDKUBE_COMMIT_KEY_FILE"
COMMIT_PUBLIC_KEY_FILE_ENV = "FEDKUBE_COMMIT_PUBLIC_KEY_FILE"
SIGNATURE_FIELD = "signature"
DOMAIN = b"fedkube commit record v1\n"
"""Prefix of every signed message: a signature made for anything else never verifies here."""

DERIVE_DOMAIN = b"fedkube derived secret v1\n"
"""Prefix of what ``CommitSigner.derive_secret`` authenticates: not a record's message."""

RecordKind = Literal["round", "final"]
_Rec = TypeVar("_Rec", layout.RoundRecord, layout.FinalRecord)


class UnverifiedRecord(RoundProtocolError):
    """A commit record in the store is not one this job's aggregator signed.

    ``key`` is the record's store key, ``fingerprint`` the public key it was checked
    against, ``reason`` a short stable code (``unsigned``, ``bad-signature``,
    ``wrong-round``, ``malformed``); the message says all three and what it means.
    """

    def __init__(self, key: str, fingerprint: str, reason: str, detail: str) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.reason = reason
        self.detail = detail
        super().__init__(
            f"refused commit record {key} ({reason}): {detail}; it was not signed by this "
            f"job's aggregator key {fingerprint}, so someone else wrote it (a holder of a "
            "store credential that may write records) and nothing in it is trusted"
        )


class CommitVerifier:
    """The job's public key: checks that a record was signed by the aggregator."""

    __slots__ = ("_key", "fingerprint")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.fingerprint = "sha256:" + hashlib.sha256(raw).hexdigest()[:16]

    def public_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, kind: RecordKind, record: Any) -> bool:
        """Whether ``record`` (a record model, or its JSON members as a mapping) carries a
        valid signature of this key."""
        fields = _fields(record)
        claimed = fields.get(SIGNATURE_FIELD)
        if not isinstance(claimed, str) or not claimed:
            return False
        try:
            self._key.verify(bytes.fromhex(claimed), canonical_bytes(kind, fields))
        except (InvalidSignature, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"CommitVerifier({self.fingerprint})"


class CommitSigner:
    """The job's private key. Its bytes never appear in a repr, a log line or an error."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = CommitVerifier(key.public_key())

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, kind: RecordKind, record: _Rec) -> _Rec:
        """A copy of ``record`` with its ``signature`` set (any old signature is ignored)."""
        signature = self._key.sign(canonical_bytes(kind, _fields(record))).hex()
        return record.model_copy(update={SIGNATURE_FIELD: signature})

    def derive_secret(self, purpose: str) -> bytes:
        """32 secret bytes for ``purpose`` (HMAC-SHA256 keyed by the private key): a secret
        only the aggregator can compute, e.g. the seed of ``dpfedavg``'s noise
        (``fedcore.strategies.dp_noise``). Distinct purposes give independent secrets, and
        none of them reveals the key or a signature."""
        raw = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return hmac.new(raw, DERIVE_DOMAIN + purpose.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"CommitSigner(<redacted>, public {self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a CommitSigner cannot be pickled (it would copy the private key)")


def _fields(record: Any) -> dict[str, Any]:
    if isinstance(record, layout.RoundRecord | layout.FinalRecord):
        # The JSON as it is written to the store, so writer and reader sign the same values.
        fields: dict[str, Any] = json.loads(record.to_json())
        return fields
    if isinstance(record, Mapping):
        return dict(record)
    raise TypeError(f"a commit record must be a record or a mapping, got {type(record).__name__}")


def canonical_bytes(kind: RecordKind, record: Any) -> bytes:
    """The message a record's signature covers (see the module docstring)."""
    fields = _fields(record)
    fields.pop(SIGNATURE_FIELD, None)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return DOMAIN + kind.encode() + b"\n" + text.encode("ascii")


# ---- keys ---------------------------------------------------------------------------------------


def generate_key_pair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, CommitVerifier(key.public_key()).public_pem()


def signer_from_pem(data: bytes, *, source: str = "the commit key") -> CommitSigner:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise FedcoreError(
            f"{source} is not an unencrypted PEM private key ({e}); write one made by "
            "fedcore.commit_signing.generate_key_pair()"
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise FedcoreError(
            f"{source} holds a {type(key).__name__}, not an Ed25519 private key; commit "
            "records are signed with Ed25519 (fedcore.commit_signing.generate_key_pair())"
        )
    return CommitSigner(key)


def verifier_from_pem(data: bytes, *, source: str = "the commit public key") -> CommitVerifier:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise FedcoreError(
            f"{source} is not a PEM public key ({e}); use the public half made by "
            "fedcore.commit_signing.generate_key_pair()"
        ) from e
    if not isinstance(key, Ed25519PublicKey):
        raise FedcoreError(
            f"{source} holds a {type(key).__name__}, not an Ed25519 public key; commit "
            "records are verified with the aggregator's Ed25519 key"
        )
    return CommitVerifier(key)


def _read(path: str | os.PathLike[str], env: str, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise FedcoreError(
            f"cannot read the {what} file {p}: {e.strerror or e}; mount it there or point "
            f"{env} at the right file"
        ) from e


def load_signer(path: str | os.PathLike[str]) -> CommitSigner:
    """The private key in a PEM file."""
    data = _read(path, COMMIT_KEY_FILE_ENV, "commit signing key")
    return signer_from_pem(data, source=f"the commit signing key file {path}")


def load_verifier(path: str | os.PathLike[str]) -> CommitVerifier:
    """The public key in a PEM file."""
    data = _read(path, COMMIT_PUBLIC_KEY_FILE_ENV, "commit public key")
    return verifier_from_pem(data, source=f"the commit public key file {path}")


def signer_from_env(environ: Mapping[str, str] | None = None) -> CommitSigner:
    """The aggregator's private key, from the file ``FEDKUBE_COMMIT_KEY_FILE`` names."""
    env = os.environ if environ is None else environ
    path = env.get(COMMIT_KEY_FILE_ENV)
    if not path:
        raise FedcoreError(
            f"{COMMIT_KEY_FILE_ENV} is not set; the aggregator signs every commit record "
            "with the job's private key (the operator mounts it from <job>-commit-key)"
        )
    return load_signer(path)


def verifier_from_env(environ: Mapping[str, str] | None = None) -> CommitVerifier:
    """The job's public key, from the file ``FEDKUBE_COMMIT_PUBLIC_KEY_FILE`` names."""
    env = os.environ if environ is None else environ
    path = env.get(COMMIT_PUBLIC_KEY_FILE_ENV)
    if not path:
        raise FedcoreError(
            f"{COMMIT_PUBLIC_KEY_FILE_ENV} is not set; a client trusts a round only once "
            "its record verifies with the aggregator's public key (the operator mounts it "
            "from the job's ConfigMap)"
        )
    return load_verifier(path)


# ---- reading records from the store ------------------------------------------------------------


def _checked(
    kind: RecordKind, model: type[_Rec], data: bytes, key: str, verifier: CommitVerifier
) -> _Rec:
    fp = verifier.fingerprint
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UnverifiedRecord(key, fp, "malformed", f"not JSON ({e})") from e
    if not isinstance(fields, dict):
        raise UnverifiedRecord(key, fp, "malformed", "not a JSON object")
    if not fields.get(SIGNATURE_FIELD):
        raise UnverifiedRecord(key, fp, "unsigned", "the record carries no signature")
    if not verifier.verify(kind, fields):
        raise UnverifiedRecord(
            key, fp, "bad-signature", "its signature does not verify with the job's public key"
        )
    try:
        # From the verified members themselves: what was checked is what is used.
        return model.model_validate(fields)
    except ValidationError as e:
        raise UnverifiedRecord(
            key,
            fp,
            "malformed",
            f"signed, but not a valid {model.__name__} ({e.error_count()} problems)",
        ) from e


def read_round_record(data: bytes, r: int, verifier: CommitVerifier) -> layout.RoundRecord:
    """Round ``r``'s record from the bytes of ``rounds/<r>/round.json``, verified;
    ``UnverifiedRecord`` when it is unsigned, forged, malformed or another round's record."""
    key = layout.round_record_key(r)
    record = _checked("round", layout.RoundRecord, data, key, verifier)
    if record.round != r or record.model_key != layout.global_key(r):
        raise UnverifiedRecord(
            key,
            verifier.fingerprint,
            "wrong-round",
            f"it is the signed record of round {record.round} (model {record.model_key}), "
            f"replayed into round {r}'s place",
        )
    return record


def read_final_record(data: bytes, verifier: CommitVerifier) -> layout.FinalRecord:
    """The job's final record, verified (``UnverifiedRecord`` otherwise)."""
    record = _checked("final", layout.FinalRecord, data, layout.FINAL_RECORD_KEY, verifier)
    if record.model_key != layout.FINAL_MODEL_KEY:
        raise UnverifiedRecord(
            layout.FINAL_RECORD_KEY,
            verifier.fingerprint,
            "wrong-round",
            f"it names the model {record.model_key}, not {layout.FINAL_MODEL_KEY}",
        )
    return record


__all__ = [
    "COMMIT_KEY_FILE_ENV",
    "COMMIT_PUBLIC_KEY_FILE_ENV",
    "CommitSigner",
    "CommitVerifier",
    "UnverifiedRecord",
    "canonical_bytes",
    "generate_key_pair",
    "load_signer",
    "load_verifier",
    "read_final_record",
    "read_round_record",
    "signer_from_env",
    "signer_from_pem",
    "verifier_from_env",
    "verifier_from_pem",
]
