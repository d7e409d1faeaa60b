"""Minting a role's temporary store credential with the S3 STS ``AssumeRole`` call.

The job's own credential (``spec.storage.secretRef`` in a cluster, the AWS environment for
``fedkube run``) asks the store for a temporary credential limited by an inline session
policy (``fedcore.credentials.session_policy``). The same call works on MinIO, AWS and Ceph
RGW; where it does not, ``StsUnavailable`` says so and names the opt-out.

A module of its own, next to ``s3.py`` rather than inside it: it talks to a different
service (STS, not S3), only the holders of the job's credential (the operator, ``fedkube
run``) call it, and credential minting is security code that should be small and easy to
audit. Like ``s3.py`` it may import boto3; nothing outside ``fedcore.store`` does.

What the store's admin sets up (docs/storage-credentials.md has the details):

- MinIO: nothing. ``AssumeRole`` works for the root user and for regular users (``mc admin
  user add``); the minted credential can do what the parent may *and* the session policy
  allows. MinIO refuses it for service accounts and for temporary credentials.
- AWS S3: an IAM role the job's user may assume (``spec.storage.roleArn``) whose policy
  covers the bucket's job prefixes.
- Ceph RGW: STS enabled (``rgw_s3_auth_use_sts``, ``rgw_sts_key``) and a role
  (``radosgw-admin role create``) named by ``spec.storage.roleArn``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from fedcore.credentials import (
    MAX_DURATION_SECONDS,
    MIN_DURATION_SECONDS,
    ScopedCredentials,
    policy_json,
)
from fedcore.errors import CredentialsError, StoreError, StoreUnavailable, StsUnavailable

log = logging.getLogger(__name__)

PLACEHOLDER_ROLE_ARN = "arn:minio:iam:::role/fedkube-placeholder"
"""Sent when no ``roleArn`` is configured: the AssumeRole API requires one, MinIO ignores it
(the parent user's own policy applies), AWS and Ceph need a real one."""
OPT_OUT = (
    "set spec.storage.credentials: shared to run the job with the job's own credential in "
    "every pod (no isolation between participants)"
)
"""How a job runs on a store without STS, quoted by every ``StsUnavailable``."""

_NO_STS_CODES = frozenset(
    {
        "NotImplemented",
        "InvalidAction",
        "UnsupportedOperation",
        "MethodNotAllowed",
        "InvalidRequest",
        "XMinioNotImplemented",
        "UnknownOperationException",
    }
)
_BAD_KEY_CODES = frozenset(
    {"InvalidClientTokenId", "InvalidAccessKeyId", "SignatureDoesNotMatch", "IncompleteSignature"}
)
_REFUSED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "NotAuthorized"})
_BAD_KEY_MESSAGES = ("signature", "access key id")


