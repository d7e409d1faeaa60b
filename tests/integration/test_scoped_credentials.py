"""Scoped store credentials on a real MinIO: minting, each role's access matrix, rotation.

Every test mints real temporary credentials with STS ``AssumeRole`` from the session's MinIO
and the session policies of ``fedcore.credentials``; the attacks go through plain boto3 (so
the store's own answer, ``AccessDenied``, is what is checked), the allowed paths through
``S3Store`` opened from a credentials file, as a pod opens it.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import psutil
import pytest

from fedcore import layout
from fedcore.credentials import (
    CREDENTIALS_FILE_ENV,
    Role,
    ScopedCredentials,
    denied_is_missing_keys,
    dump_credentials,
    read_credentials_file,
    session_policy,
    write_credentials_file,
)
from fedcore.errors import ObjectNotFound, StoreError, StoreUnavailable, StsUnavailable
from fedcore.exitcodes import EXIT_CONFIG
from fedcore.local_credentials import SHARED_WARNING, LocalCredentials
from fedcore.spec import job_prefix, load_job
from fedcore.store import open_job_store
from fedcore.store.s3 import CREDENTIALS_ADVISORY_REFRESH_S, MIN_PART_BYTES, S3Config, S3Store
from fedcore.store.sts import assume_role
from tests.fixtures.minio import MinioServer
from tests.integration.test_run_local import (
    Run,
    gated_clients,
    leftovers,
    start_run,
    wait_for,
    write_job,
)

LIFETIME = 900
"""Shortest lifetime STS grants; the tests finish long before it runs out."""
ME, OTHER = "alpha", "bravo"
BIG = MIN_PART_BYTES + 1024
"""Bytes of an upload that goes up in parts with the test stores' 5 MiB threshold."""

Attack = Callable[[Any, str, str], object]
"""(boto3 S3 client, bucket, job prefix) -> the request the store must refuse."""


def mint(
    minio: MinioServer,
    prefix: str,
    role: Role,
    keys: tuple[str, str] | None = None,
    *,
    variate: bool = False,
) -> ScopedCredentials:
    access, secret = keys or (minio.access_key, minio.secret_key)
    policy = session_policy(minio.bucket, prefix, role, variate=variate)
    return assume_role(minio.endpoint, access, secret, policy, LIFETIME)


def raw_client(minio: MinioServer, creds: ScopedCredentials) -> Any:
    return boto3.session.Session(
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        region_name="us-east-1",
    ).client(
        "s3",
        endpoint_url=minio.endpoint,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}
        ),
    )


def file_store(minio: MinioServer, prefix: str, path: Path, role: Role | None = None) -> S3Store:
    """An S3Store as a pod of ``role`` opens it: from its credentials file."""
    config = S3Config(
        endpoint=minio.endpoint,
        bucket=minio.bucket,
        prefix=prefix,
        max_attempts=2,
        multipart_threshold=MIN_PART_BYTES,
        multipart_chunksize=MIN_PART_BYTES,
        denied_is_missing=denied_is_missing_keys(role),
    )
    return S3Store.from_credentials_file(config, path)


def role_store(
    minio: MinioServer, prefix: str, role: Role, tmp_path: Path, *, variate: bool = False
) -> S3Store:
    path = tmp_path / f"{secrets.token_hex(4)}.json"
    write_credentials_file(path, mint(minio, prefix, role, variate=variate))
    return file_store(minio, prefix, path, role)


def assert_denied(attempt: Callable[[], object]) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        attempt()
    error = caught.value.response["Error"]
    status = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    assert (error.get("Code"), status) in (("AccessDenied", 403), ("403", 403)), error


@pytest.fixture
def prefix(minio: MinioServer) -> str:
    """A job's prefix holding two committed rounds, the other client's update and final/."""
    p = f"scoped-{secrets.token_hex(6)}/"
    root = S3Store(
        S3Config(endpoint=minio.endpoint, bucket=minio.bucket, prefix=p), session=minio.session()
    )
    for key in (
        layout.JOB_KEY,
        layout.global_key(0),
        layout.round_record_key(0),
        layout.strategy_state_key(0),
        layout.global_key(1),
        layout.round_record_key(1),
        layout.update_key(2, OTHER),
        layout.manifest_key(2, OTHER),
        layout.FINAL_MODEL_KEY,
        layout.FINAL_RECORD_KEY,
        layout.EXCLUDED_KEY,
    ):
        root.put_bytes(key, f"seed {key}".encode())
    return p


