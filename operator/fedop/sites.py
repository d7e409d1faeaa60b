"""Site clients (``spec.clients[].site``): the coordinator's pure decisions about them.

A site runs its DDP group outside the coordinator's cluster and reaches the job through the
bucket only, so the coordinator launches nothing for it: no Job, no Service, no
NetworkPolicy. It still mints the site's store credentials and signing key as for any client,
gathers them into the join bundle Secret (``fedop.builders.join``), and judges the site by
what reaches the store: a site whose update has not been seen for ``site.timeoutSeconds``
(counted from the job's start, then from its newest update) is dropped with that reason, and
the aggregator stops waiting for it (``control/excluded.json``), as for a group past its
restart budget.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from fedcore import spec as fs
from fedop.builders import credentials, join, names
from fedop.observed import Children

WAITING = "Waiting for site"
STORE_USER = "store-user"
"""The minted-at mark of a bundle carrying a site's long-lived store user (never re-minted:
to hand a site new keys, delete its join Secret and the next pass writes it again)."""


@dataclass(frozen=True)
class WriteJoinBundle:
    """Gather the site's Secrets into ``<job>-<client>-join`` (create, or overwrite when
    ``replace``). The executor reads the Secrets: a plan never holds a secret."""

    client: str
    credentials_minted_at: str
    """The minted-at annotation of the store credentials the bundle will carry."""
    replace: bool = False


def join_actions(
    job: names.JobRef,
    spec: fs.FederatedJobSpec,
    children: Children,
    *,
    commit_key_known: bool,
    skip_clients: Collection[str] = (),
) -> list[WriteJoinBundle]:
    """Bundles to write now: a site's bundle once its store credentials, its signing key and
    the job's commit key exist, and again whenever its store credentials were re-minted (a
    site with a long-lived store user: once its signing key exists)."""
    if not commit_key_known or credentials.mode(spec) != "scoped":
        return []
    actions = []
    for client in spec.clients:
        if not client.is_site or client.name in skip_clients:
            continue
        if client.site is not None and client.site.store_user is not None:
            minted: str | None = STORE_USER
        else:
            store = children.secret_annotations.get(
                credentials.secret_name(job, credentials.client_role(client.name))
            )
            minted = (store or {}).get(credentials.ANNOTATION_MINTED_AT)
        if minted is None or names.key_secret(job, client.name) not in children.secrets:
            continue
        current = children.secret_annotations.get(join.secret_name(job, client.name))
        if current is None:
            actions.append(WriteJoinBundle(client.name, minted))
        elif current.get(credentials.ANNOTATION_MINTED_AT) != minted:
            actions.append(WriteJoinBundle(client.name, minted, replace=True))
    return actions


@dataclass(frozen=True)
class Verdict:
    phase: Literal["Pending", "Running", "Dropped"]
    message: str


def judge(
    job: names.JobRef,
    index: int,
    client: fs.ClientSpec,
    current: fs.ClientStatus,
    *,
    started: datetime | None,
    now: datetime,
) -> Verdict:
    """The phase of site ``client`` (``spec.clients[index]``, not yet dropped) now:
    ``started`` is the job's start (None while it is not running, which stops the clock)."""
    timeout = (client.site or fs.SiteSpec()).timeout_seconds
    seen = current.last_seen if current.last_round is not None else None
    since = max((t for t in (seen, started) if t is not None), default=None)
    last = (
        f"its last update was round {current.last_round}"
        if current.last_round is not None
        else "it sent no update yet"
    )
    if started is not None and since is not None and now >= since + timedelta(seconds=timeout):
        return Verdict(
            "Dropped",
            f"dropped: no update from the site for {timeout} s "
            f"(spec.clients[{index}].site.timeoutSeconds); {last}",
        )
    if current.last_round is None:
        return Verdict(
            "Pending",
            f"{WAITING}: {last}; it joins with the bundle in Secret "
            f"{join.secret_name(job, client.name)} (fedkube site bundle)",
        )
    return Verdict("Running", f"site: {last}")