def assume_role(
    endpoint: str | None,
    access_key_id: str,
    secret_access_key: str,
    policy: dict[str, Any],
    duration_seconds: int,
    role_arn: str | None = None,
    region: str = "us-east-1",
    *,
    session_name: str | None = None,
    max_attempts: int = 4,
) -> ScopedCredentials:
    """A temporary credential of the key pair's principal, narrowed by ``policy``.

    ``endpoint``: the store's URL (MinIO, Ceph RGW serve STS on it); None or an AWS S3
    endpoint (``https://s3.<region>.amazonaws.com``) for AWS's regional STS.
    ``duration_seconds``: the credential's lifetime, 900 to 43200. Raises ``StsUnavailable``
    when the store cannot mint credentials, ``CredentialsError`` when it refuses this call
    (wrong key pair, bad policy or duration), ``StoreUnavailable`` when it cannot be reached.
    """
    if not MIN_DURATION_SECONDS <= duration_seconds <= MAX_DURATION_SECONDS:
        raise CredentialsError(
            f"credential lifetime {duration_seconds}s is outside what STS grants "
            f"({MIN_DURATION_SECONDS} to {MAX_DURATION_SECONDS} seconds); pick one in that range"
        )
    sts_endpoint = sts_endpoint_for(endpoint)
    if sts_endpoint is None and role_arn is None:
        raise CredentialsError(
            "AWS STS mints credentials only for a role: set spec.storage.roleArn to an IAM role "
            f"the job's credential may assume, or {OPT_OUT}"
        )
    where = sts_endpoint or f"AWS STS ({region})"
    client = boto3.session.Session(
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key
    ).client(
        "sts",
        endpoint_url=sts_endpoint,
        region_name=region,
        config=BotoConfig(retries={"total_max_attempts": max_attempts, "mode": "standard"}),
    )
    try:
        reply = client.assume_role(
            RoleArn=role_arn or PLACEHOLDER_ROLE_ARN,
            RoleSessionName=session_name or f"fedkube-{secrets.token_hex(4)}",
            Policy=policy_json(policy),
            DurationSeconds=duration_seconds,
        )
    except botocore.exceptions.ClientError as e:
        raise _error_for(e, where, role_arn) from e
    except (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
    ) as e:
        raise StoreUnavailable(
            f"cannot reach the store's STS at {where} ({type(e).__name__}); check that the "
            "server runs and the endpoint is right, or retry later"
        ) from e
    except botocore.exceptions.BotoCoreError as e:
        # An S3 server without STS answers the query with something that is not an STS
        # reply (an S3 error document, an HTML page), which botocore cannot parse.
        raise StsUnavailable(
            f"{where} gave no STS answer to AssumeRole ({type(e).__name__}: {e}): the store "
            f"does not seem to offer STS; {OPT_OUT}"
        ) from e
    granted = reply["Credentials"]
    creds = ScopedCredentials(
        access_key_id=granted["AccessKeyId"],
        secret_access_key=granted["SecretAccessKey"],
        session_token=granted["SessionToken"],
        expiration=granted["Expiration"],
    )
    log.debug("minted a store credential at %s valid until %s", where, creds.expiration)
    return creds


def sts_endpoint_for(endpoint: str | None) -> str | None:
    """Where to send AssumeRole for a store at ``endpoint``: the store itself (MinIO and
    Ceph RGW serve STS on their S3 endpoint), or None for AWS S3 (``*.amazonaws.com``),
    whose STS is a service of its own that botocore finds from the region."""
    if endpoint is None:
        return None
    host = (urlsplit(endpoint).hostname or "").lower()
    if host == "amazonaws.com" or host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return None
    return endpoint


def _error_for(e: botocore.exceptions.ClientError, where: str, role_arn: str | None) -> StoreError:
    error = e.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    said = f"{code or status}: {message}" if message else (code or str(status))
    if (
        code in _NO_STS_CODES
        or status in (404, 405, 501)
        or (status == 400 and code in ("", "400", "InvalidArgument"))
    ):
        return StsUnavailable(
            f"{where} does not offer STS AssumeRole ({said}), so it cannot mint scoped "
            f"credentials for the job's roles; {OPT_OUT}"
        )
    # MinIO reports a wrong key pair as AccessDenied, with the S3 error's description.
    bad_key = code in _REFUSED_CODES and any(m in message.lower() for m in _BAD_KEY_MESSAGES)
    if code in _BAD_KEY_CODES or bad_key:
        return CredentialsError(
            f"{where} does not accept the job's credential ({said}); check the access key id "
            "and secret in spec.storage.secretRef (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    if code in _REFUSED_CODES or status == 403:
        role = f"role {role_arn}" if role_arn else "a role"
        return StsUnavailable(
            f"{where} refused to mint scoped credentials for the job's credential ({said}). "
            "MinIO mints them for the root user and regular users (`mc admin user add`), not "
            f"for service accounts or temporary credentials; AWS and Ceph need {role} that "
            f"credential may assume (spec.storage.roleArn). Or {OPT_OUT}"
        )
    if code in ("MalformedPolicyDocument", "PackedPolicyTooLarge"):
        return CredentialsError(
            f"{where} rejected the session policy fedkube built ({said}); shorten "
            "spec.storage.prefix, or report this as a bug"
        )
    if status >= 500:
        return StoreUnavailable(f"{where} failed to mint credentials ({said}); retry later")
    return CredentialsError(f"{where} refused AssumeRole ({said})")


__all__ = ["OPT_OUT", "PLACEHOLDER_ROLE_ARN", "assume_role", "sts_endpoint_for"]