# ---- minting -----------------------------------------------------------------------------------


def test_minio_mints_scoped_credentials_for_its_root_user(minio: MinioServer) -> None:
    creds = mint(minio, "any-job/", Role.for_client(ME))

    assert creds.session_token
    assert timedelta(minutes=14) < creds.remaining() <= timedelta(minutes=15)


def test_minio_mints_scoped_credentials_for_a_regular_user(
    minio: MinioServer, mc_executable: Path, prefix: str, tmp_path: Path
) -> None:
    user, secret = f"job-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, bucket_policy(minio.bucket))

    creds = mint(minio, prefix, Role.for_client(ME), keys=(user, secret))

    client = raw_client(minio, creds)
    assert client.get_object(Bucket=minio.bucket, Key=prefix + layout.JOB_KEY)["Body"].read()
    assert_denied(
        lambda: client.get_object(Bucket=minio.bucket, Key=prefix + layout.update_key(2, OTHER))
    )


def test_a_service_account_cannot_mint_and_the_error_names_the_shared_opt_out(
    minio: MinioServer, mc_executable: Path
) -> None:
    user, secret = f"job-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, bucket_policy(minio.bucket))
    access, svc_secret = f"svc{secrets.token_hex(6)}", secrets.token_hex(12)
    minio.add_service_account(user, access, svc_secret)

    with pytest.raises(StsUnavailable, match=r"spec\.storage\.credentials: shared"):
        mint(minio, "any-job/", Role.aggregator(), keys=(access, svc_secret))


def test_wrong_job_keys_are_a_credentials_error_naming_the_secret(minio: MinioServer) -> None:
    policy = session_policy(minio.bucket, "any-job/", Role.aggregator())

    with pytest.raises(StoreError, match=r"spec\.storage\.secretRef") as caught:
        assume_role(minio.endpoint, minio.access_key, "wrong-secret", policy, LIFETIME)

    assert not isinstance(caught.value, StsUnavailable)


