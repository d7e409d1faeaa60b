"""kopf wiring, and the edge of one reconcile pass.

kopf watches FederatedJobs and their Jobs (``on.event``: no finalizer, nothing written to
the objects) and feeds the ``Controller``'s queue; the controller runs ``sync_job`` for a job.
``sync_job`` is the edge: it reads the object, parses its spec once (an invalid spec becomes
``kopf.PermanentError`` naming the field and the fix, and a Failed status), observes the
children and the store, asks ``reconcile.plan`` what to do and hands the plan to ``apply``.
Transient API trouble becomes ``kopf.TemporaryError(delay=...)`` with the cause chained.

Run it with ``kopf run -m fedop --standalone --all-namespaces`` (or ``--namespace=NS``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import kopf

from fedcore import spec as fs
from fedcore.commit_signing import CommitVerifier, verifier_from_pem
from fedcore.errors import CredentialsError, FedcoreError, SpecError, StoreError, StsUnavailable
from fedop import catalogue, loop_kit, minting, reconcile, status
from fedop.apply import Executor, Target
from fedop.builders import configmap, names
from fedop.builders.credentials import roles
from fedop.controller import Controller
from fedop.errors import ApiError, ChildRefused, OwnershipConflict
from fedop.kube import Kube
from fedop.metrics import METRICS, metrics_port, serve
from fedop.observed import StoreSnapshot, children
from fedop.settings import OperatorSettings
from fedop.store_view import Credentials, StoreView

log = logging.getLogger(__name__)

MEMO_KEY = "fedop"


@dataclass
class Runtime:
    """Everything one operator process shares between passes."""

    settings: OperatorSettings
    kube: Kube
    store: StoreView
    pool: ThreadPoolExecutor
    controller: Controller = field(init=False)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.executor = Executor(
            self.kube,
            self.store,
            self.pool,
            credential_lifetime_seconds=self.settings.credential_lifetime_seconds,
        )
        self.controller = Controller(lambda ns, name: sync_job(self, ns, name), self.settings)


# ---- one pass ---------------------------------------------------------------------------------


def parse_edge(body: dict[str, Any]) -> fs.FederatedJob:
    """The FederatedJob as the runtime will load it, plus the checks only a cluster needs;
    ``SpecError`` naming every problem's field."""
    meta = body.get("metadata") or {}
    obj = {
        "apiVersion": body.get("apiVersion", f"{fs.API_GROUP}/{fs.API_VERSION}"),
        "kind": fs.KIND,
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta},
        "spec": body.get("spec") or {},
    }
    job = fs.parse_job(obj)
    ref = names.JobRef(job.name, job.metadata.namespace or "default", job.metadata.uid or "")
    problems = names.check_names(ref, job.spec)
    if job.spec.storage.endpoint is None:
        problems.append(
            (
                "spec.storage.endpoint",
                "required in a cluster: pods exchange rounds through S3; name the "
                "endpoint, e.g. http://minio.minio:9000",
            )
        )
    problems += credentials_problems(job)
    if problems:
        raise SpecError(problems)
    return job


def credentials_problems(job: fs.FederatedJob) -> list[tuple[str, str]]:
    """What keeps a scoped job from getting per-role credentials, found before anything is
    made: no credential to mint with, or names a store policy cannot hold."""
    storage = job.spec.storage
    if storage.credentials != "scoped":
        return []
    if storage.secret_ref is None:
        return [
            (
                "spec.storage.secretRef",
                "required with spec.storage.credentials: scoped (the default): the operator "
                "mints each role's credentials with the job's own; name the Secret holding it",
            )
        ]
    try:
        for role in roles(job.spec):
            minting.policy(job, role)
    except CredentialsError as e:
        return [("spec.storage", str(e))]
    return []


def sync_job(rt: Runtime, namespace: str, name: str) -> None:
    """One reconcile pass of one FederatedJob (runs on a worker thread)."""
    with METRICS.reconciling():
        _sync_or_retry(rt, namespace, name)


