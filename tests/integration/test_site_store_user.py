"""A site's long-lived store user, made on real MinIO from ``fedkube site policy`` with the
admin API, may do exactly what a scoped client credential may: the same attacks are refused
(the access matrix of test_scoped_credentials), the same reads and writes work, and a site
runs from a join bundle carrying the user's keys."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from fedcore import join_bundle, layout
from fedcore.credentials import Role, denied_is_missing_keys, session_policy
from fedcore.errors import ObjectNotFound, StoreError
from fedcore.spec import job_prefix, load_job
from fedcore.store.s3 import MIN_PART_BYTES, S3Config, S3Store
from tests.fixtures.minio import MinioServer
from tests.integration.test_run_local import REPO, write_job
from tests.integration.test_scoped_credentials import (
    CLIENT_ATTACKS,
    ME,
    OTHER,
    assert_denied,
    prefix,
)

__all__ = ["prefix"]  # the fixture: a job prefix seeded with rounds, final/ and OTHER's update


def print_policy(job_file: Path, client: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedcore.cli",
            "site",
            "policy",
            "tiny",
            client,
            "--job-file",
            str(job_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    policy: dict[str, Any] = json.loads(done.stdout)
    return policy


def user_session(access: str, secret: str) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=access, aws_secret_access_key=secret, region_name="us-east-1"
    )


@pytest.fixture
def site_user(
    minio: MinioServer, mc_executable: Path, prefix: str, tmp_path: Path
) -> tuple[str, str, Path]:
    """A store user made from the printed policy of site ME of a job stored under ``prefix``:
    (access key, secret key, the job file)."""
    storage = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix}
    clients = [{"name": OTHER}, {"name": ME, "site": {"storeUser": {"name": "me-user"}}}]
    job_file = write_job(tmp_path / "job.yaml", clients=clients, storage=storage)
    user, secret = f"site-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, print_policy(job_file, ME))
    return user, secret, job_file


def test_the_printed_policy_is_the_scoped_clients_for_the_jobs_prefix(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    storage = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix}
    job_file = write_job(
        tmp_path / "job.yaml", clients=[{"name": OTHER}, {"name": ME, "site": {}}], storage=storage
    )

    policy = print_policy(job_file, ME)

    assert job_prefix(load_job(job_file)) == prefix
    assert policy == session_policy(minio.bucket, prefix, Role.for_client(ME))


def test_a_site_store_user_is_refused_everything_a_scoped_client_is(
    minio: MinioServer, prefix: str, site_user: tuple[str, str, Path]
) -> None:
    access, secret, _ = site_user
    client = user_session(access, secret).client(
        "s3",
        endpoint_url=minio.endpoint,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )

    for name, attack in CLIENT_ATTACKS.items():
        try:
            assert_denied(lambda: attack(client, minio.bucket, prefix))  # noqa: B023
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_a_site_store_user_reads_the_job_and_writes_its_own_slot(
    minio: MinioServer, prefix: str, site_user: tuple[str, str, Path], tmp_path: Path
) -> None:
    access, secret, _ = site_user
    config = S3Config(
        endpoint=minio.endpoint,
        bucket=minio.bucket,
        prefix=prefix,
        max_attempts=2,
        multipart_threshold=MIN_PART_BYTES,
        multipart_chunksize=MIN_PART_BYTES,
        denied_is_missing=denied_is_missing_keys(Role.for_client(ME)),
    )
    store = S3Store(config, session=user_session(access, secret))
    big = tmp_path / "update.safetensors"
    big.write_bytes(secrets.token_bytes(MIN_PART_BYTES + 1024))

    for key in (layout.JOB_KEY, layout.global_key(1), layout.round_record_key(1),
                layout.strategy_state_key(0), layout.FINAL_MODEL_KEY):  # fmt: skip
        assert store.get_bytes(key) == f"seed {key}".encode()
    assert not store.exists(layout.round_record_key(2))
    with pytest.raises(ObjectNotFound):
        store.get_bytes(layout.round_record_key(2))
    store.put_file(layout.update_key(2, ME), big, if_absent=True)
    store.put_bytes(layout.manifest_key(2, ME), b"{}", if_absent=True)
    assert store.get_bytes(layout.update_key(2, ME)) == big.read_bytes()


def test_a_bundle_with_the_store_users_keys_opens_the_sites_store(
    minio: MinioServer,
    prefix: str,
    site_user: tuple[str, str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedcore.site import SiteGroup, materialize
    from fedcore.store import open_job_store

    access, secret, job_file = site_user
    job = load_job(job_file)
    keys = join_bundle.StoreUserKeys(access, secret)
    pem = (
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA" + "A" * 43 + "=\n-----END PUBLIC KEY-----\n"
    )
    data = join_bundle.dump_bundle(job.to_object(), ME, keys.to_json(), "ab" * 32, pem)
    folder = tmp_path / "site"
    folder.mkdir()

    job_path, env = materialize(
        join_bundle.load_bundle(data), SiteGroup.from_environ({}, 1), folder
    )
    for name, value in env.items():  # as run_site_client sets them for the processes
        monkeypatch.setenv(name, value)
    store = open_job_store(load_job(job_path), role=Role.for_client(ME))

    assert store.get_bytes(layout.JOB_KEY) == f"seed {layout.JOB_KEY}".encode()
    with pytest.raises(StoreError, match=r"AccessDenied|denied|403") as refused:
        store.get_bytes(layout.update_key(2, OTHER))
    assert not isinstance(refused.value, ObjectNotFound)  # refused, not hidden as missing
