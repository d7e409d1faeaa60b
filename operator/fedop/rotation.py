"""Which roles' store credentials to mint now: the pure half of per-role credentials.

With ``spec.storage.credentials: scoped`` every role (the aggregator, each client not dropped)
has a Secret of minted credentials (``fedop.builders.credentials``). A pass mints one when its
Secret is missing, and replaces it when it is due: older than ``credential_refresh_seconds``,
or closer to its expiry than the margin pods need to pick up a new file (a lifetime lowered
since it was minted), or unreadable. The times come from the Secret's own annotations, read
from the metadata-only list, so the decision needs no Secret's content and no clock but the
pass's ``now``. Minting itself is I/O and happens in the executor (``fedop.minting``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from fedcore import spec as fs
from fedop.builders import credentials, names
from fedop.builders.credentials import StoreRole
from fedop.settings import CREDENTIAL_MARGIN_SECONDS, OperatorSettings


@dataclass(frozen=True)
class MintStoreCredentials:
    """Mint ``role``'s credentials and create (``replace`` False) or overwrite its Secret."""

    role: StoreRole
    rotations: int = 0
    """The count the new Secret carries: 0 for the first credentials, +1 per rotation."""
    replace: bool = False


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _count(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def due(annotations: Mapping[str, str], now: datetime, settings: OperatorSettings) -> bool:
    """Whether a Secret with these annotations must be replaced now."""
    minted = parse_time(annotations.get(credentials.ANNOTATION_MINTED_AT))
    expires = parse_time(annotations.get(credentials.ANNOTATION_EXPIRES_AT))
    if minted is None or expires is None:
        return True
    if now >= minted + timedelta(seconds=settings.credential_refresh_seconds):
        return True
    return now >= expires - timedelta(seconds=CREDENTIAL_MARGIN_SECONDS)


def mint_actions(
    job: names.JobRef,
    spec: fs.FederatedJobSpec,
    secrets: Mapping[str, Mapping[str, str]],
    now: datetime,
    settings: OperatorSettings,
    *,
    skip_clients: Collection[str] = (),
) -> list[MintStoreCredentials]:
    """The mints a pass must make, aggregator first. ``secrets``: the annotations of the
    Secrets the job owns, by name; ``skip_clients``: clients whose pods are gone for good
    (dropped), whose credentials are left to expire."""
    if credentials.mode(spec) != "scoped":
        return []
    actions = []
    # A site with its own long-lived store user gets no minted credential.
    store_users = {c.name for c in spec.clients if c.site is not None and c.site.store_user}
    for role in credentials.roles(spec):
        if role.kind == "client" and (role.client in skip_clients or role.client in store_users):
            continue
        found = secrets.get(credentials.secret_name(job, role))
        if found is None:
            actions.append(MintStoreCredentials(role))
        elif due(found, now, settings):
            rotations = _count(found.get(credentials.ANNOTATION_ROTATIONS)) + 1
            actions.append(MintStoreCredentials(role, rotations=rotations, replace=True))
    return actions