def bucket_policy(bucket: str) -> dict[str, Any]:
    """What a store admin gives the job's user: the bucket, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:*"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


# ---- a client's limits -------------------------------------------------------------------------


def put(key: str) -> Attack:
    return lambda c, b, p: c.put_object(Bucket=b, Key=p + key, Body=b"forged")


def get(key: str) -> Attack:
    return lambda c, b, p: c.get_object(Bucket=b, Key=p + key)


def delete(key: str) -> Attack:
    return lambda c, b, p: c.delete_object(Bucket=b, Key=p + key)


def delete_many(key: str) -> Attack:
    """DeleteObjects answers 200 and refuses per key: a refusal becomes the ClientError a
    single request would have raised, with the code the store gave that key."""

    def attack(c: Any, b: str, p: str) -> object:
        reply = c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": p + key}]})
        for refused in reply.get("Errors", []):
            response = {"Error": refused, "ResponseMetadata": {"HTTPStatusCode": 403}}
            raise botocore.exceptions.ClientError(response, "DeleteObjects")  # type: ignore[arg-type]
        return reply

    return attack


def list_under(key: str) -> Attack:
    return lambda c, b, p: c.list_objects_v2(Bucket=b, Prefix=p + key)


CLIENT_ATTACKS: dict[str, Attack] = {
    "read another client's update": get(layout.update_key(2, OTHER)),
    "read another client's manifest": get(layout.manifest_key(2, OTHER)),
    "probe another client's update": lambda c, b, p: c.head_object(
        Bucket=b, Key=p + layout.update_key(2, OTHER)
    ),
    "read the operator's exclusion record": get(layout.EXCLUDED_KEY),
    "write another client's slot": put(layout.update_key(3, OTHER)),
    "write another client's manifest": put(layout.manifest_key(3, OTHER)),
    "start a multipart upload into another client's slot": lambda c, b, p: (
        c.create_multipart_upload(Bucket=b, Key=p + layout.update_key(3, OTHER))
    ),
    "write the next global model": put(layout.global_key(2)),
    "write the next round record": put(layout.round_record_key(2)),
    "overwrite a committed round record": put(layout.round_record_key(1)),
    "overwrite job.json": put(layout.JOB_KEY),
    "write the final model": put(layout.FINAL_MODEL_KEY),
    "write the exclusion record": put(layout.EXCLUDED_KEY),
    "write its slot of another job": lambda c, b, p: c.put_object(
        Bucket=b, Key=f"other-{p}{layout.update_key(2, ME)}", Body=b"x"
    ),
    "list the job": list_under(""),
    "list a round's updates": list_under(layout.updates_prefix(2)),
    "list one round record's key": list_under(layout.round_record_key(1)),
    "list the bucket": lambda c, b, p: c.list_objects_v2(Bucket=b),
    "list multipart uploads": lambda c, b, p: c.list_multipart_uploads(Bucket=b, Prefix=p),
    "delete its own update": delete(layout.update_key(2, ME)),
    "delete another client's update": delete(layout.update_key(2, OTHER)),
    "delete a global model": delete(layout.global_key(1)),
    "delete a round record": delete(layout.round_record_key(1)),
    "delete job.json": delete(layout.JOB_KEY),
    "delete many at once": delete_many(layout.JOB_KEY),
}


@pytest.fixture
def client_creds(minio: MinioServer, prefix: str) -> ScopedCredentials:
    return mint(minio, prefix, Role.for_client(ME))


@pytest.mark.parametrize("attack", list(CLIENT_ATTACKS), ids=list(CLIENT_ATTACKS))
def test_a_client_is_refused(
    attack: str, minio: MinioServer, prefix: str, client_creds: ScopedCredentials
) -> None:
    client = raw_client(minio, client_creds)

    assert_denied(lambda: CLIENT_ATTACKS[attack](client, minio.bucket, prefix))


def test_denied_writes_left_the_store_unchanged(
    minio: MinioServer, prefix: str, client_creds: ScopedCredentials
) -> None:
    client = raw_client(minio, client_creds)
    for name, attack in CLIENT_ATTACKS.items():
        if "write" in name or "delete" in name:
            with pytest.raises(botocore.exceptions.ClientError):
                attack(client, minio.bucket, prefix)

    root = minio.client()
    listed = root.list_objects_v2(Bucket=minio.bucket, Prefix=prefix)["Contents"]
    assert len(listed) == 11
    body = root.get_object(Bucket=minio.bucket, Key=prefix + layout.update_key(2, OTHER))["Body"]
    assert body.read() == f"seed {layout.update_key(2, OTHER)}".encode()


def test_a_client_uploads_its_own_update_small_and_in_parts(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    store = role_store(minio, prefix, Role.for_client(ME), tmp_path)
    big = tmp_path / "update.safetensors"
    big.write_bytes(secrets.token_bytes(BIG))

    assert not store.exists(layout.manifest_key(2, ME))
    store.put_file(layout.update_key(2, ME), big, if_absent=True)  # our multipart loop
    store.put_file(layout.update_key(3, ME), big)  # boto3's transfer manager
    store.put_bytes(layout.manifest_key(2, ME), b"{}", if_absent=True)

    assert store.exists(layout.manifest_key(2, ME))
    assert store.get_bytes(layout.update_key(3, ME)) == big.read_bytes()
    assert store.get_bytes(layout.manifest_key(2, ME)) == b"{}"


def test_a_client_reads_the_job_the_rounds_and_the_final_model(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    store = role_store(minio, prefix, Role.for_client(ME), tmp_path)

    for key in (
        layout.JOB_KEY,
        layout.global_key(1),
        layout.round_record_key(1),
        layout.strategy_state_key(0),
        layout.FINAL_MODEL_KEY,
        layout.FINAL_RECORD_KEY,
    ):
        assert store.get_bytes(key) == f"seed {key}".encode()
    store.get_file(layout.global_key(0), tmp_path / "global.safetensors")
    assert (
        tmp_path / "global.safetensors"
    ).read_bytes() == b"seed rounds/000000/global.safetensors"


def test_a_client_probing_for_an_uncommitted_round_finds_it_missing_without_listing(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    store = role_store(minio, prefix, Role.for_client(ME), tmp_path)

    assert store.exists(layout.round_record_key(1))
    assert not store.exists(layout.round_record_key(2))
    with pytest.raises(ObjectNotFound):
        store.get_bytes(layout.round_record_key(2))
    with pytest.raises(ObjectNotFound):
        store.get_file(layout.global_key(2), tmp_path / "global.safetensors")


def test_minio_answers_a_scoped_reader_404_for_a_missing_key_it_may_read(
    minio: MinioServer, prefix: str, client_creds: ScopedCredentials
) -> None:
    client = raw_client(minio, client_creds)

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.get_object(Bucket=minio.bucket, Key=prefix + layout.round_record_key(7))

    assert caught.value.response["Error"]["Code"] == "NoSuchKey"


def test_on_minio_a_refused_read_stays_an_access_error_even_where_absence_may_be_hidden(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    # AWS and Ceph answer a missing key 403 to a reader that may not list, so the store
    # reads AccessDenied on the role's readable keys as "missing"; MinIO answers 404, so its
    # 403 is a real refusal (another client's update here) and must stay one.
    path = tmp_path / "creds.json"
    write_credentials_file(path, mint(minio, prefix, Role.for_client(ME)))
    hidden = layout.update_key(2, OTHER)
    config = S3Config(
        endpoint=minio.endpoint, bucket=minio.bucket, prefix=prefix, denied_is_missing=(hidden,)
    )
    store = S3Store.from_credentials_file(config, path)

    with pytest.raises(StoreError, match="access denied") as caught:
        store.get_bytes(hidden)
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StoreError, match="access denied"):
        store.exists(hidden)


def test_a_revoked_client_credential_fails_its_round_probe_instead_of_waiting(
    minio: MinioServer, mc_executable: Path, prefix: str, tmp_path: Path
) -> None:
    user, secret = f"rev-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, bucket_policy(minio.bucket))
    path = tmp_path / "credentials.json"
    write_credentials_file(path, mint(minio, prefix, Role.for_client(ME), keys=(user, secret)))
    store = file_store(minio, prefix, path, Role.for_client(ME))
    assert not store.exists(layout.round_record_key(2))

    minio.set_user_enabled(user, False)

    with pytest.raises(StoreError, match=r"access denied.*revoked"):
        store.exists(layout.round_record_key(2))


def test_a_client_store_cannot_write_outside_its_slot(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    store = role_store(minio, prefix, Role.for_client(ME), tmp_path)

    for key in (layout.update_key(4, OTHER), layout.global_key(2), layout.round_record_key(2)):
        with pytest.raises(StoreError, match="access denied"):
            store.put_bytes(key, b"forged", if_absent=True)
    with pytest.raises(StoreError, match="access denied"):
        store.list(layout.ROUNDS_PREFIX)


# ---- a SCAFFOLD client's own variate ------------------------------------------------------------


SCAFFOLD_CLIENT_ATTACKS: dict[str, Attack] = {
    "read another client's variate": get(layout.client_variate_key(OTHER)),
    "write another client's variate": put(layout.client_variate_key(OTHER)),
    "write beside its own variate": put(f"{layout.CLIENTS_PREFIX}{ME}/other.safetensors"),
    "delete its own variate": delete(layout.client_variate_key(ME)),
    "list the clients' variates": list_under(layout.CLIENTS_PREFIX),
    "write the next global model": put(layout.global_key(2)),
}


@pytest.mark.parametrize("attack", list(SCAFFOLD_CLIENT_ATTACKS), ids=list(SCAFFOLD_CLIENT_ATTACKS))
def test_a_scaffold_client_is_refused(attack: str, minio: MinioServer, prefix: str) -> None:
    client = raw_client(minio, mint(minio, prefix, Role.for_client(ME), variate=True))

    assert_denied(lambda: SCAFFOLD_CLIENT_ATTACKS[attack](client, minio.bucket, prefix))


def test_a_scaffold_client_finds_no_variate_at_first_then_writes_and_reads_its_own(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    store = role_store(minio, prefix, Role.for_client(ME), tmp_path, variate=True)
    key = layout.client_variate_key(ME)

    with pytest.raises(ObjectNotFound):
        store.size(key)
    store.put_bytes(key, b"variate")

    assert store.size(key) == 7
    assert store.get_bytes(key) == b"variate"


def test_a_client_of_a_job_without_scaffold_has_no_variate_slot(
    minio: MinioServer, prefix: str
) -> None:
    client = raw_client(minio, mint(minio, prefix, Role.for_client(ME)))

    assert_denied(lambda: put(layout.client_variate_key(ME))(client, minio.bucket, prefix))


# ---- the aggregator's limits -------------------------------------------------------------------


AGGREGATOR_ATTACKS: dict[str, Attack] = {
    "write a client's slot": put(layout.update_key(3, OTHER)),
    "write a client's manifest": put(layout.manifest_key(3, OTHER)),
    "overwrite an update": put(layout.update_key(2, OTHER)),
    "write the exclusion record": put(layout.EXCLUDED_KEY),
    "write outside the rounds' files": put("rounds/000002/notes.txt"),
    "read another job": lambda c, b, p: c.get_object(Bucket=b, Key=f"other-{p}{layout.JOB_KEY}"),
    "list another job": lambda c, b, p: c.list_objects_v2(Bucket=b, Prefix=f"other-{p}"),
    "list the bucket": lambda c, b, p: c.list_objects_v2(Bucket=b),
    "delete an update": delete(layout.update_key(2, OTHER)),
    "delete a global model": delete(layout.global_key(1)),
    "delete a round record": delete(layout.round_record_key(1)),
    "delete the final model": delete(layout.FINAL_MODEL_KEY),
    "delete many at once": delete_many(layout.JOB_KEY),
}


@pytest.mark.parametrize("attack", list(AGGREGATOR_ATTACKS), ids=list(AGGREGATOR_ATTACKS))
def test_the_aggregator_is_refused(attack: str, minio: MinioServer, prefix: str) -> None:
    client = raw_client(minio, mint(minio, prefix, Role.aggregator()))

    assert_denied(lambda: AGGREGATOR_ATTACKS[attack](client, minio.bucket, prefix))


def test_the_aggregator_lists_reads_updates_and_publishes_rounds(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    store = role_store(minio, prefix, Role.aggregator(), tmp_path)
    big = tmp_path / "global.safetensors"
    big.write_bytes(secrets.token_bytes(BIG))

    listed = store.list(layout.updates_prefix(2))
    update = store.get_bytes(layout.update_key(2, OTHER))
    excluded = store.get_bytes(layout.EXCLUDED_KEY)
    store.put_file(layout.global_key(2), big)
    store.put_bytes(layout.strategy_state_key(2), b"state")
    store.put_bytes(layout.round_record_key(2), b"{}", if_absent=True)
    store.put_file(layout.FINAL_MODEL_KEY, big)

    assert listed == [layout.manifest_key(2, OTHER), layout.update_key(2, OTHER)]
    assert update == f"seed {layout.update_key(2, OTHER)}".encode()
    assert excluded == f"seed {layout.EXCLUDED_KEY}".encode()
    assert store.get_bytes(layout.global_key(2)) == big.read_bytes()
    assert not store.exists(layout.round_record_key(3))


# ---- rotation ----------------------------------------------------------------------------------


def test_a_store_opened_from_a_file_keeps_working_after_the_file_is_rotated_and_the_old_credential_revoked(  # noqa: E501
    minio: MinioServer, mc_executable: Path, prefix: str, tmp_path: Path
) -> None:
    user, secret = f"rot-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, bucket_policy(minio.bucket))
    role = Role.for_client(ME)
    old = mint(minio, prefix, role, keys=(user, secret))
    path = tmp_path / "credentials.json"
    write_credentials_file(path, old)
    store = file_store(minio, prefix, path, role)
    assert store.get_bytes(layout.JOB_KEY)

    write_credentials_file(path, mint(minio, prefix, role))  # rotated by its writer
    minio.set_user_enabled(user, False)  # every credential minted from the user is revoked
    assert_denied(
        lambda: raw_client(minio, old).get_object(Bucket=minio.bucket, Key=prefix + layout.JOB_KEY)
    )

    assert store.get_bytes(layout.JOB_KEY) == b"seed job.json"
    store.put_bytes(layout.manifest_key(5, ME), b"{}")
    assert store.exists(layout.manifest_key(5, ME))


def test_a_store_rereads_its_file_near_expiry_even_when_the_file_looks_unchanged(
    minio: MinioServer, mc_executable: Path, prefix: str, tmp_path: Path
) -> None:
    user, secret = f"exp-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, bucket_policy(minio.bucket))
    role = Role.for_client(ME)
    minted = mint(minio, prefix, role, keys=(user, secret))
    soon = datetime.now(UTC) + timedelta(seconds=CREDENTIALS_ADVISORY_REFRESH_S - 30)
    old = ScopedCredentials(
        minted.access_key_id, minted.secret_access_key, minted.session_token, soon
    )
    path = tmp_path / "credentials.json"
    path.write_bytes(dump_credentials(old).ljust(4096))
    store = file_store(minio, prefix, path, role)
    assert store.get_bytes(layout.JOB_KEY) == b"seed job.json"
    before = path.stat()

    # Same file, same size, same modification time: only the content says it changed.
    with path.open("r+b") as f:
        f.write(dump_credentials(mint(minio, prefix, role)).ljust(4096))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    minio.set_user_enabled(user, False)  # the credential in hand no longer works

    assert store.get_bytes(layout.JOB_KEY) == b"seed job.json"


def test_a_file_left_expired_fails_requests_until_it_is_replaced(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    role = Role.for_client(ME)
    good = mint(minio, prefix, role)
    path = tmp_path / "credentials.json"
    stale = ScopedCredentials(
        good.access_key_id,
        good.secret_access_key,
        good.session_token,
        datetime.now(UTC) - timedelta(seconds=5),
    )
    write_credentials_file(path, stale)
    store = file_store(minio, prefix, path, role)

    with pytest.raises(StoreUnavailable, match=rf"{path}.*expired.*not replaced in time"):
        store.get_bytes(layout.JOB_KEY)
    write_credentials_file(path, good)

    assert store.get_bytes(layout.JOB_KEY) == b"seed job.json"


def test_a_missing_credentials_file_fails_at_open_naming_it(
    minio: MinioServer, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match=r"nowhere\.json.*FEDKUBE_STORE_CREDENTIALS_FILE"):
        file_store(minio, "p/", tmp_path / "nowhere.json")


# ---- fedkube run -------------------------------------------------------------------------------


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, and afterwards: no process of the run may be left; kill any and fail."""
    yield tmp_path
    left = leftovers(str(tmp_path))
    for proc in left:
        proc.kill()
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


