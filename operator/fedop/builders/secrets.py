"""The per-client signing-key Secrets ``<job>-<client>-key`` and the job's commit key Secret.

Each client's pods mount only their own Secret (``FEDKUBE_SIGNING_KEY_FILE``); the aggregator
mounts all of them through one projected volume, one file per client name
(``FEDKUBE_SIGNING_KEYS_DIR``), and verifies every update's HMAC with the sender's key. A key
is made once, when its Secret is created, and never rewritten: rotating it mid-job would turn
the client's in-flight update into a forgery.
"""

from __future__ import annotations

import base64
from typing import Any

from fedop.builders import names

KEY = "key"
"""The Secret's data key holding the HMAC key (hex text, as ``fedcore.signing`` reads it)."""


def key_secret(job: names.JobRef, client: str, key: str) -> dict[str, Any]:
    """The Secret holding ``client``'s signing key ``key`` (``fedcore.signing.generate_key()``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": names.metadata(job, names.key_secret(job, client), "client", client),
        "data": {KEY: base64.b64encode(key.encode()).decode()},
        "immutable": True,
    }


COMMIT_PRIVATE_KEY = "private.pem"
"""Data key of ``<job>-commit-key`` holding the aggregator's Ed25519 private key (PKCS#8)."""
COMMIT_PUBLIC_KEY = "public.pem"


def commit_key_secret(job: names.JobRef, private_pem: bytes, public_pem: bytes) -> dict[str, Any]:
    """``<job>-commit-key``: the aggregator's commit signing pair
    (``fedcore.commit_signing.generate_key_pair()``), mounted only into the aggregator pod.

    Made once and immutable: a new key would make every record already committed unverifiable.
    The public half is also an annotation, so that a pass that lists Secrets as metadata only
    can put it into the job's ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            **names.metadata(job, names.commit_key_secret(job), "aggregator"),
            "annotations": {names.ANNOTATION_COMMIT_PUBLIC_KEY: public_pem.decode("ascii")},
        },
        "data": {
            COMMIT_PRIVATE_KEY: base64.b64encode(private_pem).decode(),
            COMMIT_PUBLIC_KEY: base64.b64encode(public_pem).decode(),
        },
        "immutable": True,
    }
