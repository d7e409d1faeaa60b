"""``S3Store.get_file``'s parallel ranged download against a real MinIO: every size from
empty to a part and one byte comes back whole, each part is one ranged GET pinned to the
object's ETag, an object replaced mid-download is read again (never mixed), and what fails
leaves no file behind. The download logic alone is in tests/unit/test_store_ranged.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from fedcore import layout
from fedcore.errors import IntegrityError, StoreUnavailable, UpdateRejected
from fedcore.intake import fetch_update
from fedcore.store.s3 import MIN_PART_BYTES, S3Store
from tests.fixtures.minio import MinioServer
from tests.fixtures.stores import MakeS3Store

pytestmark = pytest.mark.integration

PART = MIN_PART_BYTES
SMALL_PARTS = {"multipart_threshold": PART, "multipart_chunksize": PART}


@pytest.fixture
def store(make_s3_store: MakeS3Store) -> S3Store:
    return make_s3_store(**SMALL_PARTS)


def _record_gets(store: S3Store) -> list[dict[str, Any]]:
    """The parameters of every GetObject the store sends from now on."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    store._client.meta.events.register("provide-client-params.s3.GetObject", record)
    return seen


def _data(size: int) -> bytes:
    return (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]


@pytest.mark.parametrize(
    ("size", "ranges"),
    [
        pytest.param(0, [], id="empty: no GET at all"),
        pytest.param(1, ["bytes=0-0"], id="one byte"),
        pytest.param(PART, [f"bytes=0-{PART - 1}"], id="exactly a part"),
        pytest.param(
            PART + 1, [f"bytes=0-{PART - 1}", f"bytes={PART}-{PART}"], id="a part and one byte"
        ),
    ],
)
def test_every_size_comes_back_whole_in_one_ranged_get_per_part(
    store: S3Store, tmp_path: Path, size: int, ranges: list[str]
) -> None:
    data = _data(size)
    store.put_bytes("global.safetensors", data)
    etag = store._client.head_object(
        Bucket=store.config.bucket, Key=store.config.prefix + "global.safetensors"
    )["ETag"]
    gets = _record_gets(store)

    store.get_file("global.safetensors", tmp_path / "model")

    assert (tmp_path / "model").read_bytes() == data
    assert sorted(g["Range"] for g in gets) == sorted(ranges)
    assert all(g["IfMatch"] == etag for g in gets)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_object_replaced_between_parts_is_read_again_never_mixed(
    make_s3_store: MakeS3Store, minio: MinioServer, tmp_path: Path
) -> None:
    store = make_s3_store(**SMALL_PARTS, max_concurrency=1)  # parts one after the other
    old, new = b"o" * (3 * PART), b"n" * (2 * PART + 9)
    store.put_bytes("global.safetensors", old)
    writer = S3Store(store.config, session=minio.session())
    gets = _record_gets(store)
    fired: list[bool] = []

    def replace_after_first_part(**_: Any) -> None:
        if not fired:
            fired.append(True)
            writer.put_bytes("global.safetensors", new)

    store._client.meta.events.register("after-call.s3.GetObject", replace_after_first_part)

    store.get_file("global.safetensors", tmp_path / "model")

    assert fired == [True]
    assert (tmp_path / "model").read_bytes() == new
    # Parts of the old object after the first were refused (412), then the new one was read
    # whole, every part pinned to the new ETag.
    old_etag = gets[0]["IfMatch"]
    refused = [g for g in gets[1:] if g["IfMatch"] == old_etag]
    again = [g for g in gets[1:] if g["IfMatch"] != old_etag]
    assert 1 <= len(refused) <= 2
    assert sorted(g["Range"] for g in again) == [
        f"bytes=0-{PART - 1}",
        f"bytes={2 * PART}-{2 * PART + 8}",
        f"bytes={PART}-{2 * PART - 1}",
    ]


def test_an_object_rewritten_in_a_loop_is_unavailable_and_leaves_no_file(
    store: S3Store, minio: MinioServer, tmp_path: Path
) -> None:
    store.put_bytes("global.safetensors", b"0" * (PART + 1))
    writer = S3Store(store.config, session=minio.session())
    version = [0]

    def rewrite(**_: Any) -> None:
        version[0] += 1
        writer.put_bytes("global.safetensors", str(version[0] % 10).encode() * (PART + 1))

    store._client.meta.events.register("after-call.s3.HeadObject", rewrite)

    with pytest.raises(StoreUnavailable, match="replaced 4 times while being downloaded"):
        store.get_file("global.safetensors", tmp_path / "model")

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [1, PART + 1], ids=["one request", "parts"])
def test_bytes_that_do_not_match_their_digest_leave_no_file(
    store: S3Store, minio: MinioServer, tmp_path: Path, size: int
) -> None:
    store.put_bytes("update.safetensors", _data(size))
    full = store.config.prefix + "update.safetensors"
    raw = minio.client()
    raw.copy_object(
        Bucket=minio.bucket,
        Key=full,
        CopySource={"Bucket": minio.bucket, "Key": full},
        Metadata={"sha256": hashlib.sha256(b"something else").hexdigest()},
        MetadataDirective="REPLACE",
    )
    (tmp_path / "model").write_bytes(b"previous")

    with pytest.raises(IntegrityError, match="is corrupt"):
        store.get_file("update.safetensors", tmp_path / "model")

    assert (tmp_path / "model").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_update_over_the_size_cap_is_refused_before_any_byte_is_read(
    store: S3Store, tmp_path: Path
) -> None:
    store.put_bytes(layout.manifest_key(1, "hospital-a"), b"{}")
    store.put_bytes(layout.update_key(1, "hospital-a"), _data(PART + 1))
    gets = _record_gets(store)

    with pytest.raises(UpdateRejected) as caught:
        fetch_update(store, 1, "hospital-a", tmp_path / "u", max_update_bytes=PART)

    assert caught.value.reason == "too-large"
    assert gets == []
    assert list(tmp_path.iterdir()) == []