def job_processes(run: Run) -> dict[str, psutil.Process]:
    """The run's aggregator and client launcher processes, by role directory name."""
    found = {}
    for proc in run.descendants():
        with contextlib.suppress(psutil.NoSuchProcess):
            argv = proc.cmdline()
            if argv[1:4] == ["-m", "fedcore.cli", "aggregator"]:
                found["aggregator"] = proc
            elif argv[1:4] == ["-m", "fedcore.cli", "client"] or argv[1:3] == [
                "-m",
                "fedcore.client",
            ]:
                found[f"client-{argv[argv.index('--client') + 1]}"] = proc
    return found


def s3_storage(minio: MinioServer, **extra: str) -> dict[str, str]:
    prefix = f"runs/scoped-{secrets.token_hex(4)}/"
    return {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix, **extra}


def test_fedkube_run_gives_each_process_only_its_own_scoped_credentials_and_succeeds(
    minio: MinioServer, tmp: Path
) -> None:
    gate = tmp / "gate"  # client b waits before round 2: every process is up meanwhile
    job_file = write_job(tmp / "job.yaml", clients=gated_clients(gate), storage=s3_storage(minio))
    run = start_run(job_file, tmp / "run", env=minio.env())
    wait_for(lambda: len(job_processes(run)) == 3, "the aggregator and both clients")

    envs = {name: proc.environ() for name, proc in job_processes(run).items()}
    gate.touch()
    code = run.wait()

    assert code == 0, run.stderr()
    files = {name: env.get(CREDENTIALS_FILE_ENV, "") for name, env in envs.items()}
    assert all(f"/{name}/credentials.json" in files[name] for name in envs), files
    for env in envs.values():
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert not any(Path(f).exists() for f in files.values())  # deleted with the run
    assert SHARED_WARNING not in run.stderr()
    assert "model: s3://" in run.stdout()


