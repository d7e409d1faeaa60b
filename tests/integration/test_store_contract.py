"""The ObjectStore contract, run against every implementation: LocalStore and S3Store on a
real MinIO. A behaviour belongs here when callers rely on it whatever the backend; what
only one store can show (multipart parts, sidecar files) is tested next to that store.

``pytest tests/integration -k local`` runs the LocalStore half without a MinIO.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedcore.errors import IntegrityError, ObjectExists, ObjectNotFound, StoreError
from fedcore.store import LocalStore, ObjectStore
from fedcore.store.base import RESERVED_SEGMENT_PREFIX, RangeReader
from fedcore.store.local import SIDECAR_PREFIX
from fedcore.store.s3 import MIN_PART_BYTES, S3Store

BIG = 2 * MIN_PART_BYTES + 12345
"""Above the S3 harness's multipart threshold: three parts of 5 MiB, the last one short."""


@dataclass
class Harness:
    """A store plus the backdoors a test needs to play a misbehaving world."""

    store: ObjectStore
    sibling: Callable[[str], ObjectStore]
    """Another store on the same backend under another prefix."""
    write_raw: Callable[[str, bytes, str | None], None]
    """Put bytes at a key behind the store's back, with the given recorded sha256 (or none)."""


def _local_harness(tmp_path: Path) -> Harness:
    root = tmp_path / "store"
    store = LocalStore(root, prefix="fedkube/ns/job-1/")

    def write_raw(key: str, data: bytes, sha: str | None) -> None:
        path = store.base / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("r+b" if path.exists() else "wb") as f:  # in place: same inode
            f.truncate(0)
            f.write(data)
        sidecar = path.with_name(SIDECAR_PREFIX + path.name)
        if sha is None:
            sidecar.unlink(missing_ok=True)
        elif not sidecar.exists():
            sidecar.write_text(f"{sha} {path.stat().st_ino}\n")

    return Harness(store, lambda prefix: LocalStore(root, prefix), write_raw)


def _s3_harness(make_s3_store: Callable[..., S3Store]) -> Harness:
    small = {"multipart_threshold": MIN_PART_BYTES, "multipart_chunksize": MIN_PART_BYTES}
    store = make_s3_store(**small)
    client = store._client  # the store's own client: same server, same credentials

    def write_raw(key: str, data: bytes, sha: str | None) -> None:
        metadata = {"sha256": sha} if sha is not None else {}
        client.put_object(
            Bucket=store.config.bucket,
            Key=store.config.prefix + key,
            Body=data,
            Metadata=metadata,
        )

    def sibling(prefix: str) -> ObjectStore:
        return make_s3_store(prefix=prefix, **small)

    return Harness(store, sibling, write_raw)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        return _local_harness(tmp_path)
    return _s3_harness(request.getfixturevalue("make_s3_store"))


@pytest.fixture
def store(harness: Harness) -> ObjectStore:
    return harness.store


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(RESERVED_SEGMENT_PREFIX) for p in folder.rglob("*"))


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (BIG // 256) + b"tail")
    return path


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"{}", bytes(range(256)) * 100],
    ids=["empty", "two-bytes", "binary"],
)
def test_bytes_read_back_are_the_bytes_written(store: ObjectStore, data: bytes) -> None:
    store.put_bytes("rounds/000001/round.json", data)

    assert store.get_bytes("rounds/000001/round.json") == data


def test_file_read_back_equals_the_file_written(
    store: ObjectStore, big_file: Path, tmp_path: Path
) -> None:
    store.put_file("final/model.safetensors", big_file)

    out = tmp_path / "download" / "nested" / "model.safetensors"
    store.get_file("final/model.safetensors", out)

    assert out.read_bytes() == big_file.read_bytes()
    assert _no_temp_files(out.parent)


def test_large_bytes_read_back_as_a_file_and_vice_versa(
    store: ObjectStore, big_file: Path, tmp_path: Path
) -> None:
    data = big_file.read_bytes()
    store.put_bytes("a.bin", data)
    store.put_file("b.bin", big_file)

    store.get_file("a.bin", tmp_path / "a.out")

    assert (tmp_path / "a.out").read_bytes() == data
    assert store.get_bytes("b.bin") == data


