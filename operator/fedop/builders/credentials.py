"""Store credentials per role: the Secrets ``<job>-aggregator-store`` and ``<job>-<client>-store``,
and how a pod of that role (and only of that role) mounts its own.

With ``spec.storage.credentials: scoped`` (the default) no pod sees the job's own credential
(``spec.storage.secretRef``): the operator mints temporary credentials per role with the
store's STS (``fedop.minting``), scoped by a session policy to the keys that role needs, and
keeps them in the role's Secret as ``credentials.json``. A pod mounts its Secret read-only at
``/var/run/fedkube/store/`` and finds the file through ``FEDKUBE_STORE_CREDENTIALS_FILE``; the
S3 store re-reads it before expiry, so a rotated Secret reaches a running pod without a
restart. With ``shared`` every pod gets the job's credential as AWS_* variables, as before.

The Secrets carry when they were minted and when they expire as annotations, so the plan can
tell from a metadata-only list which ones are due for rotation (``fedop.rotation``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fedcore import spec as fs
from fedop.builders import names

CREDENTIALS_DIR = "/var/run/fedkube/store"
CREDENTIALS_KEY = "credentials.json"
"""The Secret's data key, and the file's name in the mounted folder."""
CREDENTIALS_FILE = f"{CREDENTIALS_DIR}/{CREDENTIALS_KEY}"
CREDENTIALS_FILE_ENV = "FEDKUBE_STORE_CREDENTIALS_FILE"
VOLUME = "fedkube-store-credentials"
ANNOTATION_MINTED_AT = "fedkube.io/credentials-minted-at"
ANNOTATION_EXPIRES_AT = "fedkube.io/credentials-expire-at"
ANNOTATION_ROTATIONS = "fedkube.io/credentials-rotations"
"""How many times this role's credentials were replaced (0 for the first ones)."""

Mode = Literal["scoped", "shared"]


def mode(spec: fs.FederatedJobSpec) -> Mode:
    """``spec.storage.credentials``: how pods reach the store."""
    value: Mode = spec.storage.credentials
    return value


@dataclass(frozen=True)
class StoreRole:
    """Who a credential is for: the aggregator, or one client (all pods of its group)."""

    kind: names.Role
    client: str = ""

    def __str__(self) -> str:
        return "aggregator" if self.kind == "aggregator" else f"client {self.client}"


AGGREGATOR = StoreRole("aggregator")


def client_role(client: str) -> StoreRole:
    return StoreRole("client", client)


def roles(spec: fs.FederatedJobSpec) -> list[StoreRole]:
    """Every role of the job that gets its own credential: the aggregator, then each client."""
    return [AGGREGATOR, *(client_role(c.name) for c in spec.clients)]


def secret_name(job: names.JobRef, role: StoreRole) -> str:
    if role.kind == "aggregator":
        return f"{names.aggregator_job(job)}-store"
    return f"{names.client_job(job, role.client)}-store"


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, ``Z``: the form the contract's ``expiration`` and Kubernetes use."""
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def store_secret(
    job: names.JobRef,
    role: StoreRole,
    credentials_json: str,
    *,
    minted_at: datetime,
    expires_at: datetime,
    rotations: int,
) -> dict[str, Any]:
    """The role's Secret holding ``credentials_json`` (``fedcore.credentials`` format)."""
    meta = names.metadata(job, secret_name(job, role), role.kind, role.client or None)
    meta["annotations"] = {
        ANNOTATION_MINTED_AT: rfc3339(minted_at),
        ANNOTATION_EXPIRES_AT: rfc3339(expires_at),
        ANNOTATION_ROTATIONS: str(rotations),
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "data": {CREDENTIALS_KEY: base64.b64encode(credentials_json.encode()).decode()},
    }


@dataclass(frozen=True)
class PodCredentials:
    """What a pod template gets so its container can sign store requests."""

    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def _shared_env(spec: fs.FederatedJobSpec) -> list[dict[str, Any]]:
    ref = spec.storage.secret_ref
    if ref is None:
        return []
    return [
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_id_key}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_access_key_key}},
        },
    ]


def pod_credentials(
    job: names.JobRef, spec: fs.FederatedJobSpec, role: StoreRole
) -> PodCredentials:
    """Scoped: the role's own Secret as a read-only file and the variable naming it, and
    nothing of the job's credential. Shared: the job's credential as AWS_* variables."""
    if mode(spec) == "shared":
        return PodCredentials(env=_shared_env(spec))
    volume = {
        "name": VOLUME,
        "secret": {
            "secretName": secret_name(job, role),
            "defaultMode": 0o440,
            "items": [{"key": CREDENTIALS_KEY, "path": CREDENTIALS_KEY}],
        },
    }
    mount = {"name": VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True}
    return PodCredentials(
        env=[{"name": CREDENTIALS_FILE_ENV, "value": CREDENTIALS_FILE}],
        volumes=[volume],
        mounts=[mount],
    )
