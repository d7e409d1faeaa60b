"""Who may touch which keys of a job's store, and the file a role's credentials travel in.

A job's processes do not share one store credential. Whoever holds the job's own credential
(the operator, or ``fedkube run``) mints a temporary credential per role with the S3 STS
``AssumeRole`` call (``fedcore.store.sts``) and an inline session policy from
``session_policy``: the store then refuses everything the role does not need, whatever the
process tries. Keys are relative to the job's prefix ``<p>``:

=====================  ==========================================================================
role                   may
=====================  ==========================================================================
``client <c>``         GetObject ``job.json``, ``rounds/??????/{global.safetensors, round.json,
                       strategy.safetensors}``, ``final/*`` and its own keys:
                       ``rounds/??????/updates/<c>.json`` and ``<c>.*safetensors`` (the update,
                       or an FSDP client's shards) and, in a SCAFFOLD job, its control variate
                       ``clients/<c>/scaffold.safetensors``; PutObject (and abort its multipart
                       uploads) only on those own keys. No listing, no delete.
``aggregator``         GetObject and ListBucket under ``<p>``; PutObject on ``job.json``,
                       ``rounds/??????/{global.safetensors, round.json, strategy.safetensors}``
                       and ``final/*``. No delete, nothing under ``updates/``.
=====================  ==========================================================================

``??????`` is six characters (IAM's ``?`` matches one character, ``/`` included), so a
client named ``global`` cannot reach another client's slot through a wildcard. A session
policy can only narrow what the job's credential allows, never widen it.

A role's credentials reach its processes as ``credentials.json``
(``{"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}``, expiration in RFC
3339), named by ``$FEDKUBE_STORE_CREDENTIALS_FILE``; the S3 store re-reads it before the
credentials expire, so rotation needs no restart.

This module is pure (no boto3, no I/O beyond the credentials file): the operator, the local
runner and the store share it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fedcore.errors import CredentialsError
from fedcore.layout import client_variate_key

CREDENTIALS_FILE_ENV = "FEDKUBE_STORE_CREDENTIALS_FILE"
"""Environment variable naming a role's ``credentials.json``; set, the S3 store signs with
the credentials in that file (re-read before they expire) instead of the AWS environment."""
CREDENTIALS_MOUNT_DIR = "/var/run/fedkube/store"
"""Where a pod mounts its role's credentials Secret (read-only)."""
CREDENTIALS_FILE_NAME = "credentials.json"
"""The file (and the Secret's data key) holding a role's credentials."""

MIN_DURATION_SECONDS = 900
"""Shortest lifetime STS grants (AWS, MinIO and Ceph RGW all refuse less than 15 minutes)."""
MAX_DURATION_SECONDS = 12 * 3600
"""Longest lifetime AWS grants a role session (its role's MaxSessionDuration caps it further)."""
MAX_SESSION_POLICY_CHARS = 2048
"""AWS's limit on an inline session policy's plain text (MinIO allows more, RGW follows AWS)."""

POLICY_VERSION = "2012-10-17"
_ROUND = "rounds/??????/"
PUBLIC_KEYS: tuple[str, ...] = (
    "job.json",
    f"{_ROUND}global.safetensors",
    f"{_ROUND}round.json",
    f"{_ROUND}strategy.safetensors",
    "final/*",
)
"""Keys (IAM globs, relative to the job's prefix) every role may read: what every
participant gets anyway. The aggregator writes exactly these."""
_WILDCARDS = frozenset("*?$")
"""Characters IAM reads as wildcards or policy variables (``${...}``) in a resource."""
_NOT_IN_NAMES = _WILDCARDS | {"/"}


@dataclass(frozen=True)
class Role:
    """A party of a job with its own store credential: the aggregator or one client."""

    kind: Literal["aggregator", "client"]
    client: str | None = None
    """The client's name (``spec.clients[].name``) for a client role, else None."""

    def __post_init__(self) -> None:
        if (self.kind == "client") != (self.client is not None):
            raise ValueError(
                f"role {self.kind!r} with client={self.client!r}: a client role names its "
                "client, the aggregator role names none"
            )
        if self.client is not None and (not self.client or set(self.client) & _NOT_IN_NAMES):
            raise CredentialsError(
                f"client name {self.client!r} cannot appear in a store policy (it is empty or "
                "holds '/', '*', '?' or '$'); use a DNS label such as 'hospital-a'"
            )

    @classmethod
    def aggregator(cls) -> Role:
        return cls("aggregator")

    @classmethod
    def for_client(cls, name: str) -> Role:
        return cls("client", name)

    def __str__(self) -> str:
        return "aggregator" if self.client is None else f"client {self.client}"


VARIATE_STRATEGIES = frozenset({"scaffold"})
"""Strategies whose clients keep state of their own between rounds (SCAFFOLD's control
variate, ``clients/<c>/scaffold.safetensors``): only their jobs' client policies name that
key, so other jobs' policies stay as short as before (STS's 2048 characters are tight)."""


