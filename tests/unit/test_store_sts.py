"""How ``fedcore.store.sts`` reads a store's answers to AssumeRole (no server: the replies
are the ones MinIO, AWS, Ceph and STS-less S3 servers give, as botocore parses them)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from fedcore.credentials import Role, session_policy
from fedcore.errors import CredentialsError, StoreError, StoreUnavailable, StsUnavailable
from fedcore.store.sts import _error_for, assume_role, sts_endpoint_for

POLICY = session_policy("fedkube", "job/", Role.aggregator())


def client_error(code: str, status: int, message: str = "") -> botocore.exceptions.ClientError:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "AssumeRole")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("NotImplemented", 501),
        ("InvalidAction", 400),
        ("MethodNotAllowed", 405),
        ("404", 404),
        ("NoSuchBucket", 404),
        ("400", 400),
    ],
)
def test_a_store_without_sts_is_sts_unavailable_naming_the_shared_opt_out(
    code: str, status: int
) -> None:
    error = _error_for(client_error(code, status), "http://s3:9000", None)

    assert isinstance(error, StsUnavailable)
    assert "does not offer STS AssumeRole" in str(error)
    assert "spec.storage.credentials: shared" in str(error)


def test_a_refused_assume_role_is_sts_unavailable_saying_which_credentials_minio_accepts() -> None:
    error = _error_for(
        client_error("AccessDenied", 403, "Access Denied."), "http://minio:9000", None
    )

    assert isinstance(error, StsUnavailable)
    assert "not for service accounts" in str(error)
    assert "spec.storage.credentials: shared" in str(error)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("InvalidClientTokenId", "The security token included in the request is invalid."),
        ("SignatureDoesNotMatch", ""),
        ("AccessDenied", "The request signature we calculated does not match the signature"),
        ("AccessDenied", "The Access Key Id you provided does not exist in our records."),
    ],
)
def test_a_wrong_key_pair_is_a_credentials_error_naming_the_secret(code: str, message: str) -> None:
    error = _error_for(client_error(code, 403, message), "http://minio:9000", None)

    assert type(error) is CredentialsError
    assert "spec.storage.secretRef" in str(error)


def test_a_server_error_while_minting_is_transient() -> None:
    error = _error_for(client_error("InternalError", 500), "http://minio:9000", None)

    assert isinstance(error, StoreUnavailable)


def test_a_rejected_policy_names_the_prefix() -> None:
    error = _error_for(client_error("PackedPolicyTooLarge", 400), "AWS STS", "arn:aws:iam::1:r/x")

    assert type(error) is CredentialsError
    assert "spec.storage.prefix" in str(error)


@pytest.mark.parametrize("seconds", [899, 43201])
def test_a_lifetime_sts_does_not_grant_is_refused_before_asking(seconds: int) -> None:
    with pytest.raises(CredentialsError, match=rf"lifetime {seconds}s.*900 to 43200"):
        assume_role("http://127.0.0.1:9", "k", "s", POLICY, seconds)


def test_aws_without_a_role_arn_is_refused_naming_the_field() -> None:
    with pytest.raises(CredentialsError, match=r"spec\.storage\.roleArn"):
        assume_role(None, "k", "s", POLICY, 900)


def test_an_unreachable_store_is_transient() -> None:
    with pytest.raises(StoreUnavailable, match=r"cannot reach the store's STS"):
        assume_role("http://127.0.0.1:9", "k", "s", POLICY, 900, max_attempts=1)


def test_every_minting_error_is_a_store_error() -> None:
    assert issubclass(StsUnavailable, CredentialsError)
    assert issubclass(CredentialsError, StoreError)


@pytest.mark.parametrize(
    ("endpoint", "sts"),
    [
        ("http://minio.minio:9000", "http://minio.minio:9000"),
        ("https://rgw.example.org", "https://rgw.example.org"),
        ("https://s3.eu-central-1.amazonaws.com", None),
        ("https://s3.amazonaws.com", None),
        ("https://bucket.s3.cn-north-1.amazonaws.com.cn", None),
        (None, None),
    ],
)
def test_aws_s3_endpoints_mint_at_aws_sts_and_others_at_the_store(
    endpoint: str | None, sts: str | None
) -> None:
    assert sts_endpoint_for(endpoint) == sts


def test_an_aws_s3_endpoint_without_a_role_arn_is_refused_naming_the_field() -> None:
    with pytest.raises(CredentialsError, match=r"spec\.storage\.roleArn"):
        assume_role("https://s3.eu-central-1.amazonaws.com", "k", "s", POLICY, 900)