def test_get_file_replaces_an_existing_destination(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("k", b"new contents")
    out = tmp_path / "out.json"
    out.write_bytes(b"old contents that are longer")

    store.get_file("k", out)

    assert out.read_bytes() == b"new contents"


def test_keys_with_spaces_and_unicode_round_trip(store: ObjectStore) -> None:
    key = "clients/höspital a/ünïcode €.json"
    store.put_bytes(key, b"x")

    assert store.get_bytes(key) == b"x"
    assert store.list("clients/") == [key]


# -- overwrite and create-if-absent -------------------------------------------------------


def test_a_plain_put_replaces_the_object(store: ObjectStore) -> None:
    store.put_bytes("control/excluded.json", b"first version, longer")
    store.put_bytes("control/excluded.json", b"second")

    assert store.get_bytes("control/excluded.json") == b"second"


def test_put_if_absent_creates_a_missing_object(store: ObjectStore) -> None:
    store.put_bytes("rounds/000001/round.json", b"commit", if_absent=True)

    assert store.get_bytes("rounds/000001/round.json") == b"commit"


def test_put_bytes_if_absent_refuses_an_existing_key_and_keeps_it(store: ObjectStore) -> None:
    store.put_bytes("rounds/000001/round.json", b"first")

    with pytest.raises(ObjectExists, match=r"round\.json already exists"):
        store.put_bytes("rounds/000001/round.json", b"second", if_absent=True)

    assert store.get_bytes("rounds/000001/round.json") == b"first"


def test_put_file_if_absent_refuses_an_existing_key_and_keeps_it(
    store: ObjectStore, big_file: Path, tmp_path: Path
) -> None:
    store.put_bytes("final/model.safetensors", b"first")
    small = tmp_path / "small.bin"
    small.write_bytes(b"second")

    for source in (small, big_file):
        with pytest.raises(ObjectExists):
            store.put_file("final/model.safetensors", source, if_absent=True)

    assert store.get_bytes("final/model.safetensors") == b"first"


@pytest.mark.parametrize("size", [100, BIG], ids=["small", "multipart"])
def test_concurrent_creators_of_one_key_have_exactly_one_winner(
    store: ObjectStore, size: int
) -> None:
    writers = 6
    payloads = [bytes([i]) * size for i in range(writers)]
    outcomes: list[str] = [""] * writers
    start = threading.Barrier(writers)

    def create(i: int) -> None:
        start.wait()
        try:
            store.put_bytes("rounds/000007/round.json", payloads[i], if_absent=True)
            outcomes[i] = "created"
        except ObjectExists:
            outcomes[i] = "exists"

    threads = [threading.Thread(target=create, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outcomes) == ["created"] + ["exists"] * (writers - 1)
    winner = outcomes.index("created")
    assert store.get_bytes("rounds/000007/round.json") == payloads[winner]


def test_readers_see_whole_versions_while_a_key_is_rewritten(store: ObjectStore) -> None:
    versions = [b"a" * 10, b"b" * 3000, b"c" * 70_000]
    store.put_bytes("control/excluded.json", versions[0])
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def rewrite() -> None:
        try:
            for i in range(60):
                store.put_bytes("control/excluded.json", versions[i % len(versions)])
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                seen.add(store.get_bytes("control/excluded.json"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=rewrite)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert seen <= set(versions)


# -- missing objects ----------------------------------------------------------------------


def test_reading_a_missing_key_raises_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match=r"nothing/here\.json does not exist"):
        store.get_bytes("nothing/here.json")
    with pytest.raises(ObjectNotFound):
        store.get_file("nothing/here.json", tmp_path / "out")


def test_get_file_of_a_missing_key_leaves_the_destination_alone(
    store: ObjectStore, tmp_path: Path
) -> None:
    out = tmp_path / "dest" / "model.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"previous")

    with pytest.raises(ObjectNotFound):
        store.get_file("missing", out)

    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]


def test_exists_tells_stored_from_missing_keys(store: ObjectStore) -> None:
    store.put_bytes("rounds/000001/updates/a.json", b"{}")

    assert store.exists("rounds/000001/updates/a.json")
    assert not store.exists("rounds/000001/updates/b.json")
    assert not store.exists("rounds/000001/updates")  # a "folder" is not an object


@pytest.mark.parametrize("length", [0, 1234, BIG], ids=["empty", "small", "multipart"])
def test_size_is_the_stored_length_read_from_metadata(store: ObjectStore, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + b"x" * (length % 256)
    store.put_bytes("rounds/000001/updates/a.safetensors", data)

    assert store.size("rounds/000001/updates/a.safetensors") == length


@pytest.mark.parametrize(
    ("start", "length"), [(0, 8), (1000, 234), (0, 1234), (1234, 0), (1233, 1)]
)
def test_a_range_read_returns_exactly_those_bytes(
    store: ObjectStore, start: int, length: int
) -> None:
    data = bytes(range(256)) * 4 + b"y" * 210
    store.put_bytes("rounds/000001/global.safetensors", data)
    assert isinstance(store, RangeReader)

    got = store.get_range("rounds/000001/global.safetensors", start, length)

    assert got == data[start : start + length]


@pytest.mark.parametrize(("start", "length"), [(1200, 35), (1235, 1), (-1, 2)])
def test_a_range_outside_the_object_is_an_error_not_a_short_read(
    store: ObjectStore, start: int, length: int
) -> None:
    store.put_bytes("rounds/000001/global.safetensors", b"z" * 1234)
    assert isinstance(store, RangeReader)

    with pytest.raises(StoreError):
        store.get_range("rounds/000001/global.safetensors", start, length)


def test_a_range_of_a_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    assert isinstance(store, RangeReader)

    with pytest.raises(ObjectNotFound):
        store.get_range("rounds/000009/global.safetensors", 0, 8)


def test_size_of_a_replaced_object_is_its_new_length(store: ObjectStore) -> None:
    store.put_bytes("control/excluded.json", b"a much longer first version")
    store.put_bytes("control/excluded.json", b"short")

    assert store.size("control/excluded.json") == 5


def test_size_of_a_missing_key_or_a_folder_raises_object_not_found(store: ObjectStore) -> None:
    store.put_bytes("rounds/000001/updates/a.json", b"{}")

    with pytest.raises(ObjectNotFound, match=r"b\.json does not exist"):
        store.size("rounds/000001/updates/b.json")
    with pytest.raises(ObjectNotFound):
        store.size("rounds/000001/updates")  # a "folder" is not an object


def test_size_reads_no_byte_of_the_object(harness: Harness) -> None:
    # Bytes that no longer match their recorded digest cannot be read, but their size is
    # metadata: a caller learns it without downloading (and verifying) anything.
    harness.write_raw("rounds/000001/updates/a.safetensors", b"x" * 4096, "0" * 64)

    assert harness.store.size("rounds/000001/updates/a.safetensors") == 4096
    with pytest.raises(IntegrityError):
        harness.store.get_bytes("rounds/000001/updates/a.safetensors")


def test_put_file_of_a_missing_source_raises_file_not_found(
    store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("k", tmp_path / "no-such-file")

    assert not store.exists("k")


# -- delete ---------------------------------------------------------------------------------


def test_delete_removes_the_object_and_frees_the_key(store: ObjectStore) -> None:
    store.put_bytes("rounds/000001/global.safetensors", b"w", if_absent=True)

    store.delete("rounds/000001/global.safetensors")

    assert not store.exists("rounds/000001/global.safetensors")
    assert store.list() == []
    store.put_bytes("rounds/000001/global.safetensors", b"w2", if_absent=True)
    assert store.get_bytes("rounds/000001/global.safetensors") == b"w2"


def test_deleting_a_missing_key_is_not_an_error(store: ObjectStore) -> None:
    store.delete("never/written.json")
    store.delete("never/written.json")

    assert not store.exists("never/written.json")


# -- list ---------------------------------------------------------------------------------


def test_list_returns_every_key_below_a_prefix_sorted_and_relative(store: ObjectStore) -> None:
    keys = [
        "rounds/000002/round.json",
        "rounds/000001/updates/b.safetensors",
        "rounds/000001/updates/a.safetensors",
        "rounds/000001/round.json",
        "job.json",
        "roundsabc",
    ]
    for key in keys:
        store.put_bytes(key, key.encode())

    assert store.list() == sorted(keys)
    assert store.list("rounds/") == sorted(k for k in keys if k.startswith("rounds/"))
    assert store.list("rounds/000001/updates/") == [
        "rounds/000001/updates/a.safetensors",
        "rounds/000001/updates/b.safetensors",
    ]
    assert store.list("rounds/000001/updates/a") == ["rounds/000001/updates/a.safetensors"]
    assert store.list("rounds") == sorted(k for k in keys if k.startswith("rounds"))
    assert store.list("final/") == []


def test_list_shows_objects_only_never_digests_or_temp_files(store: ObjectStore) -> None:
    store.put_bytes("a/x.json", b"1")
    store.put_bytes("a/x.json", b"2")
    store.put_bytes("a/y.json", b"3", if_absent=True)
    with pytest.raises(ObjectExists):
        store.put_bytes("a/y.json", b"4", if_absent=True)
    store.put_bytes("a/z.json", b"5")
    store.delete("a/z.json")

    assert store.list() == ["a/x.json", "a/y.json"]


def test_list_does_not_see_stores_under_other_prefixes(harness: Harness) -> None:
    harness.store.put_bytes("job.json", b"mine")
    other = harness.sibling("fedkube/ns/job-10/")
    other.put_bytes("job.json", b"theirs")

    assert harness.store.list() == ["job.json"]
    assert harness.store.get_bytes("job.json") == b"mine"
    assert other.list() == ["job.json"]


# -- integrity ------------------------------------------------------------------------------


def test_bytes_changed_behind_the_store_raise_integrity_error(harness: Harness) -> None:
    harness.store.put_bytes("rounds/000001/global.safetensors", b"good weights")
    harness.write_raw("rounds/000001/global.safetensors", b"evil weights", _sha(b"good weights"))

    with pytest.raises(IntegrityError, match=r"global\.safetensors is corrupt") as info:
        harness.store.get_bytes("rounds/000001/global.safetensors")

    assert _sha(b"good weights") in str(info.value)
    assert _sha(b"evil weights") in str(info.value)


def test_get_file_of_a_corrupt_object_leaves_the_destination_alone(
    harness: Harness, big_file: Path, tmp_path: Path
) -> None:
    harness.store.put_file("final/model.safetensors", big_file)
    good = _sha(big_file.read_bytes())
    harness.write_raw("final/model.safetensors", big_file.read_bytes()[:-1] + b"X", good)
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"previous")

    with pytest.raises(IntegrityError):
        harness.store.get_file("final/model.safetensors", out)

    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]


def test_an_object_without_a_recorded_digest_cannot_be_read(harness: Harness) -> None:
    harness.write_raw("job.json", b"{}", None)

    with pytest.raises(IntegrityError, match="no recorded sha256"):
        harness.store.get_bytes("job.json")


# -- keys and uris --------------------------------------------------------------------------

BAD_KEYS = {
    "empty": "",
    "absolute": "/job.json",
    "double slash": "rounds//round.json",
    "trailing slash": "rounds/",
    "dot-dot": "../other-job/job.json",
    "inner dot-dot": "rounds/../../x",
    "dot": "rounds/./round.json",
    "backslash": "rounds\\round.json",
    "control character": "job\n.json",
    "reserved name": "rounds/.fedkube-sha256.round.json",
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_every_operation_rejects_an_invalid_key_with_a_store_error(
    store: ObjectStore, key: str, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"x")
    calls: list[Callable[[], Any]] = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, source),
        lambda: store.get_bytes(key),
        lambda: store.get_file(key, tmp_path / "out"),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.delete(key),
        lambda: store.uri(key),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="key"):
            call()

    assert store.list() == []


def test_list_rejects_a_prefix_that_escapes_the_store(store: ObjectStore) -> None:
    with pytest.raises(StoreError, match=r"'\.\.'"):
        store.list("../")


def test_uri_names_the_backend_and_the_full_key(harness: Harness) -> None:
    store = harness.store
    uri = store.uri("rounds/000001/round.json")

    if isinstance(store, LocalStore):
        assert uri == (store.base / "rounds/000001/round.json").as_uri()
        assert uri.startswith("file:///")
        assert "/fedkube/ns/job-1/rounds/" in uri
    else:
        assert isinstance(store, S3Store)
        assert uri == f"s3://{store.config.bucket}/{store.config.prefix}rounds/000001/round.json"
