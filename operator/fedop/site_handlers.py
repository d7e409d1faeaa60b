"""The site operator: kopf wiring and one reconcile pass of a FederatedSite.

Runs in a site's own cluster (the chart with ``mode: site``; ``FEDKUBE_OPERATOR_MODE=site``).
It watches FederatedSites and the Jobs they own, and feeds the same ``Controller`` (queue,
resync) as the coordinator's operator; ``sync_site`` is the edge of a pass: read the
FederatedSite and the join bundle Secret it names, parse both once, list the children, read the
coordinator's commit records from the bucket with the bundle's credential, ask
``site_reconcile.plan``, then write the status, the objects and the Events, in that order.

Nothing here ever talks to the coordinator's cluster: a site's operator holds no credential
for it, and needs none. Exactly these API calls are made in the site's cluster, which the
chart grants in ``mode: site`` and nothing more::

    group          resource                    verbs
    fedkube.io     federatedsites              get list watch          (watch: kopf)
    fedkube.io     federatedsites/status       get patch
    fedkube.io     federatedsites/finalizers   update                  (blockOwnerDeletion)
    batch          jobs                        get list watch create patch delete
    ""             services                    get list create
    ""             secrets                     get list create patch   (get: the bundle and
                                                                        adoption; patch: a
                                                                        replaced bundle)
    ""             configmaps                  get list create patch
    networking.k8s.io  networkpolicies         get list create         (list: metadata only)
    ""             events                      create patch            (kopf may patch its own)
    apiextensions.k8s.io  customresourcedefinitions  get list watch    (kopf: resource discovery)
    ""             namespaces                  get list watch          (kopf: --all-namespaces)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from fedcore import join_bundle as jb
from fedcore import site_spec as ss
from fedcore import spec as fs
from fedcore.errors import BundleError, SpecError
from fedop import catalogue, events, loop_kit, status
from fedop.builders import names
from fedop.builders import site as builders
from fedop.controller import Controller
from fedop.errors import ApiError, ChildRefused, OwnershipConflict
from fedop.kube import Kube
from fedop.metrics import METRICS, metrics_port, serve
from fedop.observed import children
from fedop.reconcile import Create, DeleteJob, Replace
from fedop.settings import OperatorSettings
from fedop.site_reconcile import SiteAction, SiteObservation, SitePlan, plan
from fedop.site_store import SiteProgress, SiteStoreView

log = logging.getLogger(__name__)

MEMO_KEY = "fedop-site"


@dataclass
class SiteRuntime:
    """Everything one site operator process shares between passes."""

    settings: OperatorSettings
    kube: Kube
    store: SiteStoreView
    controller: Controller = field(init=False)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.controller = Controller(lambda ns, name: sync_site(self, ns, name), self.settings)


# ---- one pass ---------------------------------------------------------------------------------


def sync_site(rt: SiteRuntime, namespace: str, name: str) -> None:
    """One reconcile pass of one FederatedSite (runs on a worker thread)."""
    try:
        _sync(rt, namespace, name)
    except ApiError as e:
        delay = rt.settings.retry_seconds * (6 if e.status == 403 else 1)
        raise kopf.TemporaryError(str(e), delay=delay) from e
    except OwnershipConflict as e:
        raise kopf.TemporaryError(str(e), delay=rt.settings.retry_seconds) from e


def _sync(rt: SiteRuntime, namespace: str, name: str) -> None:
    body = rt.kube.get_federatedsite(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return  # the garbage collector removes the children
    meta = body["metadata"]
    ref = builders.site_ref(name, namespace, meta["uid"])
    generation = meta.get("generation")
    old = ss.parse_site_status(body.get("status"))
    now = datetime.now(UTC)
    try:
        site = ss.parse_site(body)
    except SpecError as e:
        _refuse(rt, ref, old, generation, str(e), now)
        raise kopf.PermanentError(str(e)) from e

    bundle, digest, problem = read_bundle(rt.kube, namespace, site.spec.bundle_secret_ref)
    lists = rt.kube.list_children(ref)
    kids = children(
        ref.uid, lists.jobs, lists.services, lists.secrets, lists.configmaps, lists.network_policies
    )
    progress = SiteProgress(available=False, problem="no bundle")
    if bundle is not None:
        progress = rt.store.progress(
            ref.uid,
            bundle,
            digest,
            current_round=old.current_round,
            last_round=old.last_round,
        )
    obs = SiteObservation(
        site=ref,
        generation=generation,
        spec=site.spec,
        status=old,
        bundle=bundle,
        bundle_problem=problem,
        digest=digest,
        children=kids,
        progress=progress,
        now=now,
        settings=rt.settings,
    )
    decided = plan(obs)
    # As the FederatedJob's executor does: news shown exactly once goes before the status.
    first, after = events.split_once(decided.announcements)
    for note in first:
        _announce(rt, ref, note, now)
    _write_status(rt, ref, old, decided.status)
    try:
        _apply(rt, ref, decided)
    except ChildRefused as e:
        message = f"the API server refused a child object (check spec.template): {e}"
        _refuse(rt, ref, decided.status, generation, message, now)
        raise kopf.PermanentError(message) from e
    for note in after:
        _announce(rt, ref, note, now)


def read_bundle(
    kube: Kube, namespace: str, ref: ss.BundleSecretRef
) -> tuple[jb.JoinBundle | None, str, str]:
    """(bundle, its sha256, "") from the Secret, or (None, "", why not). A missing Secret or
    a bad bundle is not an error of the pass: the status says what to do, and the resync
    reads the Secret again."""
    where = f"Secret {namespace}/{ref.name} (spec.bundleSecretRef)"
    data = kube.read_secret(namespace, ref.name)
    if data is None:
        return (
            None,
            "",
            (
                f"waiting for {where}: create it from the file the coordinator exported "
                f"(kubectl create secret generic {ref.name} --from-file={ref.key}=FILE)"
            ),
        )
    if ref.key not in data:
        return None, "", f"{where} has no key {ref.key!r}; set spec.bundleSecretRef.key"
    try:
        raw = base64.b64decode(data[ref.key], validate=True)
        bundle = jb.load_bundle(raw, source=f"{where} key {ref.key}")
    except binascii.Error:
        return None, "", f"{where} key {ref.key!r} is not base64"
    except BundleError as e:
        return None, "", str(e)
    return bundle, builders.bundle_digest(raw), ""


def _refuse(
    rt: SiteRuntime,
    ref: names.JobRef,
    old: ss.FederatedSiteStatus,
    generation: int | None,
    what: str,
    now: datetime,
) -> None:
    """Write the refused status; announce ``InvalidSpec`` once per distinct message."""
    new = _refused(old, generation, what, now)
    _write_status(rt, ref, old, new)
    before = next((c for c in old.conditions if c.type == "Failed"), None)
    if before is None or (before.reason, before.message) != ("InvalidSpec", new.message):
        _announce(rt, ref, events.announce_site("InvalidSpec", what), now)


def _refused(
    old: ss.FederatedSiteStatus, generation: int | None, what: str, now: datetime
) -> ss.FederatedSiteStatus:
    """Failed with ``InvalidSpec``: ``what`` is wrong, then the site's action."""
    text = catalogue.site_message("InvalidSpec", what, limit=fs.MAX_MESSAGE)
    conditions = status.set_site_condition(
        old.conditions, "Failed", "True", "InvalidSpec", text, now=now, generation=generation
    )
    conditions = status.set_site_condition(
        conditions,
        "Running",
        "False",
        "Failed",
        catalogue.site_message("Failed", ""),
        now=now,
        generation=generation,
    )
    return old.model_copy(
        update={
            "phase": "Failed",
            "observed_generation": generation,
            "message": text,
            "conditions": conditions,
            "completion_time": old.completion_time or status.second(now),
        }
    )


