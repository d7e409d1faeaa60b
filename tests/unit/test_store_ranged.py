"""The parallel ranged download on its own (``fedcore.store.ranged``): parts cover the
object exactly, the sha256 is of what was written, broken bodies are asked for again, and a
failure stops every worker before ``download`` returns. Bodies come from bytes in memory;
the S3 store's use of it against a real MinIO is in tests/integration/test_store_s3_download.py."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

from fedcore.errors import StoreUnavailable
from fedcore.store.ranged import ShortBody, download, part_ranges


class _Body(io.BytesIO):
    pass


def _fetcher(data: bytes, calls: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    lock = threading.Lock()

    def fetch(start: int, length: int) -> _Body:
        if calls is not None:
            with lock:
                calls.append((start, length))
        return _Body(data[start : start + length])

    return fetch


def _download_to(tmp_path: Path, fetch, size: int, **kw: object) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        sha = download(fetch, fd, size, **{"part_bytes": 4, "concurrency": 3, **kw})  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return sha, path.read_bytes()


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param(0, [], id="empty object: no request"),
        pytest.param(1, [(0, 1)], id="one byte: one part"),
        pytest.param(4, [(0, 4)], id="exactly one part"),
        pytest.param(5, [(0, 4), (4, 1)], id="one part and one byte"),
        pytest.param(12, [(0, 4), (4, 4), (8, 4)], id="whole parts"),
    ],
)
def test_parts_cover_the_object_exactly_once(size: int, expected: list[tuple[int, int]]) -> None:
    assert part_ranges(size, 4) == expected


@pytest.mark.parametrize("size", [0, 1, 4, 5, 13, 64])
def test_the_file_and_its_sha256_are_the_objects(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    calls: list[tuple[int, int]] = []

    sha, written = _download_to(tmp_path, _fetcher(data, calls), size)

    assert written == data
    assert sha == hashlib.sha256(data).hexdigest()
    assert sorted(calls) == part_ranges(size, 4)


def test_a_body_that_breaks_mid_stream_is_asked_for_again(tmp_path: Path) -> None:
    data = os.urandom(20)
    broken: list[int] = []

    class Breaking(_Body):
        def readinto(self, buffer: object) -> int:
            raise ConnectionResetError("peer reset")

    def fetch(start: int, length: int) -> _Body:
        if start == 8 and not broken:
            broken.append(start)
            return Breaking(b"")
        return _Body(data[start : start + length])

    sha, written = _download_to(tmp_path, fetch, 20, retryable=(ConnectionError,))

    assert broken == [8]
    assert written == data
    assert sha == hashlib.sha256(data).hexdigest()


def test_a_body_that_ends_early_is_resumed_where_it_stopped(tmp_path: Path) -> None:
    data = os.urandom(12)
    calls: list[tuple[int, int]] = []

    def fetch(start: int, length: int) -> _Body:
        calls.append((start, length))
        if (start, length) == (4, 4):
            return _Body(data[4:6])  # two of four bytes, then the connection closes
        return _Body(data[start : start + length])

    sha, written = _download_to(tmp_path, fetch, 12, retryable=(ShortBody,), concurrency=1)

    assert (6, 2) in calls  # only the missing bytes asked for again
    assert written == data
    assert sha == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("served", "match"),
    [
        pytest.param(lambda d: d[:-1], "ended after 0 of 1 bytes", id="short body"),
        pytest.param(lambda d: d + b"x", "held more than 4 bytes", id="long body"),
    ],
)
def test_a_body_that_is_not_its_range_fails_after_its_attempts(
    tmp_path: Path, served, match: str
) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(12)
    attempts: list[int] = []

    def fetch(start: int, length: int) -> _Body:
        if 4 <= start < 8:
            attempts.append(start)
            return _Body(served(data[start : start + length]))
        return _Body(data[start : start + length])

    with pytest.raises(ShortBody, match=match) as raised:
        _download_to(tmp_path, fetch, 12, retryable=(ShortBody,), attempts=3)

    assert isinstance(raised.value, StoreUnavailable)
    # A short body is resumed for its missing byte; a long one is not asked for again.
    assert len(attempts) == (3 if "ended" in match else 1)


def test_a_failure_stops_the_workers_before_download_returns(tmp_path: Path) -> None:
    data = os.urandom(4000)
    running = threading.Semaphore(0)
    opened: list[int] = []
    closed: list[int] = []

    class Slow(_Body):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            running.release()
            return super().readinto(buffer[:1])  # one byte per read: still running

        def close(self) -> None:
            closed.append(1)
            super().close()

    def fetch(start: int, length: int) -> _Body:
        if start == 0:
            running.acquire()  # another part has started reading
            raise OSError("part 0 failed")
        opened.append(start)
        return Slow(data[start : start + length])

    with pytest.raises(OSError, match="part 0 failed"):
        _download_to(tmp_path, fetch, 4000, part_bytes=100, concurrency=3)

    # Parts not started were cancelled; every started one was closed before the return.
    assert 1 <= len(opened) < 39
    assert len(closed) == len(opened)


def test_a_body_with_only_read_is_read_into_the_buffer_through_the_fallback() -> None:
    import io

    from fedcore.store.s3 import _ReadInto

    body = _ReadInto(io.BytesIO(b"abcdef"))
    buffer = memoryview(bytearray(4))

    assert body.readinto(buffer) == 4
    assert bytes(buffer) == b"abcd"
    assert body.readinto(buffer) == 2
    assert bytes(buffer[:2]) == b"ef"
    assert body.readinto(buffer) == 0
