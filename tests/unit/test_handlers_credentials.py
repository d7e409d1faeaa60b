"""One reconcile pass against a store without STS: the scoped job fails at once, before any
pod exists, with a condition and a Warning that name ``shared`` as the opt-out."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
import pytest

from fedcore import spec as fs
from fedcore.errors import StoreUnavailable, StsUnavailable
from fedop import handlers, reconcile
from fedop.apply import Executor
from fedop.builders.credentials import StoreRole
from fedop.kube import ChildLists, Kube
from fedop.settings import OperatorSettings
from fedop.store_view import Credentials, StoreView
from tests.fixtures.fedjobs import make_job


class FakeKube:
    """An API server holding one FederatedJob and its credentials Secret, recording writes."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.status_patches: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.events: list[tuple[str, str, str]] = []

    def get_federatedjob(self, namespace: str, name: str) -> dict[str, Any]:
        return self.body

    def list_children(self, job: object) -> ChildLists:
        return ChildLists([], [], [], [], [])

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
        return {"AWS_ACCESS_KEY_ID": encode("AKID"), "AWS_SECRET_ACCESS_KEY": encode("shh")}

    def patch_status(self, job: object, patch: dict[str, Any]) -> None:
        self.status_patches.append(patch)

    def create(self, obj: dict[str, Any], owner: object) -> dict[str, Any]:
        self.created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return obj

    def merge_patch(self, obj: object, patch: object) -> None:
        return None

    def post_event(self, event: dict[str, Any]) -> None:
        self.events.append((event["type"], event["reason"], event["message"]))


def no_sts(job: fs.FederatedJob, role: StoreRole, c: Credentials | None, s: int) -> Any:
    raise StsUnavailable(
        "http://s3:9000 answered AssumeRole with NotImplemented; set "
        "spec.storage.credentials: shared to run the job with the job's own credential"
    )


def unreachable(job: fs.FederatedJob, role: StoreRole, c: Credentials | None, s: int) -> Any:
    raise StoreUnavailable("cannot reach the store's STS at http://s3:9000")


def one_pass(minter: Any) -> tuple[FakeKube, BaseException]:
    """One pass of a fresh scoped job whose minting goes through ``minter``; what the API
    server saw and what the pass raised."""
    body = make_job().to_object()
    body["metadata"]["generation"] = 1
    kube = FakeKube(body)
    pool = ThreadPoolExecutor(max_workers=2)
    rt = handlers.Runtime(
        settings=OperatorSettings(), kube=cast(Kube, kube), store=StoreView(), pool=pool
    )
    rt.executor = Executor(cast(Kube, kube), rt.store, pool, mint=minter)
    try:
        with pytest.raises((kopf.PermanentError, kopf.TemporaryError)) as raised:
            handlers.sync_job(rt, "team-a", "digits")
    finally:
        pool.shutdown()
    return kube, raised.value


def test_a_store_without_sts_fails_a_scoped_job_at_once_naming_shared() -> None:
    _, error = one_pass(no_sts)

    assert isinstance(error, kopf.PermanentError)
    assert "spec.storage.credentials: shared" in str(error)


def test_the_failed_status_and_warning_say_why_and_no_job_was_made() -> None:
    kube, _ = one_pass(no_sts)

    final = kube.status_patches[-1]
    (failed,) = [c for c in final["conditions"] if c["type"] == "Failed"]
    assert final["phase"] == "Failed"
    assert failed["reason"] == reconcile.STORE_WITHOUT_STS
    assert "spec.storage.credentials: shared" in failed["message"]
    assert ("Warning", reconcile.STORE_WITHOUT_STS) in [(t, r) for t, r, _ in kube.events]
    assert not [name for name in kube.created if name.startswith("Job/")]


def test_an_unreachable_sts_is_retried_not_failed() -> None:
    kube, error = one_pass(unreachable)

    assert isinstance(error, kopf.TemporaryError)
    assert "store trouble" in str(error)
    assert all(patch.get("phase") != "Failed" for patch in kube.status_patches)


def test_no_credential_reaches_a_status_or_event() -> None:
    kube, _ = one_pass(no_sts)

    written = repr(kube.status_patches) + repr(kube.events)
    assert "shh" not in written
    assert "AKID" not in written