def keeps_variate(strategy: str) -> bool:
    """Whether a job whose ``spec.strategy.name`` is ``strategy`` gives clients a variate slot."""
    return strategy in VARIATE_STRATEGIES


def readable_keys(role: Role, *, variate: bool = False) -> tuple[str, ...]:
    """Keys (IAM globs relative to the job's prefix) ``role`` may GetObject; ``variate``: the
    job's strategy keeps a client variate (``keeps_variate``)."""
    if role.client is None:
        return ("*",)
    return PUBLIC_KEYS + writable_keys(role, variate=variate)


def writable_keys(role: Role, *, variate: bool = False) -> tuple[str, ...]:
    """Keys (IAM globs relative to the job's prefix) ``role`` may PutObject; ``variate``: a
    client also keeps its own control variate (``keeps_variate``)."""
    if role.client is None:
        return PUBLIC_KEYS
    # ``<c>.*safetensors``: the update, or an FSDP client's shards (``<c>.shard-...``) in one
    # pattern, as policies must stay under STS's 2048 characters. Client names are DNS labels
    # (no '.'), so ``<c>.`` begins only this client's keys.
    own = (
        f"{_ROUND}updates/{role.client}.json",
        f"{_ROUND}updates/{role.client}.*safetensors",
    )
    return own + ((client_variate_key(role.client),) if variate else ())


def may_list(role: Role) -> bool:
    """Whether ``role`` may list the job's keys (only the aggregator)."""
    return role.client is None


def denied_is_missing_keys(role: Role | None) -> tuple[str, ...]:
    """Keys (IAM globs) where an ``AccessDenied`` to ``role`` means "no such key": AWS and
    Ceph RGW answer a missing key with 403, not 404, to a reader that may not list it (a
    client; and the aggregator too, should a store not count its prefix-bound ListBucket).
    These are exactly the keys the role may read (a client's variate slot included: reading
    it is harmless where the job keeps none); None (role unknown): the keys every role may
    read. The S3 store reads AccessDenied as "missing" on these keys only."""
    return PUBLIC_KEYS if role is None else readable_keys(role, variate=True)