def _sync_or_retry(rt: Runtime, namespace: str, name: str) -> None:
    try:
        _sync(rt, namespace, name)
    except ApiError as e:
        if e.status == 403:
            raise kopf.TemporaryError(
                f"{e} (the operator's RBAC does not allow this; see fedop/kube.py)",
                delay=rt.settings.retry_seconds * 6,
            ) from e
        raise kopf.TemporaryError(str(e), delay=rt.settings.retry_seconds) from e
    except OwnershipConflict as e:
        raise kopf.TemporaryError(str(e), delay=rt.settings.retry_seconds) from e


def _sync(rt: Runtime, namespace: str, name: str) -> None:
    body = rt.kube.get_federatedjob(namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        METRICS.forget(namespace, name)
        return  # the garbage collector removes the children
    meta = body["metadata"]
    ref = names.JobRef(name, namespace, meta["uid"])
    generation = meta.get("generation")
    old = status.parse_status(body.get("status"))
    now = datetime.now(UTC)
    try:
        job = parse_edge(body)
    except SpecError as e:
        _refuse(rt, ref, generation, old, e, now)
        raise kopf.PermanentError(str(e)) from e

    lists = rt.kube.list_children(ref)
    kids = children(
        ref.uid,
        lists.jobs,
        lists.services,
        lists.secrets,
        lists.configmaps,
        lists.network_policies,
    )
    credentials: Credentials | None = None
    if old.phase in status.TERMINAL_PHASES:
        snapshot = StoreSnapshot()  # a finished job needs nothing from its store
    else:
        credentials, problem = _credentials(rt, job)
        verifier, key_problem = _commit_verifier(ref, kids.configmaps)
        problem = problem or key_problem
        snapshot = (
            StoreSnapshot(available=False, problem=problem)
            if problem or verifier is None
            else rt.store.snapshot(job, credentials, status.next_round_to_read(old), verifier)
        )

    obs = reconcile.Observation(
        job=ref,
        generation=generation,
        spec=job.spec,
        status=old,
        children=kids,
        store=snapshot,
        now=now,
        settings=rt.settings,
    )
    plan = reconcile.plan(obs)
    target = Target(job=ref, parsed=job, credentials=credentials, old_status=old)
    try:
        rt.executor.apply(target, plan, now)
        METRICS.observed(namespace, name, old, plan.status)
    except ChildRefused as e:
        # A resources, volume or toleration entry passed through verbatim was invalid.
        refused = SpecError([("spec", f"the API server refused a child object: {e}")])
        _refuse(rt, ref, generation, plan.status, refused, now)
        raise kopf.PermanentError(str(refused)) from e
    except StsUnavailable as e:
        no_sts = SpecError([("spec.storage.credentials", _no_sts_message(job, e))])
        _refuse(rt, ref, generation, plan.status, no_sts, now, reconcile.STORE_WITHOUT_STS)
        raise kopf.PermanentError(
            catalogue.message(reconcile.STORE_WITHOUT_STS, str(no_sts))
        ) from e
    except CredentialsError as e:
        # Refused (a wrong key pair in the job's Secret, a role it may not assume): fixing
        # the Secret or the store needs no spec change, so keep trying, unhurried.
        raise kopf.TemporaryError(
            f"could not mint store credentials: {e}", delay=rt.settings.retry_seconds * 6
        ) from e
    except StoreError as e:
        raise kopf.TemporaryError(f"store trouble: {e}", delay=rt.settings.retry_seconds) from e


def _no_sts_message(job: fs.FederatedJob, error: StsUnavailable) -> str:
    """What happened; the catalogue's ``StoreWithoutSTS`` says what to do."""
    return (
        "scoped (the default) mints each role's credentials with the store's STS AssumeRole, "
        f"and the store {job.spec.storage.endpoint} cannot: {error}"
    )


def _refuse(
    rt: Runtime,
    ref: names.JobRef,
    generation: int | None,
    old: fs.FederatedJobStatus,
    error: SpecError,
    now: datetime,
    reason: Literal["InvalidSpec", "StoreWithoutSTS"] = reconcile.INVALID_SPEC,
) -> None:
    plan = reconcile.refuse(old, generation, str(error), now, reason)
    target = Target(job=ref, parsed=None, credentials=None, old_status=old)
    rt.executor.apply(target, plan, now)


def _commit_verifier(
    ref: names.JobRef, configmaps: Mapping[str, Mapping[str, str]]
) -> tuple[CommitVerifier | None, str]:
    """The job's commit public key from its ConfigMap (written from the key Secret), or why
    there is none yet: no record is read before it can be verified."""
    name = names.spec_configmap(ref)
    pem = (configmaps.get(name) or {}).get(configmap.COMMIT_PUBLIC_KEY_KEY)
    if not pem:
        return None, (
            f"ConfigMap {ref.namespace}/{name} has no {configmap.COMMIT_PUBLIC_KEY_KEY} yet; "
            "commit records are read once they can be verified"
        )
    try:
        return verifier_from_pem(pem.encode(), source=f"ConfigMap {name}"), ""
    except FedcoreError as e:
        return None, str(e)


def _credentials(rt: Runtime, job: fs.FederatedJob) -> tuple[Credentials | None, str]:
    """The S3 key pair from ``spec.storage.secretRef`` (None without one), or why not."""
    ref = job.spec.storage.secret_ref
    if ref is None:
        return None, ""
    namespace = job.metadata.namespace or "default"
    data = rt.kube.read_secret(namespace, ref.name)
    if data is None:
        return None, (
            f"credentials Secret {namespace}/{ref.name} (spec.storage.secretRef) "
            "does not exist; create it"
        )
    values: list[str] = []
    for key in (ref.access_key_id_key, ref.secret_access_key_key):
        try:
            values.append(base64.b64decode(data[key]).decode())
        except KeyError:
            return None, (
                f"credentials Secret {namespace}/{ref.name} has no key {key!r} "
                "(spec.storage.secretRef); add it"
            )
        except (binascii.Error, UnicodeDecodeError):
            return None, f"credentials Secret {namespace}/{ref.name} key {key!r} is not text"
    return Credentials(values[0], values[1]), ""


# ---- kopf -------------------------------------------------------------------------------------


def _runtime(memo: kopf.Memo) -> Runtime:
    rt: Runtime = memo[MEMO_KEY]
    return rt


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base records, if kopf ever writes any, go to annotations: the status
    # schema is the CRD's, and fedkube's own status is written by the operator alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fedkube.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="fedkube.io")
    # boto3 at DEBUG logs request signing details; kopf --verbose must not turn that on. kopf
    # reports every watch event it handled ("Handler ... succeeded"): fedop logs what matters.
    for noisy in ("boto3", "botocore", "s3transfer", "urllib3", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings.posting.level = logging.WARNING
    ours = OperatorSettings.from_env()
    port = metrics_port()
    if port is not None:
        serve(METRICS, port)
    kube = Kube.from_environment(ours)
    pool = ThreadPoolExecutor(max_workers=ours.api_concurrency, thread_name_prefix="fedop-api")
    rt = Runtime(settings=ours, kube=kube, store=StoreView(), pool=pool)
    rt.task = asyncio.create_task(rt.controller.run(), name="fedop-controller")
    memo[MEMO_KEY] = rt
    log.info("fedkube operator started: %s", ours)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    await loop_kit.stop_loop(rt.task, rt.controller, rt.kube, rt.pool)


@kopf.on.probe(id="reconcileLoop")
def probe(memo: kopf.Memo, **_: Any) -> float:
    """Liveness: seconds since the resync loop last ticked; fails when it is stuck or dead."""
    rt = _runtime(memo)
    return loop_kit.loop_age(rt.task, rt.controller, rt.settings.resync_seconds)


@kopf.on.event(fs.API_GROUP, fs.API_VERSION, fs.PLURAL)
async def federatedjob_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    loop_kit.route_resource_event(rt.controller, rt.store, type, body)


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_MANAGED_BY: names.MANAGED_BY})
async def child_job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    loop_kit.route_child_job(_runtime(memo).controller, body)
