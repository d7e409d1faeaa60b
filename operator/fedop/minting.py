"""Minting one role's store credentials: the I/O half of per-role credentials.

The operator signs an STS ``AssumeRole`` call with the job's own credential
(``spec.storage.secretRef``, which a scoped job must name) and the role's session policy
(``fedcore.credentials.session_policy``: a client reaches only its own update slot and what
every participant may read; the aggregator never deletes and never writes updates), and gets
temporary credentials back in the ``credentials.json`` format the S3 store reads.

What can go wrong, and what the caller does with it:

- the store has no STS (``fedcore.errors.StsUnavailable``): a scoped job cannot run there;
  the handler fails it at once, naming ``spec.storage.credentials: shared`` as the opt-out;
- the store refuses the call (``CredentialsError``: a wrong key pair in the job's Secret, a
  role it may not assume) or cannot be reached (``StoreError``): the pass is retried later,
  so fixing the Secret is enough.

Nothing here logs or formats a credential; ``MintedCredentials`` hides its text from ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fedcore import credentials as fc
from fedcore import spec as fs
from fedcore.errors import CredentialsError
from fedcore.store import sts
from fedop.builders.credentials import StoreRole
from fedop.store_view import Credentials


@dataclass(frozen=True)
class MintedCredentials:
    """One role's temporary credentials as the pods' file holds them. Never printed."""

    text: str
    """``credentials.json``: accessKeyId, secretAccessKey, sessionToken, expiration."""
    expiration: datetime

    def __repr__(self) -> str:
        return f"MintedCredentials(<redacted>, expiration={self.expiration.isoformat()})"


Minter = Callable[[fs.FederatedJob, StoreRole, "Credentials | None", int], MintedCredentials]
"""(job, role, the job's credential, lifetime in seconds) -> the role's new credentials."""


def policy_role(role: StoreRole) -> fc.Role:
    """The role as ``fedcore.credentials.session_policy`` names it."""
    return fc.Role.aggregator() if role.kind == "aggregator" else fc.Role.for_client(role.client)


def session_name(job: fs.FederatedJob, role: StoreRole) -> str:
    """``RoleSessionName``: shows up in the store's audit log (2-64 chars of [\\w+=,.@-])."""
    who = "aggregator" if role.kind == "aggregator" else f"client-{role.client}"
    uid = (job.metadata.uid or "")[:8]
    return f"fedkube-{job.name}-{uid}-{who}"[:64]


def mint_with_sts(
    job: fs.FederatedJob, role: StoreRole, credentials: Credentials | None, lifetime: int
) -> MintedCredentials:
    """AssumeRole on the job's store for ``role``; see the module docstring for errors."""
    storage = job.spec.storage
    if credentials is None:
        raise CredentialsError(
            "scoped store credentials are minted with the job's own credential, and the job "
            "names none: set spec.storage.secretRef (or spec.storage.credentials: shared)"
        )
    minted = sts.assume_role(
        storage.endpoint,
        credentials.access_key_id,
        credentials.secret_access_key,
        policy(job, role),
        lifetime,
        role_arn=storage.role_arn,
        region=storage.region,
        session_name=session_name(job, role),
    )
    return MintedCredentials(
        text=fc.dump_credentials(minted).decode(), expiration=minted.expiration
    )


def policy(job: fs.FederatedJob, role: StoreRole) -> dict[str, Any]:
    """The session policy of ``role`` in ``job`` (``CredentialsError`` when the job's bucket
    or prefix cannot make one: the edge checks this before anything is created)."""
    return fc.session_policy(
        job.spec.storage.bucket,
        fs.job_prefix(job),
        policy_role(role),
        variate=fc.keeps_variate(job.spec.strategy.name),
    )
