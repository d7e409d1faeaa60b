"""``fedkube run``'s scoped credentials without a store: who gets minted credentials, and
what a process's environment keeps (fedcore.local_credentials)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from fedcore.credentials import CREDENTIALS_FILE_ENV, Role
from fedcore.errors import CredentialsError
from fedcore.local_credentials import SHARED_WARNING, LocalCredentials
from fedcore.spec import FederatedJob, parse_job
from fedcore.store import open_job_store
from fedcore.store.s3 import S3Store


def make_job(**storage: Any) -> FederatedJob:
    return parse_job(
        {
            "apiVersion": "fedkube.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "tiny"},
            "spec": {
                "rounds": 1,
                "task": {"entrypoint": "fedcore.tasks.digits:task"},
                "storage": storage,
                "clients": [{"name": "a"}, {"name": "b"}],
            },
        }
    )


S3 = {"endpoint": "http://127.0.0.1:9", "bucket": "fedkube"}


@pytest.fixture
def creds() -> Any:
    made = LocalCredentials(make_job(**S3), ("AKIAJOB", "job-secret"))
    yield made
    made.close()


def test_a_process_keeps_no_aws_credential_and_gets_only_its_own_file(
    creds: LocalCredentials,
) -> None:
    base = {
        "PATH": "/usr/bin",
        "AWS_ACCESS_KEY_ID": "AKIAJOB",
        "AWS_SECRET_ACCESS_KEY": "job-secret",
        "AWS_SESSION_TOKEN": "t",
        "AWS_PROFILE": "admin",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials",
        "AWS_REGION": "eu-west-1",
        "AWS_CA_BUNDLE": "/etc/ca.pem",
    }

    env = creds.environment(Role.for_client("a"), base)

    assert env == {
        "PATH": "/usr/bin",
        "AWS_REGION": "eu-west-1",
        "AWS_CA_BUNDLE": "/etc/ca.pem",
        CREDENTIALS_FILE_ENV: str(creds.file(Role.for_client("a"))),
    }


def test_each_role_has_its_own_file_in_a_private_folder(creds: LocalCredentials) -> None:
    files = {creds.file(role) for role in creds.roles}

    assert len(files) == 3
    assert all(f.is_relative_to(creds.folder) for f in files)
    assert creds.folder.stat().st_mode & 0o077 == 0


def test_close_removes_the_credentials_folder() -> None:
    made = LocalCredentials(make_job(**S3), ("k", "s"))

    made.close()

    assert not made.folder.exists()


def test_a_local_store_needs_no_minted_credentials() -> None:
    out = io.StringIO()

    assert LocalCredentials.for_run(make_job(), {}, out) is None
    assert out.getvalue() == ""


def test_shared_credentials_run_as_before_after_a_warning() -> None:
    out = io.StringIO()

    made = LocalCredentials.for_run(make_job(**S3, credentials="shared"), {}, out)

    assert made is None
    assert out.getvalue() == SHARED_WARNING + "\n"


def test_scoped_credentials_without_the_jobs_keys_name_both_variables() -> None:
    with pytest.raises(CredentialsError, match=r"AWS_SECRET_ACCESS_KEY not set.*shared"):
        LocalCredentials.for_run(make_job(**S3), {"AWS_ACCESS_KEY_ID": "k"}, io.StringIO())


def test_a_job_process_with_a_credentials_file_opens_a_scoped_s3_store(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(
        '{"accessKeyId": "ASIA1", "secretAccessKey": "s", "sessionToken": "t", '
        '"expiration": "2099-01-01T00:00:00Z"}'
    )

    store = open_job_store(
        make_job(**S3), {CREDENTIALS_FILE_ENV: str(path)}, role=Role.for_client("a")
    )

    assert isinstance(store, S3Store)
    assert store.config.denied_is_missing[-2:] == (
        "rounds/??????/updates/a.*safetensors",
        "clients/a/scaffold.safetensors",
    )


def test_a_job_process_with_a_bad_credentials_file_fails_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text('{"accessKeyId": "ASIA1"}')

    with pytest.raises(CredentialsError, match=rf"{path}: field 'secretAccessKey' is missing"):
        open_job_store(make_job(**S3), {CREDENTIALS_FILE_ENV: str(path)})
