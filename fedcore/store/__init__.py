"""Object storage behind one small protocol: the only channel between a job's processes.

``open_store`` picks the implementation from the job's storage spec: a directory on this
machine (``LocalStore``) when no S3 endpoint is named, otherwise an S3-compatible service
(``S3Store``). Everything else in fedkube programs against ``ObjectStore`` and catches the
``StoreError`` family from ``fedcore.errors``.

A process given a role's credentials file (``$FEDKUBE_STORE_CREDENTIALS_FILE``, see
``fedcore.credentials``) signs with those scoped, rotated credentials instead of the AWS
environment; ``open_job_store`` is the one place that reads the variable.

This package imports neither torch nor Kubernetes: the operator uses it. boto3 is imported
only when an ``S3Store`` is built (``s3.py``) or a credential minted (``sts.py``), so a
laptop run on a local directory never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcore.errors import StoreError
from fedcore.store.base import ObjectStore
from fedcore.store.local import LocalStore

if TYPE_CHECKING:
    from fedcore.credentials import Role
    from fedcore.spec import FederatedJob, StorageSpec
    from fedcore.store.s3 import S3Config, S3Store

__all__ = [
    "STORE_DIR_ENV",
    "LocalStore",
    "ObjectStore",
    "S3Config",
    "S3Store",
    "open_job_store",
    "open_store",
]

STORE_DIR_ENV = "FEDKUBE_STORE_DIR"
"""Root folder of a local store, for processes started by ``fedkube run``."""


def open_store(
    storage: StorageSpec | None,
    prefix: str,
    *,
    local_root: Path | None = None,
    credentials: tuple[str, str] | None = None,
    credentials_file: Path | None = None,
    role: Role | None = None,
) -> ObjectStore:
    """The store holding a job's objects, rooted at the job's ``prefix``.

    ``storage`` None or without an ``endpoint``: a ``LocalStore`` in ``local_root / prefix``.
    Otherwise an ``S3Store`` on ``storage.endpoint`` / ``storage.bucket`` signed for
    ``storage.region``, credentials from the standard AWS environment variables. ``prefix``
    is the job's full key prefix (``fedcore.spec.job_prefix``, which already folds in
    ``storage.prefix``), so ``storage.prefix`` is not applied a second time here.
    ``credentials`` (access key id, secret key) sign instead of the standard AWS chain;
    ``credentials_file`` (a role's ``credentials.json``) signs with that role's scoped,
    refreshed credentials, ``role`` saying which keys they may read without listing (None:
    the keys every role may read).
    """
    if storage is None or storage.endpoint is None:
        if local_root is None:
            raise StoreError(
                "the job names no S3 endpoint (spec.storage.endpoint), so it needs a local "
                "store folder: pass --store DIR or set FEDKUBE_STORE_DIR"
            )
        return LocalStore(local_root, prefix)
    from fedcore.store.s3 import S3Config, S3Store

    config = S3Config(
        endpoint=storage.endpoint, bucket=storage.bucket, prefix=prefix, region=storage.region
    )
    if credentials_file is not None:
        from dataclasses import replace

        from fedcore.credentials import denied_is_missing_keys

        config = replace(config, denied_is_missing=denied_is_missing_keys(role))
        return S3Store.from_credentials_file(config, credentials_file)
    if credentials is not None:
        return S3Store.with_keys(config, *credentials)
    return S3Store(config)


def open_job_store(
    job: FederatedJob, environ: Mapping[str, str] | None = None, *, role: Role | None = None
) -> ObjectStore:
    """A job's store as its processes see it: S3 when the spec names an endpoint, else the
    local folder in ``$FEDKUBE_STORE_DIR``. With ``$FEDKUBE_STORE_CREDENTIALS_FILE`` set, S3
    requests are signed with the role credentials in that file (re-read when it is
    replaced). This is the one place both variables are read; ``role`` is the caller's."""
    from fedcore.credentials import CREDENTIALS_FILE_ENV
    from fedcore.spec import job_prefix

    env = os.environ if environ is None else environ
    root = env.get(STORE_DIR_ENV)
    creds = env.get(CREDENTIALS_FILE_ENV)
    return open_store(
        job.spec.storage,
        job_prefix(job),
        local_root=Path(root) if root else None,
        credentials_file=Path(creds) if creds else None,
        role=role,
    )


def __getattr__(name: str) -> Any:
    # S3Store/S3Config load boto3 (~0.3 s); only code that asks for them pays for it.
    if name in ("S3Config", "S3Store"):
        from fedcore.store import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