def test_fedkube_run_with_scaffold_on_scoped_credentials_keeps_each_clients_variate(
    minio: MinioServer, tmp: Path
) -> None:
    storage = s3_storage(minio)
    job_file = write_job(tmp / "job.yaml", rounds=2, strategy={"name": "scaffold"}, storage=storage)
    run = start_run(job_file, tmp / "run", env=minio.env())

    code = run.wait()

    assert code == 0, run.stderr()
    root = S3Store(
        S3Config(
            endpoint=minio.endpoint, bucket=minio.bucket, prefix=job_prefix(load_job(job_file))
        ),
        session=minio.session(),
    )
    for client in ("a", "b"):
        assert root.size(layout.client_variate_key(client)) > 0
    assert root.exists(layout.strategy_state_key(2))


def test_fedkube_run_with_shared_credentials_warns_and_runs_with_the_jobs_own(
    minio: MinioServer, tmp: Path
) -> None:
    gate = tmp / "gate"
    storage = s3_storage(minio, credentials="shared")
    job_file = write_job(tmp / "job.yaml", clients=gated_clients(gate), storage=storage)
    run = start_run(job_file, tmp / "run", env=minio.env())
    wait_for(lambda: len(job_processes(run)) == 3, "the aggregator and both clients")

    envs = [proc.environ() for proc in job_processes(run).values()]
    gate.touch()
    code = run.wait()

    assert code == 0, run.stderr()
    assert SHARED_WARNING in run.stderr()
    assert all(env.get("AWS_ACCESS_KEY_ID") == minio.access_key for env in envs)
    assert not any(CREDENTIALS_FILE_ENV in env for env in envs)


