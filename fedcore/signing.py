"""Per-client HMAC signatures on update manifests: one client cannot forge another's update.

A client signs its ``UpdateManifest`` with its own key; the aggregator, which holds every
client's key, verifies it before trusting any field. The signature is HMAC-SHA256 over the
canonical JSON of the manifest without its ``signature`` field (keys sorted, no whitespace,
ASCII only). The manifest records the update file's sha256 and size, so the signature covers
the update's bytes too.

Keys are secrets: ``SigningKey`` never shows its bytes in ``repr``/``str``, and nothing here
logs them. A key file holds the key as text (``generate_key()`` makes 64 hex characters);
surrounding whitespace is ignored and the remaining bytes are the HMAC key, which must be at
least 32 bytes long. Where keys come from (first match wins, see ``key_from_env``):

* ``FEDKUBE_SIGNING_KEY_FILE``: a client's own key (mounted from its Secret);
* ``FEDKUBE_SIGNING_KEYS_DIR``: the aggregator's keys, one file per client named after it (a
  mounted Secret whose keys are client names; Kubernetes' hidden ``..data`` entries are
  skipped).

This module imports no torch: the operator may use ``generate_key`` to fill Secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcore.errors import FedcoreError
from fedcore.layout import UpdateManifest

SIGNING_KEY_FILE_ENV = "FEDKUBE_SIGNING_KEY_FILE"
SIGNING_KEYS_DIR_ENV = "FEDKUBE_SIGNING_KEYS_DIR"
MIN_KEY_BYTES = 32
"""HMAC-SHA256 keys shorter than its 32-byte output weaken it (RFC 2104, section 3)."""
SIGNATURE_FIELD = "signature"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class SigningKey:
    """An HMAC key whose bytes never appear in a repr, a log line or an error."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise FedcoreError(
                f"a signing key must be at least {MIN_KEY_BYTES} bytes long, got "
                f"{len(secret)}; create one with fedcore.signing.generate_key()"
            )
        self._secret = secret

    def sign(self, message: bytes) -> str:
        """Hex HMAC-SHA256 of ``message``."""
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "SigningKey(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a SigningKey cannot be pickled (it would copy the secret)")


def generate_key() -> str:
    """A fresh random key as 64 hex characters (32 bytes of entropy), to write into a key file."""
    return secrets.token_hex(32)


def _manifest_fields(manifest: Any) -> dict[str, Any]:
    if hasattr(manifest, "model_dump"):
        fields: dict[str, Any] = manifest.model_dump(mode="json")
        if not fields.get("shards"):  # added later: unsharded manifests sign as before
            fields.pop("shards", None)
        return fields
    if isinstance(manifest, Mapping):
        return dict(manifest)
    raise TypeError(
        f"a manifest must be an UpdateManifest or a mapping, got {type(manifest).__name__}"
    )


def canonical_bytes(manifest: Any) -> bytes:
    """The bytes a manifest's signature covers: sorted-key JSON of every field but ``signature``.

    ``manifest`` is an ``UpdateManifest`` (or a mapping of its JSON fields). Non-finite floats
    (a NaN metric) cannot be signed: JSON has no spelling for them; drop or replace them.
    """
    fields = _manifest_fields(manifest)
    fields.pop(SIGNATURE_FIELD, None)
    try:
        text = json.dumps(
            fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except ValueError as e:
        raise ValueError(
            "the manifest holds a NaN or infinite number (a metric?) and cannot be signed; "
            "report only finite metrics"
        ) from e
    return text.encode("ascii")


def signature_of(manifest: Any, key: SigningKey) -> str:
    """Hex HMAC-SHA256 of ``canonical_bytes(manifest)`` under ``key``."""
    return key.sign(canonical_bytes(manifest))


def sign_manifest(manifest: UpdateManifest, key: SigningKey) -> UpdateManifest:
    """A copy of ``manifest`` with its ``signature`` set (any old signature is ignored)."""
    return manifest.model_copy(update={SIGNATURE_FIELD: signature_of(manifest, key)})


def verify(manifest: Any, key: SigningKey) -> bool:
    """Whether the manifest's ``signature`` field is the one ``key`` makes (constant-time).

    Never raises on hostile content: a signature that is not 64 hex digits, or fields that
    cannot be signed (a NaN), simply do not verify.
    """
    claimed = _manifest_fields(manifest).get(SIGNATURE_FIELD)
    if not isinstance(claimed, str) or not _SIGNATURE.fullmatch(claimed):
        return False
    try:
        expected = signature_of(manifest, key)
    except ValueError:  # no one can have signed what has no canonical form
        return False
    return hmac.compare_digest(expected.encode("ascii"), claimed.encode("ascii"))


def load_key(path: str | os.PathLike[str]) -> SigningKey:
    """The key stored in a key file (whitespace around it ignored)."""
    p = Path(path)
    try:
        secret = p.read_bytes().strip()
    except OSError as e:
        raise FedcoreError(
            f"cannot read the signing key file {p}: {e.strerror or e}; mount the client's key "
            f"Secret there or point {SIGNING_KEY_FILE_ENV} at the right file"
        ) from e
    if len(secret) < MIN_KEY_BYTES:
        raise FedcoreError(
            f"the signing key in {p} is {len(secret)} bytes, fewer than {MIN_KEY_BYTES}; "
            "write one made by fedcore.signing.generate_key()"
        )
    return SigningKey(secret)


def load_keys_dir(path: str | os.PathLike[str]) -> dict[str, SigningKey]:
    """Every client's key from a directory holding one file per client name."""
    root = Path(path)
    if not root.is_dir():
        raise FedcoreError(
            f"the signing keys directory {root} does not exist; mount the aggregator's keys "
            f"Secret there or point {SIGNING_KEYS_DIR_ENV} at the right directory"
        )
    keys: dict[str, SigningKey] = {}
    for entry in sorted(root.iterdir()):
        # Kubernetes mounts a Secret as visible symlinks into a hidden, timestamped directory.
        if entry.name.startswith(".") or not entry.is_file():
            continue
        keys[entry.name] = load_key(entry)
    return keys


def key_from_env(environ: Mapping[str, str] | None = None) -> SigningKey:
    """A client's own key, from the file ``FEDKUBE_SIGNING_KEY_FILE`` names."""
    env = os.environ if environ is None else environ
    path = env.get(SIGNING_KEY_FILE_ENV)
    if not path:
        raise FedcoreError(
            f"{SIGNING_KEY_FILE_ENV} is not set; a client needs its signing key to upload "
            "updates (the operator mounts it from the client's Secret)"
        )
    return load_key(path)


def keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, SigningKey]:
    """The aggregator's keys, from the directory ``FEDKUBE_SIGNING_KEYS_DIR`` names."""
    env = os.environ if environ is None else environ
    path = env.get(SIGNING_KEYS_DIR_ENV)
    if not path:
        raise FedcoreError(
            f"{SIGNING_KEYS_DIR_ENV} is not set; the aggregator needs every client's signing "
            "key to verify updates (the operator mounts them from the job's keys Secret)"
        )
    return load_keys_dir(path)


__all__ = [
    "MIN_KEY_BYTES",
    "SIGNING_KEYS_DIR_ENV",
    "SIGNING_KEY_FILE_ENV",
    "SigningKey",
    "canonical_bytes",
    "generate_key",
    "key_from_env",
    "keys_from_env",
    "load_key",
    "load_keys_dir",
    "sign_manifest",
    "signature_of",
    "verify",
]
