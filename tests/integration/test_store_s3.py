"""What only the S3 store can show, against a real MinIO: parallel multipart transfers,
conditional completion of multipart uploads, error mapping of a real server, and that
credentials never leak into logs, errors or reprs."""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

from fedcore.errors import (
    FedcoreError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from fedcore.spec import StorageSpec
from fedcore.store import open_store
from fedcore.store.s3 import MIN_PART_BYTES, S3Config, S3Store
from tests.fixtures.minio import MinioServer, free_port

pytestmark = pytest.mark.integration

MakeS3Store = Callable[..., S3Store]
SMALL_PARTS = {"multipart_threshold": MIN_PART_BYTES, "multipart_chunksize": MIN_PART_BYTES}
BIG = 2 * MIN_PART_BYTES + 1000
"""Three parts with SMALL_PARTS."""


@pytest.fixture
def store(make_s3_store: MakeS3Store) -> S3Store:
    return make_s3_store(**SMALL_PARTS)


@pytest.fixture
def raw(minio: MinioServer) -> Any:
    return minio.client()


def _head(raw: Any, store: S3Store, key: str) -> dict[str, Any]:
    full = store.config.prefix + key
    reply: dict[str, Any] = raw.head_object(Bucket=store.config.bucket, Key=full)
    return reply


def _parts(etag: str) -> int:
    """Parts of a multipart object (its ETag ends in -N); 1 for a single PUT."""
    tail = etag.strip('"').rpartition("-")[2]
    return int(tail) if "-" in etag else 1


# -- multipart ----------------------------------------------------------------------------


@pytest.mark.parametrize("if_absent", [False, True], ids=["overwrite", "create-if-absent"])
def test_objects_above_the_threshold_go_up_in_parallel_parts(
    store: S3Store, raw: Any, tmp_path: Path, if_absent: bool
) -> None:
    data = bytes(range(256)) * (BIG // 256)
    source = tmp_path / "model.safetensors"
    source.write_bytes(data)

    store.put_file("file.bin", source, if_absent=if_absent)
    store.put_bytes("bytes.bin", data, if_absent=if_absent)

    for key in ("file.bin", "bytes.bin"):
        head = _head(raw, store, key)
        assert _parts(head["ETag"]) == 3
        assert head["Metadata"] == {"sha256": hashlib.sha256(data).hexdigest()}
        assert store.get_bytes(key) == data


def test_objects_below_the_threshold_go_up_in_one_request(store: S3Store, raw: Any) -> None:
    store.put_bytes("small.json", b"x" * (MIN_PART_BYTES - 1))

    assert _parts(_head(raw, store, "small.json")["ETag"]) == 1


def test_the_multipart_threshold_comes_from_the_config(
    make_s3_store: MakeS3Store, raw: Any
) -> None:
    default = make_s3_store()  # 16 MiB threshold

    default.put_bytes("k", b"x" * BIG)

    assert _parts(_head(raw, default, "k")["ETag"]) == 1


def test_create_if_absent_multipart_is_decided_by_the_completion(
    store: S3Store, raw: Any, minio: MinioServer
) -> None:
    # Another writer commits the key after our existence check passed, while our parts
    # upload: only the conditional CompleteMultipartUpload can notice.
    full = store.config.prefix + "rounds/000003/round.json"

    def rival_commits(**_: Any) -> None:
        raw.put_object(Bucket=minio.bucket, Key=full, Body=b"rival", Metadata={"sha256": "0" * 64})

    store._client.meta.events.register("after-call.s3.CreateMultipartUpload", rival_commits)

    with pytest.raises(ObjectExists, match="already exists"):
        store.put_bytes("rounds/000003/round.json", b"m" * BIG, if_absent=True)

    assert raw.get_object(Bucket=minio.bucket, Key=full)["Body"].read() == b"rival"
    pending = raw.list_multipart_uploads(Bucket=minio.bucket, Prefix=store.config.prefix)
    assert pending.get("Uploads", []) == []  # our upload was aborted, no parts left behind


def test_get_file_reads_again_when_the_object_is_replaced_mid_download(
    store: S3Store, raw: Any, minio: MinioServer, tmp_path: Path
) -> None:
    old, new = b"o" * BIG, b"n" * (BIG + 7)
    store.put_bytes("global.safetensors", old)
    fired: list[bool] = []

    def replace_once(**_: Any) -> None:
        if not fired:
            fired.append(True)
            S3Store(store.config, session=minio.session()).put_bytes("global.safetensors", new)

    store._client.meta.events.register("after-call.s3.HeadObject", replace_once)

    store.get_file("global.safetensors", tmp_path / "out")

    assert fired == [True]
    assert (tmp_path / "out").read_bytes() == new


def test_a_multipart_object_with_a_tampered_digest_is_rejected(
    store: S3Store, raw: Any, minio: MinioServer, tmp_path: Path
) -> None:
    store.put_bytes("final/model.safetensors", b"w" * BIG)
    full = store.config.prefix + "final/model.safetensors"
    raw.copy_object(
        Bucket=minio.bucket,
        Key=full,
        CopySource={"Bucket": minio.bucket, "Key": full},
        Metadata={"sha256": hashlib.sha256(b"other").hexdigest()},
        MetadataDirective="REPLACE",
    )

    with pytest.raises(IntegrityError, match="is corrupt"):
        store.get_file("final/model.safetensors", tmp_path / "model")
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.get_bytes("final/model.safetensors")
    assert not (tmp_path / "model").exists()


def test_list_follows_pagination_past_one_thousand_keys(store: S3Store) -> None:
    keys = [f"rounds/000001/updates/client-{i:04d}.json" for i in range(1003)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"{}"), keys))

    assert store.list("rounds/000001/updates/") == keys