def test_fedkube_run_on_a_store_that_cannot_mint_fails_at_once_naming_the_opt_out(
    minio: MinioServer, mc_executable: Path, tmp: Path
) -> None:
    user, secret = f"job-{secrets.token_hex(4)}", secrets.token_hex(12)
    minio.add_user(user, secret, bucket_policy(minio.bucket))
    access, svc_secret = f"svc{secrets.token_hex(6)}", secrets.token_hex(12)
    minio.add_service_account(user, access, svc_secret)  # MinIO mints nothing for these
    job_file = write_job(tmp / "job.yaml", storage=s3_storage(minio))
    env = {**minio.env(), "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": svc_secret}

    run = start_run(job_file, tmp / "run", env=env)
    code = run.wait()

    assert code == EXIT_CONFIG
    assert "spec.storage.credentials: shared" in run.stderr()
    assert "Traceback" not in run.stderr()
    assert not (tmp / "run" / "logs").exists()  # no process was started


def test_the_runner_renews_every_file_and_a_process_store_follows_without_reopening(
    minio: MinioServer, prefix: str, tmp_path: Path
) -> None:
    job_file = write_job(
        tmp_path / "job.yaml",
        storage={"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": prefix},
    )
    job = load_job(job_file)
    creds = LocalCredentials.for_run(job, minio.env(), io.StringIO())
    assert creds is not None
    try:
        role = Role.for_client("a")
        env = creds.environment(role, minio.env())
        store = open_job_store(job, env, role=role)
        first = {r: read_credentials_file(creds.file(r)) for r in creds.roles}
        assert store.get_bytes(layout.JOB_KEY) == b"seed job.json"

        creds.refresh()

        second = {r: read_credentials_file(creds.file(r)) for r in creds.roles}
        assert all(first[r].access_key_id != second[r].access_key_id for r in creds.roles)
        assert store.get_bytes(layout.JOB_KEY) == b"seed job.json"
        assert creds.next_refresh() == min(c.expiration for c in second.values()) - timedelta(
            seconds=creds.lifetime_seconds / 2
        )
    finally:
        creds.close()
    assert not creds.folder.exists()
