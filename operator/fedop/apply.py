"""Carries out a reconcile ``Plan``: status first, then the store, then the API writes.

The status is written before anything is created or deleted: it is the operator's memory
(restart counts, rounds announced), so if the pass dies half-way the next one, in this
process or a restarted one, decides from a status that already counts what was begun.
Writes of one stage run in parallel (bounded by ``api_concurrency``); the stages run in
order, because pods need their job file and keys before their Jobs exist. Events come last
and are best-effort: a lost Event must never undo or repeat real work.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from fedcore import join_bundle
from fedcore import spec as fs
from fedcore.commit_signing import generate_key_pair
from fedcore.errors import BundleError, CredentialsError
from fedcore.signing import generate_key
from fedop import events, reconcile, rotation, sites, status
from fedop.builders import configmap, credentials, join, names, secrets
from fedop.errors import ApiError, ChildRefused
from fedop.kube import Kube
from fedop.minting import Minter, mint_with_sts
from fedop.store_view import Credentials, StoreView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """The job the plan is for, as the executor needs it."""

    job: names.JobRef
    parsed: fs.FederatedJob | None
    """None when the spec could not be parsed (the plan then only writes status)."""
    credentials: Credentials | None
    old_status: fs.FederatedJobStatus


class Executor:
    def __init__(
        self,
        kube: Kube,
        store: StoreView,
        pool: ThreadPoolExecutor,
        *,
        mint: Minter = mint_with_sts,
        credential_lifetime_seconds: int = 3600,
    ) -> None:
        self._kube = kube
        self._store = store
        self._pool = pool
        self._mint = mint
        self._lifetime = credential_lifetime_seconds

    def apply(self, target: Target, plan: reconcile.Plan, now: datetime) -> None:
        # News that must show exactly once (a committed round) goes out before the status
        # that records it: a crash in between repeats it under the same name, which the API
        # server refuses. The rest follows the status, so a crash loses it rather than
        # showing it twice.
        first, after = events.split_once(plan.announcements)
        for announcement in first:
            self._announce(target.job, announcement, now)
        self._write_status(target, plan.status)
        stages: list[list[reconcile.Action]] = [[], [], [], []]
        for action in plan.actions:
            stages[_stage(action)].append(action)
        for stage in stages:
            self._run_all([self._step(target, a) for a in stage])
        for announcement in after:
            self._announce(target.job, announcement, now)

    def _write_status(self, target: Target, new: fs.FederatedJobStatus) -> None:
        patch = status.merge_patch(status.to_wire(target.old_status), status.to_wire(new))
        if patch:
            self._kube.patch_status(target.job, patch)

    def _step(self, target: Target, action: reconcile.Action) -> Callable[[], None]:
        job, kube = target.job, self._kube
        match action:
            case reconcile.Create(obj=obj):
                return _refusals(lambda: _ignore(kube.create(obj, job)))
            case reconcile.CreateKeySecret(client=client):
                return _refusals(
                    lambda: _ignore(
                        kube.create(secrets.key_secret(job, client, generate_key()), job)
                    )
                )
            case reconcile.CreateCommitKey():
                return _refusals(
                    lambda: _ignore(
                        kube.create(secrets.commit_key_secret(job, *generate_key_pair()), job)
                    )
                )
            case reconcile.Replace(obj=obj):
                return _refusals(lambda: kube.merge_patch(obj, {"data": obj["data"]}))
            case rotation.MintStoreCredentials() if target.parsed is not None:
                parsed = target.parsed
                return lambda: self._mint_secret(target, parsed, action)
            case sites.WriteJoinBundle() if target.parsed is not None:
                parsed = target.parsed
                return _refusals(lambda: self._write_join_bundle(target, parsed, action))
            case reconcile.SetSuspend(name=name, suspend=suspend):
                return lambda: kube.set_job_suspend(job.namespace, name, suspend)
            case reconcile.DeleteJob(name=name, propagation=propagation):
                return lambda: kube.delete_job(job.namespace, name, propagation)
            case reconcile.WriteExcluded(clients=clients) if target.parsed is not None:
                parsed = target.parsed
                return lambda: self._store.write_excluded(parsed, target.credentials, dict(clients))
            case reconcile.DeleteFederatedJob():
                return lambda: kube.delete_federatedjob(job)
        raise TypeError(f"unknown action {action!r}")  # pragma: no cover

    def _mint_secret(
        self, target: Target, parsed: fs.FederatedJob, action: rotation.MintStoreCredentials
    ) -> None:
        """Mint the role's credentials and store them in its Secret (raises the store's
        ``StsUnavailable`` or ``StoreError`` for the handler to judge)."""
        minted = self._mint(parsed, action.role, target.credentials, self._lifetime)
        obj = credentials.store_secret(
            target.job,
            action.role,
            minted.text,
            minted_at=datetime.now(UTC),
            expires_at=minted.expiration,
            rotations=action.rotations,
        )
        if action.replace:
            patch = {"metadata": {"annotations": obj["metadata"]["annotations"]}}
            self._kube.merge_patch(obj, {**patch, "data": obj["data"]})
        else:
            self._kube.create(obj, target.job)
        log.info(
            "%s store credentials of %s for %s/%s (expire %s)",
            "rotated" if action.replace else "minted",
            action.role,
            target.job.namespace,
            target.job.name,
            credentials.rfc3339(minted.expiration),
        )

    def _write_join_bundle(
        self, target: Target, parsed: fs.FederatedJob, action: sites.WriteJoinBundle
    ) -> None:
        """Gather the site's store credentials, signing key and the job's commit public key
        with the job file into ``<job>-<client>-join``."""
        job, client = target.job, action.client
        site = parsed.spec.client(client).site
        user = site.store_user if site is not None else None
        found = {
            k: self._secret_text(job, name, key)
            for k, (name, key) in {
                "key": (names.key_secret(job, client), secrets.KEY),
                "public": (names.commit_key_secret(job), secrets.COMMIT_PUBLIC_KEY),
            }.items()
        }
        if user is not None:
            store_credentials = join_bundle.StoreUserKeys(
                self._secret_text(job, user.name, user.access_key_id_key),
                self._secret_text(job, user.name, user.secret_access_key_key),
            ).to_json()
        else:
            store_credentials = self._secret_text(
                job,
                credentials.secret_name(job, credentials.client_role(client)),
                credentials.CREDENTIALS_KEY,
            )
        try:
            bundle = join_bundle.dump_bundle(
                configmap.job_document(job, parsed.spec),
                client,
                store_credentials,
                found["key"],
                found["public"],
            )
        except BundleError as e:
            raise CredentialsError(f"the join bundle of site {client} is not valid: {e}") from e
        obj = join.join_secret(
            job, client, bundle, credentials_minted_at=action.credentials_minted_at
        )
        if action.replace:
            patch = {"metadata": {"annotations": obj["metadata"]["annotations"]}}
            self._kube.merge_patch(obj, {**patch, "data": obj["data"]})
        else:
            _ignore(self._kube.create(obj, job))
        log.info("wrote the join bundle of site %s of %s/%s", client, job.namespace, job.name)

    def _secret_text(self, job: names.JobRef, name: str, key: str) -> str:
        data = self._kube.read_secret(job.namespace, name) or {}
        if key not in data:
            # Retried by the handler (a CredentialsError): the Secret may be made later.
            raise CredentialsError(
                f"Secret {name} in namespace {job.namespace} has no {key!r}, so the site's "
                "join bundle cannot be written yet (for site.storeUser: create the Secret with "
                "the store user's keys)"
            )
        return base64.b64decode(data[key]).decode()

    def _run_all(self, steps: Sequence[Callable[[], None]]) -> None:
        """Run one stage's steps in parallel; raise the first failure after all finished."""
        if len(steps) == 1:
            steps[0]()
            return
        futures = [self._pool.submit(step) for step in steps]
        errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        for e in failed[1:]:
            log.warning("also failed in the same stage: %s", e)
        if failed:
            raise failed[0]

    def _announce(
        self, job: names.JobRef, announcement: events.Announcement, now: datetime
    ) -> None:
        events.post(self._kube, job, announcement, now)


def _stage(action: reconcile.Action) -> int:
    """0: the store's drop list; 1: objects pods mount; 2: Jobs; 3: the FederatedJob itself."""
    match action:
        case reconcile.WriteExcluded():
            return 0
        case reconcile.Create(obj=obj) if obj.get("kind") == "Job":
            return 2
        case sites.WriteJoinBundle():
            return 2  # after stage 1 made the Secrets it gathers
        case (
            reconcile.Create()
            | reconcile.CreateKeySecret()
            | reconcile.CreateCommitKey()
            | reconcile.Replace()
            | rotation.MintStoreCredentials()
        ):
            return 1
        case reconcile.SetSuspend() | reconcile.DeleteJob():
            return 2
        case reconcile.DeleteFederatedJob():
            return 3
    raise TypeError(f"unknown action {action!r}")  # pragma: no cover


def _ignore(_: object) -> None:
    return None


def _refusals(step: Callable[[], None]) -> Callable[[], None]:
    """``step``, with the API server's "invalid" answers raised as ``ChildRefused``."""

    def run() -> None:
        try:
            step()
        except ApiError as e:
            if e.status in (400, 422):
                raise ChildRefused(e.status, e.reason, str(e)) from e
            raise

    return run
