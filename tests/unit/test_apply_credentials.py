"""The executor mints a role's credentials before any Job that mounts them, stores them in
the role's Secret (created, or patched on rotation) and never shows a credential."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, cast

import pytest

from fedcore import spec as fs
from fedcore.errors import SpecError
from fedop import handlers, reconcile, rotation
from fedop.apply import Executor, Target
from fedop.builders import credentials
from fedop.builders.credentials import StoreRole
from fedop.kube import Kube
from fedop.minting import MintedCredentials
from fedop.store_view import Credentials, StoreView
from tests.fixtures.fedjobs import JOB, T0, make_job, make_spec

JOB_CREDENTIALS = Credentials("AKIDJOB", "job-secret")
EXPIRES = T0 + timedelta(hours=1)


class RecordingKube:
    """The calls a pass makes, in order (the real Kube talks to the API server)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    def create(self, obj: dict[str, Any], owner: object) -> dict[str, Any]:
        self.calls.append(("create", obj, None))
        return obj

    def merge_patch(self, obj: dict[str, Any], patch: dict[str, Any]) -> None:
        self.calls.append(("patch", obj, patch))

    def patch_status(self, job: object, patch: object) -> None:
        return None

    def post_event(self, event: object) -> None:
        return None


class FakeMinter:
    def __init__(self) -> None:
        self.asked: list[tuple[str, StoreRole, Credentials | None, int]] = []

    def __call__(
        self, job: fs.FederatedJob, role: StoreRole, creds: Credentials | None, lifetime: int
    ) -> MintedCredentials:
        self.asked.append((job.name, role, creds, lifetime))
        return MintedCredentials(text=f'{{"for": "{role}"}}', expiration=EXPIRES)


def run(*actions: reconcile.Action) -> tuple[RecordingKube, FakeMinter]:
    kube, minter = RecordingKube(), FakeMinter()
    executor = Executor(
        cast(Kube, kube),
        StoreView(),
        ThreadPoolExecutor(max_workers=1),
        mint=minter,
        credential_lifetime_seconds=900,
    )
    target = Target(
        job=JOB, parsed=make_job(), credentials=JOB_CREDENTIALS, old_status=fs.FederatedJobStatus()
    )
    executor.apply(target, reconcile.Plan(status=fs.FederatedJobStatus(), actions=actions), T0)
    return kube, minter


def test_first_mint_creates_the_roles_secret_with_the_minted_file() -> None:
    kube, minter = run(rotation.MintStoreCredentials(credentials.client_role("a")))

    ((verb, secret, _),) = kube.calls
    assert verb == "create"
    assert secret["metadata"]["name"] == "digits-a-store"
    assert base64.b64decode(secret["data"]["credentials.json"]) == b'{"for": "client a"}'
    annotations = secret["metadata"]["annotations"]
    assert annotations[credentials.ANNOTATION_EXPIRES_AT] == "2025-01-01T13:00:00Z"
    assert annotations[credentials.ANNOTATION_ROTATIONS] == "0"
    assert minter.asked == [("digits", credentials.client_role("a"), JOB_CREDENTIALS, 900)]


def test_rotation_patches_the_file_and_the_times_in_place() -> None:
    kube, _ = run(rotation.MintStoreCredentials(credentials.AGGREGATOR, rotations=3, replace=True))

    ((verb, secret, patch),) = kube.calls
    assert verb == "patch"
    assert secret["metadata"]["name"] == "digits-aggregator-store"
    assert patch is not None
    assert patch["data"] == secret["data"]
    assert patch["metadata"]["annotations"][credentials.ANNOTATION_ROTATIONS] == "3"


def test_credentials_are_minted_before_the_jobs_that_mount_them() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "digits-a"}}

    kube, _ = run(
        reconcile.Create(job), rotation.MintStoreCredentials(credentials.client_role("a"))
    )

    assert [obj["kind"] for _, obj, _ in kube.calls] == ["Secret", "Job"]


def test_minted_credentials_never_show_in_their_repr() -> None:
    minted = MintedCredentials(text='{"secretAccessKey": "hush"}', expiration=EXPIRES)

    assert "hush" not in repr(minted)
    assert "hush" not in repr(JOB_CREDENTIALS)


def test_scoped_job_without_a_secret_ref_is_refused_naming_the_field() -> None:
    body = make_job(make_spec(storage={"endpoint": "http://s3:9000"})).to_object()

    with pytest.raises(SpecError, match=r"spec\.storage\.secretRef: required with"):
        handlers.parse_edge(body)


def test_shared_job_without_a_secret_ref_is_accepted() -> None:
    spec = make_spec(storage={"endpoint": "http://s3:9000", "credentials": "shared"})

    assert handlers.parse_edge(make_job(spec).to_object()).spec.storage.credentials == "shared"
