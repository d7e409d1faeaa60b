"""The job's store as a site reaches it: from its join bundle alone.

The site's operator reads the coordinator's commit records (to report the rounds in its
FederatedSite's status) with the very credential the bundle hands the site's pods, so it can
read nothing the pods could not: the job's public keys (commit records, global models), never
another participant's update. A minted session goes through a private ``credentials.json``
(re-read when the bundle is replaced); a long-lived store user signs with its keys.
"""

from __future__ import annotations

from pathlib import Path

from fedcore import credentials as fc
from fedcore import join_bundle as jb
from fedcore import spec as fs
from fedcore.store import ObjectStore, open_store


def open_bundle_store(bundle: jb.JoinBundle, folder: Path) -> ObjectStore:
    """The job's store signed with the bundle's credential; ``folder`` (private, the
    caller's) holds the session credential file while the store is in use."""
    job = bundle.job
    role = fc.Role.for_client(bundle.client)
    prefix = fs.job_prefix(job)
    if isinstance(bundle.credentials, jb.StoreUserKeys):
        from fedcore.store.s3 import S3Config, S3Store

        storage = job.spec.storage
        config = S3Config(
            endpoint=storage.endpoint,
            bucket=storage.bucket,
            prefix=prefix,
            region=storage.region,
            denied_is_missing=fc.denied_is_missing_keys(role),
        )
        keys = bundle.credentials
        return S3Store.with_keys(config, keys.access_key_id, keys.secret_access_key)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / fc.CREDENTIALS_FILE_NAME
    fc.write_credentials_file(path, bundle.credentials)
    return open_store(job.spec.storage, prefix, credentials_file=path, role=role)