def test_a_key_longer_than_s3_allows_is_refused_before_any_request(store: S3Store) -> None:
    with pytest.raises(StoreError, match="longer than S3's 1024 bytes"):
        store.put_bytes("x" * 1100, b"")


# -- errors from a real server ------------------------------------------------------------


def test_every_operation_on_a_missing_bucket_names_the_bucket_and_the_fix(
    make_s3_store: MakeS3Store, tmp_path: Path
) -> None:
    store = make_s3_store(bucket="no-such-bucket")
    source = tmp_path / "src"
    source.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: store.put_bytes("k", b"x"),
        lambda: store.put_bytes("k", b"x", if_absent=True),
        lambda: store.put_file("k", source),
        lambda: store.get_bytes("k"),
        lambda: store.get_file("k", tmp_path / "out"),
        lambda: store.exists("k"),
        lambda: store.list(),
        lambda: store.delete("k"),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist") as info:
            call()
        assert type(info.value) is StoreError
        assert "spec.storage.bucket" in str(info.value)


def test_an_unreachable_server_is_store_unavailable_with_its_cause(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    session = boto3.session.Session(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s")
    store = S3Store(S3Config(bucket="b", endpoint=dead, max_attempts=2), session=session)

    for call in (
        lambda: store.get_bytes("k"),
        lambda: store.put_bytes("k", b"x", if_absent=True),
        lambda: store.list(),
        lambda: store.exists("k"),
        lambda: store.get_file("k", tmp_path / "out"),
    ):
        with pytest.raises(StoreUnavailable, match="unreachable after 2 attempts") as info:
            call()
        assert info.value.__cause__ is not None


def test_wrong_credentials_are_an_access_error_not_a_missing_object(
    minio: MinioServer, raw: Any
) -> None:
    session = boto3.session.Session(
        aws_access_key_id=minio.access_key, aws_secret_access_key="not-the-secret"
    )
    store = S3Store(S3Config(bucket=minio.bucket, endpoint=minio.endpoint), session=session)

    with pytest.raises(StoreError, match="access denied") as info:
        store.get_bytes("job.json")

    assert not isinstance(info.value, ObjectNotFound)
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value)


def test_open_store_builds_an_s3_store_from_the_spec_and_the_environment(
    minio: MinioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in minio.env().items():
        monkeypatch.setenv(name, value)
    spec = StorageSpec(endpoint=minio.endpoint, bucket=minio.bucket)

    store = open_store(spec, "fedkube/ns/open-store-job/")
    store.put_bytes("job.json", b"{}", if_absent=True)

    assert isinstance(store, S3Store)
    assert store.uri("job.json") == f"s3://{minio.bucket}/fedkube/ns/open-store-job/job.json"
    assert store.get_bytes("job.json") == b"{}"


# -- credentials ----------------------------------------------------------------------------


def test_credentials_never_appear_in_logs_errors_or_reprs(
    minio: MinioServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, botocore's wire logging included
    good = S3Store(
        S3Config(
            bucket=minio.bucket,
            endpoint=minio.endpoint,
            prefix="creds/",
            multipart_threshold=MIN_PART_BYTES,
            multipart_chunksize=MIN_PART_BYTES,
        ),
        session=minio.session(),
    )
    wrong_secret = "wr0ng-Secret-Value-123456"
    bad = S3Store(
        S3Config(bucket=minio.bucket, endpoint=minio.endpoint, max_attempts=1),
        session=boto3.session.Session(
            aws_access_key_id="AKIAWRONGKEY00000000", aws_secret_access_key=wrong_secret
        ),
    )
    missing_bucket = S3Store(
        S3Config(bucket="absent-bucket", endpoint=minio.endpoint), session=minio.session()
    )
    errors: list[BaseException] = []

    def collect(call: Callable[[], object]) -> None:
        try:
            call()
        except FedcoreError as e:
            errors.append(e)

    good.put_bytes("a.bin", b"a" * BIG)
    good.get_file("a.bin", tmp_path / "a.bin")
    good.list()
    collect(lambda: good.put_bytes("a.bin", b"b", if_absent=True))
    collect(lambda: good.put_bytes("a.bin", b"b" * BIG, if_absent=True))
    collect(lambda: good.get_bytes("missing"))
    collect(lambda: bad.get_bytes("a.bin"))
    collect(lambda: bad.put_bytes("b.bin", b"x"))
    collect(lambda: missing_bucket.list())

    assert len(errors) == 6
    texts = [caplog.text, repr(good), repr(good.config), repr(bad), repr(minio)]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    for secret in (minio.secret_key, wrong_secret):
        assert all(secret not in text for text in texts)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("fedcore")]
    ours += [str(e) for e in errors] + [repr(good), repr(bad)]
    for access_key in (minio.access_key, "AKIAWRONGKEY00000000"):
        assert all(access_key not in text for text in ours)
