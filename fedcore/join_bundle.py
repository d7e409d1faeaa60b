"""The join bundle: everything a site needs to take part in a job, in one file.

A site (``spec.clients[].site``) runs its client outside the coordinator's cluster and reaches
the job only through the bucket. The coordinator's operator keeps its bundle in the Secret
``<job>-<client>-join`` (data key ``bundle.json``); ``fedkube site bundle`` exports it and
``fedkube client --bundle FILE`` runs the site's DDP group from it alone. The file is JSON::

    {"apiVersion": "fedkube.io/v1alpha1", "kind": "FederatedJoinBundle",
     "client": "<name>",
     "store": {"endpoint": ..., "bucket": ..., "prefix": "<the job's full prefix>/", "region": ...},
     "credentials": {credentials.json: accessKeyId, secretAccessKey, sessionToken, expiration}
                    or {"accessKeyId", "secretAccessKey"} (a long-lived store user of the site),
     "signingKey": "<the client's HMAC key, hex>",
     "commitPublicKey": "<the aggregator's Ed25519 public key, PEM>",
     "job": {the job file every pod reads: apiVersion, kind, metadata, spec}}

It is a secret (store credentials and the signing key): written with mode 0600, never logged.
``store`` repeats what ``job`` implies, for the people who read the file; a bundle whose two
disagree is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fedcore import credentials as fc
from fedcore import spec as fs
from fedcore.errors import BundleError, CredentialsError, SpecError

KIND: Final = "FederatedJoinBundle"
API_VERSION: Final = f"{fs.API_GROUP}/{fs.API_VERSION}"
SECRET_KEY: Final = "bundle.json"
"""The data key of the ``<job>-<client>-join`` Secret holding the bundle."""


def join_secret_name(job: str, client: str) -> str:
    """``<job>-<client>-join``: the Secret holding a site's bundle in the coordinator's cluster."""
    return f"{job}-{client}-join"


_FIELDS = (
    "apiVersion",
    "kind",
    "client",
    "store",
    "credentials",
    "signingKey",
    "commitPublicKey",
    "job",
)


@dataclass(frozen=True, repr=False)
class StoreUserKeys:
    """The keys of a long-lived store user made for one site (``fedkube site policy``): no
    session token, no expiry; the store admin revokes them. Its repr shows no secret."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return "StoreUserKeys(<redacted>)"

    def to_json(self) -> str:
        return json.dumps(
            {"accessKeyId": self.access_key_id, "secretAccessKey": self.secret_access_key}
        )


SiteCredentials = fc.ScopedCredentials | StoreUserKeys


@dataclass(frozen=True, repr=False)
class JoinBundle:
    """A parsed, checked bundle. Its repr shows no secret."""

    client: str
    job: fs.FederatedJob
    credentials: SiteCredentials
    signing_key: str
    commit_public_key: str

    def __repr__(self) -> str:
        return f"JoinBundle(job={self.job.name!r}, client={self.client!r}, <redacted>)"


def store_of(job: fs.FederatedJob) -> dict[str, Any]:
    """The ``store`` section for ``job``: where its keys are."""
    storage = job.spec.storage
    return {
        "endpoint": storage.endpoint,
        "bucket": storage.bucket,
        "prefix": fs.job_prefix(job),
        "region": storage.region,
    }


def dump_bundle(
    job_document: dict[str, Any],
    client: str,
    credentials_json: bytes | str,
    signing_key: str,
    commit_public_key: str,
) -> bytes:
    """The bundle's bytes. ``job_document`` is the job file (``job.json``) the coordinator's
    pods read; the other arguments are the contents of the client's Secrets. Everything is
    checked as ``load_bundle`` would, so a bad bundle is never written."""
    job = fs.parse_job(job_document, source="the job file")
    data = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "client": client,
        "store": store_of(job),
        "credentials": json.loads(credentials_json),
        "signingKey": signing_key.strip(),
        "commitPublicKey": commit_public_key,
        "job": job_document,
    }
    text = (json.dumps(data, indent=2) + "\n").encode()
    load_bundle(text, source="the bundle being written")
    return text


