"""Scoped store credentials for ``fedkube run``: the laptop's stand-in for the operator's.

With an S3 endpoint and ``spec.storage.credentials: scoped`` (the default) the runner holds
the job's credential (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in its environment)
and no process it starts ever sees it. Instead it mints one temporary credential per role
(the aggregator, each client) with STS ``AssumeRole`` and the role's session policy
(``fedcore.credentials``), writes each to ``<dir>/<role>/credentials.json`` (folder 0700,
file 0600) in a private temp folder, and gives each process only its own file through
``$FEDKUBE_STORE_CREDENTIALS_FILE``, with every AWS credential variable removed from its
environment. A background thread mints and atomically replaces every file when half of the
credentials' lifetime has passed; the processes' stores re-read the file (no restart).

A store without STS fails the run before anything starts (``StsUnavailable``, naming
``shared`` as the opt-out). ``shared`` runs every process with the runner's environment, as
before scoped credentials existed, after a warning line.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from fedcore.credentials import (
    CREDENTIALS_FILE_ENV,
    CREDENTIALS_FILE_NAME,
    Role,
    ScopedCredentials,
    keeps_variate,
    session_policy,
    write_credentials_file,
)
from fedcore.errors import CredentialsError, StoreError
from fedcore.spec import FederatedJob, job_prefix

log = logging.getLogger(__name__)

LIFETIME_SECONDS = 3600
"""Lifetime of each minted credential: an hour keeps a leaked one short-lived while a
laptop run re-mints only twice an hour."""
REFRESH_AFTER = 0.5
"""Share of the lifetime after which every credential is minted again and its file replaced:
half leaves the other half for retries when the store is briefly unreachable."""
RETRY_SECONDS = 30.0
"""Wait between attempts when re-minting fails (the old credentials are still valid)."""

JOB_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""Where the runner reads the job's own credential."""
KEPT_AWS_VARS = frozenset(
    {
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CA_BUNDLE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
    }
)
"""``AWS_*`` variables a process keeps under scoped credentials (none carries a credential);
every other one (keys, tokens, profiles, credential files, role settings) is removed."""

SHARED_WARNING = (
    "warning: spec.storage.credentials is 'shared': every process gets the job's own store "
    "credential, so a client could read and overwrite the other clients' updates; use "
    "'scoped' (the default) on a store with STS"
)


def role_dir_name(role: Role) -> str:
    """Folder of a role's credentials file: ``aggregator`` or ``client-<name>``."""
    return "aggregator" if role.client is None else f"client-{role.client}"


class LocalCredentials:
    """The per-role credential files of one ``fedkube run`` and the thread that renews them."""

    def __init__(
        self,
        job: FederatedJob,
        job_key: tuple[str, str],
        *,
        lifetime_seconds: int = LIFETIME_SECONDS,
    ) -> None:
        storage = job.spec.storage
        if storage.endpoint is None:
            raise ValueError("scoped credentials need an S3 endpoint (spec.storage.endpoint)")
        self.job = job
        self.lifetime_seconds = lifetime_seconds
        self.roles = [Role.aggregator()] + [Role.for_client(c.name) for c in job.spec.clients]
        self._job_key = job_key
        self._policies = {
            role: session_policy(
                storage.bucket,
                job_prefix(job),
                role,
                variate=keeps_variate(job.spec.strategy.name),
            )
            for role in self.roles
        }
        self.folder = Path(tempfile.mkdtemp(prefix="fedkube-credentials-"))
        os.chmod(self.folder, 0o700)
        self.issued: dict[Role, ScopedCredentials] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LocalCredentials(job={self.job.name!r}, folder={str(self.folder)!r})"

    @classmethod
    def for_run(
        cls, job: FederatedJob, environ: Mapping[str, str], warn: TextIO
    ) -> LocalCredentials | None:
        """The run's minted credentials (started), or None where processes share the
        runner's: a local store, or ``shared`` (after a warning on ``warn``).

        Raises ``StsUnavailable`` (the store cannot mint) or ``CredentialsError`` (no job
        credential in ``environ``) before any process starts.
        """
        storage = job.spec.storage
        if storage.endpoint is None:
            return None
        if storage.credentials == "shared":
            print(SHARED_WARNING, file=warn, flush=True)
            return None
        missing = [name for name in JOB_CREDENTIAL_VARS if not environ.get(name)]
        if missing:
            raise CredentialsError(
                f"{' and '.join(missing)} not set: with spec.storage.credentials 'scoped' "
                "fedkube run mints each process's store credential from the job's own, read "
                "from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; set both (or set "
                "spec.storage.credentials: shared)"
            )
        creds = cls(job, (environ[JOB_CREDENTIAL_VARS[0]], environ[JOB_CREDENTIAL_VARS[1]]))
        try:
            creds.refresh()
        except BaseException:
            creds.close()
            raise
        creds.start()
        return creds

    def file(self, role: Role) -> Path:
        """Where ``role``'s credentials file is."""
        return self.folder / role_dir_name(role) / CREDENTIALS_FILE_NAME

    def environment(self, role: Role, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` for a process of ``role``: its own credentials file, no AWS credential."""
        env = {
            name: value
            for name, value in base.items()
            if not name.startswith("AWS_") or name in KEPT_AWS_VARS
        }
        env[CREDENTIALS_FILE_ENV] = str(self.file(role))
        return env

    def refresh(self) -> None:
        """Mint every role's credential now and replace its file atomically."""
        from fedcore.store.sts import assume_role

        storage = self.job.spec.storage
        for role in self.roles:
            creds = assume_role(
                storage.endpoint,
                *self._job_key,
                policy=self._policies[role],
                duration_seconds=self.lifetime_seconds,
                role_arn=storage.role_arn,
                region=storage.region,
                session_name=f"fedkube-{role_dir_name(role)}"[:64],
            )
            path = self.file(role)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_credentials_file(path, creds)
            self.issued[role] = creds

    def next_refresh(self) -> datetime:
        """When the credentials are due to be minted again."""
        if not self.issued:
            return datetime.now(UTC)
        earliest = min(c.expiration for c in self.issued.values())
        return earliest - timedelta(seconds=self.lifetime_seconds * (1 - REFRESH_AFTER))

    def start(self) -> None:
        """Renew the files in a background thread until ``close``."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._renew, name="fedkube-credentials", daemon=True
            )
            self._thread.start()

    def _renew(self) -> None:
        while True:
            wait = (self.next_refresh() - datetime.now(UTC)).total_seconds()
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                self.refresh()
            except StoreError as e:
                log.warning("renewing the store credentials failed (retrying): %s", e)
                if self._stop.wait(RETRY_SECONDS):
                    return

    def close(self) -> None:
        """Stop renewing and delete the credential files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["LIFETIME_SECONDS", "SHARED_WARNING", "LocalCredentials", "role_dir_name"]
