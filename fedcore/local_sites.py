"""Site clients under ``fedkube run``: the laptop's stand-in for the operator's join bundles.

``fedkube run`` starts no process for a site client (``spec.clients[].site``); it writes the
site's join bundle to ``<run dir>/sites/<client>.json`` (0600), from the same store
credentials, signing key and commit public key it gives its own processes, and prints the
command the site runs (``fedkube client --bundle FILE``). A site reaches the job through the
bucket only, so the job needs an S3 endpoint and scoped credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from fedcore import join_bundle
from fedcore.credentials import Role, dump_credentials, read_credentials_file
from fedcore.errors import SpecError
from fedcore.local_credentials import LocalCredentials
from fedcore.spec import FederatedJob


def site_names(job: FederatedJob) -> list[str]:
    return [c.name for c in job.spec.clients if c.is_site]


def write_site_bundles(
    job: FederatedJob,
    folder: Path,
    credentials: LocalCredentials | None,
    *,
    key_file: dict[str, Path],
    commit_public_key: Path,
    out: TextIO,
) -> dict[str, Path]:
    """Write each site's bundle into ``folder``; the files by client. ``key_file``: each
    client's signing key file."""
    sites = site_names(job)
    if not sites:
        return {}
    if job.spec.storage.endpoint is None or credentials is None:
        raise SpecError(
            [
                (
                    "spec.storage.endpoint",
                    f"site client(s) {', '.join(sites)} reach the job through an S3 bucket, "
                    "but the job runs on a local folder; set storage.endpoint (with scoped "
                    "credentials) or remove site from those clients",
                )
            ]
        )
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    written = {}
    for name in sites:
        creds = read_credentials_file(credentials.file(Role.for_client(name)))
        data = join_bundle.dump_bundle(
            job.to_object(),
            name,
            dump_credentials(creds),
            key_file[name].read_text(),
            commit_public_key.read_text(),
        )
        path = folder / f"{name}.json"
        join_bundle.write_private(path, data)
        written[name] = path
        print(
            f"  site {name}: join bundle {path} (store credential until "
            f"{creds.expiration:%Y-%m-%d %H:%M}Z); at the site run: fedkube client --bundle "
            f"{path.name}",
            file=out,
            flush=True,
        )
    return written