def load_bundle(data: bytes | str, *, source: str = "bundle.json") -> JoinBundle:
    """Parse and check a bundle; ``BundleError`` naming ``source`` and the field otherwise.
    Never quotes a secret."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(
            f"{source} is not JSON ({type(e).__name__}); export it again with "
            "`fedkube site bundle JOB CLIENT -o FILE`"
        ) from None
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise BundleError(
            f"{source} is not a {KIND} (its kind is "
            f"{obj.get('kind') if isinstance(obj, dict) else type(obj).__name__!r}); export "
            "it with `fedkube site bundle JOB CLIENT -o FILE`"
        )
    missing = [f for f in _FIELDS if f not in obj]
    unknown = sorted(set(obj) - set(_FIELDS))
    if missing or unknown:
        raise BundleError(
            f"{source}: "
            + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            )
            + f"; a bundle holds {', '.join(_FIELDS)}"
        )
    if obj["apiVersion"] != API_VERSION:
        raise BundleError(
            f"{source}: apiVersion {obj['apiVersion']!r} is not {API_VERSION!r}; export the "
            "bundle with this version of fedkube"
        )
    try:
        job = fs.parse_job(obj["job"], source=f"{source}: job")
    except SpecError as e:
        raise BundleError(str(e)) from e
    client = obj["client"]
    if not isinstance(client, str):
        raise BundleError(f"{source}: field 'client' must be a string")
    try:
        spec = job.spec.client(client)
    except SpecError as e:
        raise BundleError(f"{source}: field 'client': {e}") from e
    if not spec.is_site:
        raise BundleError(
            f"{source}: client {client!r} is not a site of job {job.name!r} (its "
            "spec.clients[].site is unset); the coordinator runs its pods"
        )
    if obj["store"] != store_of(job):
        raise BundleError(
            f"{source}: field 'store' disagrees with the job's spec.storage and prefix; the "
            "file was edited: export it again"
        )
    creds = _credentials(obj["credentials"], f"{source}: credentials")
    key = obj["signingKey"]
    if not isinstance(key, str) or not key.strip():
        raise BundleError(f"{source}: field 'signingKey' must be a non-empty string")
    pem = obj["commitPublicKey"]
    if not isinstance(pem, str) or "BEGIN PUBLIC KEY" not in pem:
        raise BundleError(
            f"{source}: field 'commitPublicKey' must be the PEM text of the job's commit public key"
        )
    return JoinBundle(client, job, creds, key, pem)


def _credentials(value: Any, source: str) -> SiteCredentials:
    if isinstance(value, dict) and set(value) == {"accessKeyId", "secretAccessKey"}:
        access, secret = value["accessKeyId"], value["secretAccessKey"]
        if not all(isinstance(v, str) and v.strip() for v in (access, secret)):
            raise BundleError(
                f"{source}: accessKeyId and secretAccessKey must be non-empty strings"
            )
        return StoreUserKeys(access, secret)
    try:
        return fc.load_credentials(json.dumps(value), source=source)
    except CredentialsError as e:
        raise BundleError(
            f"{e} (or, for a long-lived store user, exactly accessKeyId and secretAccessKey)"
        ) from e


def group_job_document(
    bundle: JoinBundle, replicas: int, procs_per_replica: int, gpu: bool | None = None
) -> dict[str, Any]:
    """The job file of the site's processes: the bundle's, with the site client's group size
    (and ``gpu``, when given) set to the site's own: how the site runs its share is the
    site's business, not the coordinator's."""
    doc = bundle.job.to_object()
    for client in doc["spec"]["clients"]:
        if client["name"] == bundle.client:
            client["replicas"] = replicas
            client["procsPerReplica"] = procs_per_replica
            if gpu is not None:
                client["gpu"] = gpu
    return doc


def read_bundle(path: str | os.PathLike[str]) -> JoinBundle:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BundleError(
            f"cannot read the join bundle {path} ({e.strerror or e}); export it with "
            "`fedkube site bundle JOB CLIENT -o FILE`"
        ) from e
    return load_bundle(data, source=str(path))


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (a bundle holds secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)