def glob_matches(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the IAM resource glob ``pattern`` (``*``: any run of
    characters, ``?``: one character; both match ``/`` too, as IAM's do)."""
    return _glob_regex(pattern).fullmatch(key) is not None


def may_read(role: Role, key: str, *, variate: bool = False) -> bool:
    """Whether ``role``'s session policy lets it GetObject ``key`` (relative to the prefix)."""
    return any(glob_matches(p, key) for p in readable_keys(role, variate=variate))


@cache
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL
    )


def session_policy(
    bucket: str, prefix: str, role: Role, *, variate: bool = False
) -> dict[str, Any]:
    """The inline session policy (IAM JSON) limiting ``role`` to its keys of the job stored
    under ``prefix`` (the job's full key prefix) in ``bucket``; ``variate``: the job's
    strategy keeps a client variate (``keeps_variate(spec.strategy.name)``).

    Raises ``CredentialsError`` when the bucket or prefix holds characters IAM would read
    as wildcards, or when the policy outgrows the 2048 characters AWS accepts.
    """
    _check_literal("spec.storage.bucket", bucket)
    _check_literal("the job's key prefix (spec.storage.prefix)", prefix)
    p = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def arns(keys: tuple[str, ...]) -> list[str]:
        return [f"arn:aws:s3:::{bucket}/{p}{key}" for key in keys]

    statements: list[dict[str, Any]] = []
    if may_list(role):
        statements.append(
            {
                "Sid": "ListJobKeys",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{p}*"]}},
            }
        )
    writes = ["s3:PutObject", "s3:AbortMultipartUpload"]
    if role.client is None:
        statements += [
            _allow("ReadJobKeys", ["s3:GetObject"], arns(readable_keys(role))),
            _allow("WriteRounds", writes, arns(writable_keys(role))),
        ]
    else:
        # The client's own keys appear once, readable and writable: the policy stays short
        # enough for STS's 2048 characters with long prefixes.
        statements += [
            _allow("ReadJobKeys", ["s3:GetObject"], arns(PUBLIC_KEYS)),
            _allow(
                "OwnUpdate",
                ["s3:GetObject", *writes],
                arns(writable_keys(role, variate=variate)),
            ),
        ]
    policy = {"Version": POLICY_VERSION, "Statement": statements}
    size = len(policy_json(policy))
    if size > MAX_SESSION_POLICY_CHARS:
        raise CredentialsError(
            f"the store policy of {role} is {size} characters, more than the "
            f"{MAX_SESSION_POLICY_CHARS} STS accepts, because the job's key prefix {p!r} is "
            "long; shorten spec.storage.prefix (or the job's name)"
        )
    return policy


def slot_writer(round_: int, client: str, *, scoped: bool, is_client: bool) -> str:
    """Whose store credential could have written ``client``'s update slot of ``round_``, as
    far as the store's access rules tell: a rejection names the participant that misbehaved,
    never its victim, and says plainly when the rules cannot tell.

    ``scoped``: every role holds its own minted credential (an S3 store with
    ``credentials: scoped``); ``is_client``: ``client`` is a client of the job.
    """
    slot = f"rounds/{round_:06d}/updates/{client}.*"
    if scoped and is_client:
        return f"written with client {client}'s own store credential: only it may write {slot}"
    if scoped:
        return (
            f"written with the job's own store credential: no participant's credential may "
            f"write {slot}, since {client!r} is not a client of the job"
        )
    return (
        f"who wrote {slot} is unknown: every process holds the same store access "
        "(spec.storage.credentials: shared, or a local store)"
    )


def _allow(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def policy_json(policy: dict[str, Any]) -> str:
    """A policy as sent to STS: compact JSON, keys in the order they were built."""
    return json.dumps(policy, separators=(",", ":"))


def _check_literal(what: str, value: str) -> None:
    bad = sorted(set(value) & _WILDCARDS)
    if bad:
        raise CredentialsError(
            f"{what} {value!r} contains {', '.join(repr(c) for c in bad)}, which a store "
            "policy reads as a wildcard or variable, so scoped credentials could reach other "
            "jobs' keys; rename it without those characters"
        )


# ---- credentials ---------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ScopedCredentials:
    """A temporary store credential minted for one role. Its repr shows no secret."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    """When the store stops accepting it (timezone-aware)."""

    def __post_init__(self) -> None:
        if self.expiration.tzinfo is None:
            raise ValueError("ScopedCredentials.expiration must be timezone-aware")

    def __repr__(self) -> str:
        return f"ScopedCredentials(<redacted>, expiration={_rfc3339(self.expiration)!r})"

    def remaining(self, now: datetime | None = None) -> timedelta:
        """Time left before the credential expires (negative once it has)."""
        return self.expiration - (now or datetime.now(UTC))


_FIELDS = {
    "accessKeyId": "access_key_id",
    "secretAccessKey": "secret_access_key",
    "sessionToken": "session_token",
    "expiration": "expiration",
}


def dump_credentials(creds: ScopedCredentials) -> bytes:
    """The ``credentials.json`` bytes of ``creds`` (a Secret's data, a runner's file)."""
    data = {
        "accessKeyId": creds.access_key_id,
        "secretAccessKey": creds.secret_access_key,
        "sessionToken": creds.session_token,
        "expiration": _rfc3339(creds.expiration),
    }
    return (json.dumps(data, indent=2) + "\n").encode()


def load_credentials(data: bytes | str, *, source: str = "credentials.json") -> ScopedCredentials:
    """Parse ``credentials.json`` bytes; ``CredentialsError`` naming ``source`` and the field
    when they are not a complete credential. Never quotes a secret in the message."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CredentialsError(
            f"{source} is not JSON ({type(e).__name__} at {getattr(e, 'pos', '?')}); it must "
            'hold {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}'
        ) from None
    if not isinstance(obj, dict):
        raise CredentialsError(
            f"{source} holds a JSON {type(obj).__name__}, not an object with accessKeyId, "
            "secretAccessKey, sessionToken and expiration"
        )
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise CredentialsError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
            f"{', '.join(_FIELDS)}"
        )
    values: dict[str, Any] = {}
    for name, attr in _FIELDS.items():
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            if name not in obj:
                got = "missing"
            elif isinstance(value, str):
                got = "empty"
            else:
                got = f"a JSON {type(value).__name__}"
            raise CredentialsError(
                f"{source}: field {name!r} is {got}; it must be a non-empty string"
            )
        values[attr] = value
    values["expiration"] = _parse_expiration(values["expiration"], source)
    return ScopedCredentials(**values)


def _parse_expiration(text: str, source: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise CredentialsError(
            f"{source}: field 'expiration' is {text!r}, not an RFC 3339 time with a time zone; "
            "write it like '2026-01-31T12:00:00Z'"
        )
    return when.astimezone(UTC)


def read_credentials_file(path: Path) -> ScopedCredentials:
    """The credentials in the file at ``path``; ``CredentialsError`` naming it otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CredentialsError(
            f"cannot read the store credentials file {path} ({e.strerror or e}); it is named by "
            f"${CREDENTIALS_FILE_ENV} (in a cluster: the role's Secret mounted at "
            f"{CREDENTIALS_MOUNT_DIR})"
        ) from e
    return load_credentials(data, source=str(path))


def write_credentials_file(path: Path, creds: ScopedCredentials) -> None:
    """Write ``creds`` to ``path`` (mode 0600) atomically: a reader sees the old file or the
    new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(dump_credentials(creds))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = [
    "CREDENTIALS_FILE_ENV",
    "CREDENTIALS_FILE_NAME",
    "CREDENTIALS_MOUNT_DIR",
    "MAX_DURATION_SECONDS",
    "MIN_DURATION_SECONDS",
    "PUBLIC_KEYS",
    "Role",
    "ScopedCredentials",
    "denied_is_missing_keys",
    "dump_credentials",
    "glob_matches",
    "load_credentials",
    "may_list",
    "may_read",
    "policy_json",
    "read_credentials_file",
    "readable_keys",
    "session_policy",
    "writable_keys",
    "write_credentials_file",
]
