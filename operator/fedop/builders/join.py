"""The join bundle Secret ``<job>-<client>-join`` of a site client (``spec.clients[].site``).

A site runs outside the coordinator's cluster, so nothing there can mount its Secrets. The
operator gathers what the site needs (the job file, the client's store credentials and
signing key, the job's commit public key: ``fedcore.join_bundle``) into this one Secret, which
the coordinator's admin exports with ``fedkube site bundle`` and hands to the site. The Secret
carries the minted-at time of the store credentials it holds, so a pass can tell from metadata
alone that a rotation made it stale.
"""

from __future__ import annotations

import base64
from typing import Any

from fedcore import join_bundle
from fedop.builders import credentials, names

BUNDLE_KEY = join_bundle.SECRET_KEY


def secret_name(job: names.JobRef, client: str) -> str:
    return join_bundle.join_secret_name(job.name, client)


def join_secret(
    job: names.JobRef, client: str, bundle: bytes, *, credentials_minted_at: str
) -> dict[str, Any]:
    """The Secret holding ``bundle`` (``fedcore.join_bundle.dump_bundle`` bytes)."""
    meta = names.metadata(job, secret_name(job, client), "client", client)
    meta["annotations"] = {credentials.ANNOTATION_MINTED_AT: credentials_minted_at}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "data": {BUNDLE_KEY: base64.b64encode(bundle).decode()},
    }
