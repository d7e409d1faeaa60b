"""S3Store without a real server: its typed config, and how it maps a server's failures
(a tiny HTTP stub plays the failing server) onto fedcore's errors after retrying."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import boto3
import botocore.exceptions
import pytest

from fedcore.errors import ObjectNotFound, StoreError, StoreUnavailable
from fedcore.store.s3 import MiB, S3Config, S3Store, may_hide_absence

SECRET = "stub-secret-value-0123456789"


class _StubS3(BaseHTTPRequestHandler):
    """Answers every request with ``status`` and an S3 error document for ``code``."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "ServiceUnavailable"
    requests: ClassVar[list[str]] = []

    def _answer(self) -> None:
        type(self).requests.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.code}</Code>"
            f"<Message>stub says {self.code}</Message></Error>"
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[type[_StubS3]]:
    handler = type("Stub", (_StubS3,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _store(stub: type[_StubS3], max_attempts: int = 2) -> S3Store:
    config = S3Config(bucket="b", endpoint=stub.endpoint, max_attempts=max_attempts)  # type: ignore[attr-defined]
    session = boto3.session.Session(aws_access_key_id="AKIASTUB", aws_secret_access_key=SECRET)
    return S3Store(config, session=session)


# -- config -------------------------------------------------------------------------------


def test_config_defaults_suit_any_s3_compatible_server() -> None:
    config = S3Config(bucket="fedkube")

    assert config.endpoint is None
    assert config.addressing_style == "path"
    assert config.region == "us-east-1"
    assert config.prefix == ""
    assert config.multipart_threshold == 16 * MiB
    assert config.multipart_chunksize == 16 * MiB
    assert config.max_concurrency == 8
    assert config.max_attempts == 8


def test_config_is_frozen_and_normalizes_its_prefix() -> None:
    config = S3Config(bucket="fedkube", prefix="/fedkube/ns/job")

    assert config.prefix == "fedkube/ns/job/"
    with pytest.raises(FrozenInstanceError):
        config.bucket = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bucket": ""}, "bucket is empty"),
        ({"endpoint": "minio:9000"}, "is not an http\\(s\\) URL; write it like"),
        ({"endpoint": "http://user:pw@minio:9000"}, "endpoint embeds credentials; remove them"),
        ({"multipart_chunksize": MiB}, "multipart_chunksize=1048576 is below S3's minimum"),
        ({"multipart_threshold": 0}, "multipart_threshold=0 must be positive"),
        ({"max_attempts": 0}, "max_attempts=0 must be at least 1"),
        ({"max_concurrency": 0}, "max_concurrency=0 must be at least 1"),
        ({"read_timeout": 0}, "read_timeout=0 must be positive seconds"),
        ({"addressing_style": "dns"}, "addressing_style 'dns' is not one of"),
        ({"prefix": "../other"}, "store prefix '../other' is not a valid key path"),
    ],
)
def test_an_invalid_config_names_the_field_and_the_fix(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        S3Config(**{"bucket": "fedkube", **fields})  # type: ignore[arg-type]


def test_an_endpoint_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(StoreError) as info:
        S3Config(bucket="b", endpoint="http://admin:hunter2secret@minio:9000")

    assert "hunter2secret" not in str(info.value)


def test_repr_shows_where_not_who() -> None:
    session = boto3.session.Session(aws_access_key_id="AKIAREPR", aws_secret_access_key=SECRET)
    store = S3Store(S3Config(bucket="b", endpoint="http://minio:9000", prefix="p"), session=session)

    assert repr(store) == "S3Store(endpoint='http://minio:9000', bucket='b', prefix='p/')"
    assert store.uri("rounds/000001/round.json") == "s3://b/p/rounds/000001/round.json"


# -- server failures ------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["ServiceUnavailable", "SlowDown", "InternalError"])
def test_server_errors_are_retried_then_store_unavailable(stub: type[_StubS3], code: str) -> None:
    stub.status = 500 if code == "InternalError" else 503
    stub.code = code
    store = _store(stub, max_attempts=2)

    with pytest.raises(StoreUnavailable, match=f"kept failing after 2 attempts \\({code}") as info:
        store.get_bytes("job.json")

    assert stub.requests == ["GET", "GET"]
    assert info.value.__cause__ is not None
    assert SECRET not in str(info.value)


def test_a_failing_put_is_store_unavailable_too(stub: type[_StubS3]) -> None:
    stub.status, stub.code = 503, "ServiceUnavailable"

    with pytest.raises(StoreUnavailable):
        _store(stub).put_bytes("rounds/000001/round.json", b"{}", if_absent=True)

    assert stub.requests == ["PUT", "PUT"]


def test_access_denied_is_a_store_error_naming_the_credentials_to_check(
    stub: type[_StubS3],
) -> None:
    stub.status, stub.code = 403, "AccessDenied"

    with pytest.raises(StoreError, match="access denied \\(AccessDenied\\); check the credentials"):
        _store(stub).get_bytes("job.json")

    assert stub.requests == ["GET"]  # not retried: it will not get better


@pytest.mark.parametrize(
    ("server", "hidden"),
    [("AmazonS3", True), ("Ceph Object Gateway (squid)", True), ("", True), ("MinIO", False)],
)
def test_only_stores_that_hide_missing_keys_have_their_403_read_as_missing(
    server: str, hidden: bool
) -> None:
    response = {
        "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
        "ResponseMetadata": {"HTTPStatusCode": 403, "HTTPHeaders": {"server": server}},
    }
    error = botocore.exceptions.ClientError(response, "GetObject")  # type: ignore[arg-type]

    assert may_hide_absence(error) is hidden


def test_a_store_that_hides_missing_keys_behind_403_reads_them_as_missing_where_readable(
    stub: type[_StubS3],
) -> None:
    # The stub answers like AWS to a reader without ListBucket: 403 AccessDenied for all.
    stub.status, stub.code = 403, "AccessDenied"
    config = S3Config(
        bucket="b",
        endpoint=stub.endpoint,  # type: ignore[attr-defined]
        max_attempts=1,
        denied_is_missing=("rounds/??????/round.json",),
    )
    session = boto3.session.Session(aws_access_key_id="AKIASTUB", aws_secret_access_key=SECRET)
    store = S3Store(config, session=session)

    assert not store.exists("rounds/000002/round.json")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("rounds/000002/round.json")
    with pytest.raises(StoreError, match="access denied") as caught:
        store.get_bytes("rounds/000002/updates/other.json")
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StoreError, match="access denied"):
        store.put_bytes("rounds/000002/round.json", b"{}")