def _wire(value: ss.FederatedSiteStatus) -> dict[str, Any]:
    wire: dict[str, Any] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return wire


def _write_status(
    rt: SiteRuntime, ref: names.JobRef, old: ss.FederatedSiteStatus, new: ss.FederatedSiteStatus
) -> None:
    patch = status.merge_patch(_wire(old), _wire(new))
    if patch:
        rt.kube.patch_site_status(ref, patch)


def _stage(action: SiteAction) -> int:
    """0: what pods mount, the Service and the NetworkPolicy; 1: the Job."""
    match action:
        case Create(obj=obj) if obj.get("kind") == "Job":
            return 1
        case DeleteJob():
            return 1
    return 0


def _apply(rt: SiteRuntime, ref: names.JobRef, decided: SitePlan) -> None:
    for stage in (0, 1):
        for action in decided.actions:
            if _stage(action) == stage:
                _step(rt, ref, action)


def _step(rt: SiteRuntime, ref: names.JobRef, action: SiteAction) -> None:
    kube = rt.kube
    try:
        match action:
            case Create(obj=obj):
                kube.create(obj, ref)
            case Replace(obj=obj):
                patch = {"metadata": {"annotations": obj["metadata"].get("annotations") or {}}}
                kube.merge_patch(obj, {**patch, "data": obj["data"]})
                log.info("%s/%s: rewrote %s %s from the bundle", ref.namespace, ref.name,
                         obj["kind"], obj["metadata"]["name"])  # fmt: skip
            case DeleteJob(name=name, propagation=propagation):
                kube.delete_job(ref.namespace, name, propagation)
    except ApiError as e:
        if e.status in (400, 422):
            raise ChildRefused(e.status, e.reason, str(e)) from e
        raise


def _announce(rt: SiteRuntime, ref: names.JobRef, note: events.Announcement, now: datetime) -> None:
    events.post(rt.kube, ref, note, now)


# ---- kopf -------------------------------------------------------------------------------------


def _runtime(memo: kopf.Memo) -> SiteRuntime:
    rt: SiteRuntime = memo[MEMO_KEY]
    return rt


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fedkube.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="fedkube.io")
    for noisy in ("boto3", "botocore", "s3transfer", "urllib3", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings.posting.level = logging.WARNING
    ours = OperatorSettings.from_env()
    port = metrics_port()
    if port is not None:
        serve(METRICS, port)
    rt = SiteRuntime(settings=ours, kube=Kube.from_environment(ours), store=SiteStoreView())
    rt.task = asyncio.create_task(rt.controller.run(), name="fedop-site-controller")
    memo[MEMO_KEY] = rt
    log.info("fedkube site operator started: %s", ours)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    await loop_kit.stop_loop(rt.task, rt.controller, rt.kube)


@kopf.on.probe(id="reconcileLoop")
def probe(memo: kopf.Memo, **_: Any) -> float:
    """Liveness: seconds since the resync loop last ticked."""
    rt = _runtime(memo)
    return loop_kit.loop_age(rt.task, rt.controller, rt.settings.resync_seconds)


@kopf.on.event(fs.API_GROUP, fs.API_VERSION, ss.PLURAL)
async def federatedsite_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    loop_kit.route_resource_event(rt.controller, rt.store, type, body)


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_MANAGED_BY: names.MANAGED_BY})
async def child_job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    loop_kit.route_child_job(_runtime(memo).controller, body)
