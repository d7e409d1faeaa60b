"""Parallel ranged download into a preallocated file, hashed in order as the parts arrive:
how the S3 store reads a large object fast without trusting a byte of it.

Why it exists: every client downloads the global model every round, so download speed sets
a round's floor. boto3's transfer manager reached a quarter of ``mc cp``'s speed on a 1 GiB
object (loopback MinIO): its parts go through one writer thread and a queue in 256 KiB
pieces, botocore's body reads copy every piece twice more, and the store then read the
whole file a second time to hash it. Here each worker reads its part into its own buffer
and writes it with ``os.pwrite`` straight at its offset, and the sha256 is taken in order
while the parts arrive.

How:

- The caller knows the size (from a HEAD) and opens the temp file; ``download`` sizes it
  (``posix_fallocate`` where the filesystem supports it: a full disk fails now, not at
  the last part) and cuts ``[0, size)`` into parts of ``part_bytes``.
- At most ``concurrency`` parts are in flight; each worker asks ``fetch(start, length)``
  for a body (the store pins it to the object's ETag, so a replaced object fails every
  later part instead of mixing versions) and copies it in ``READ_BYTES`` pieces.
- Hashing in order (``_InOrder``): the worker holding the next bytes of the object hashes
  them as it writes them (one pass; with one part in flight every byte goes this way);
  bytes that arrived ahead of their turn are read back from the page cache by the calling
  thread once every part before them is complete.
- Behind the hash, a background ``fdatasync`` every ``SYNC_BEHIND_BYTES`` starts pushing
  what is complete to disk, so the caller's ``fsync`` before its rename is short.
- A body that delivers more or fewer bytes than its range is an error: what lands in the
  file is exactly the ranges asked for, so the file is the object's size.
- A body that breaks mid-stream (``retryable``: connection reset, read timeout) is asked
  again for the bytes still missing, up to ``attempts`` reads per part; botocore retries the
  request itself.
- The first failure stops the rest: parts not started are cancelled, running ones stop at
  their next piece, and ``download`` returns (raising) only once no worker can touch the
  file descriptor any more.

Memory: one ``READ_BYTES`` buffer per worker plus one to hash from, whatever the object's
size. Time: about max(network, sha256, page-cache writes); hashlib, the socket reads and
``pwrite`` all release the GIL.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from fedcore.errors import StoreError, StoreUnavailable

SYNC_BEHIND_BYTES = 64 << 20
"""Every this many bytes written and hashed, a background ``fdatasync`` starts pushing them
to disk, so the caller's final ``fsync`` (before the rename that publishes the file) finds
little left to write instead of the whole object."""
READ_BYTES = 1 << 20
"""Bytes per read from a body and per ``pwrite`` (1 MiB): large enough that per-call costs
vanish next to copying, small enough that memory stays a few MiB per worker."""


class Body(Protocol):
    """What ``fetch`` returns: a response body read into a caller's buffer (urllib3's
    response under botocore's ``StreamingBody``: ``StreamingBody.read`` allocates and copies
    every piece two more times, which cost more CPU than the sha256)."""

    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


Fetch = Callable[[int, int], Body]
"""``fetch(start, length)``: a body holding bytes ``[start, start + length)`` of the object."""


class ShortBody(StoreUnavailable):
    """A ranged body held fewer or more bytes than its range (a truncated reply); raised
    once the part's attempts are spent, as the server's trouble, not the object's."""


def part_ranges(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each part of an object of ``size`` bytes; none for 0 bytes."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes={part_bytes} must be positive")
    return [(start, min(part_bytes, size - start)) for start in range(0, size, part_bytes)]


def download(
    fetch: Fetch,
    fd: int,
    size: int,
    *,
    part_bytes: int,
    concurrency: int,
    retryable: tuple[type[BaseException], ...] = (),
    attempts: int = 3,
) -> str:
    """Write bytes ``[0, size)`` of an object into the open file ``fd`` (from offset 0) in
    parallel ranged parts; return the hex sha256 of what was written."""
    _preallocate(fd, size)
    parts = part_ranges(size, part_bytes)
    hasher = _InOrder(fd)
    if not parts:
        return hasher.hexdigest()
    stop = threading.Event()

    def fill(start: int, length: int) -> None:
        end, progress = start + length, [start]
        for attempt in range(1, attempts + 1):
            if stop.is_set():  # another part failed: spare the request
                return
            try:
                _copy_part(fetch, fd, progress, end, stop, hasher)
                return
            except retryable:
                # Ask again for what is missing only: the bytes before are written (and
                # maybe hashed already).
                if attempt == attempts or stop.is_set() or progress[0] == end:
                    raise

    pool = ThreadPoolExecutor(max(1, min(concurrency, len(parts))), "fedkube-get")
    syncer = ThreadPoolExecutor(1, "fedkube-sync")
    syncing: Future[None] | None = None
    synced = 0
    try:
        futures: list[Future[None]] = [pool.submit(fill, s, n) for s, n in parts]
        for future, (start, length) in zip(futures, parts, strict=True):
            future.result()  # the first failure, in order, leaves the loop
            hasher.catch_up(start + length)
            if start + length - synced >= SYNC_BEHIND_BYTES and (syncing is None or syncing.done()):
                if syncing is not None:
                    syncing.result()  # a disk error surfaces here
                syncing, synced = syncer.submit(os.fdatasync, fd), start + length
        if syncing is not None:
            syncing.result()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        syncer.shutdown(wait=True)
    return hasher.hexdigest()


class _InOrder:
    """The sha256 of the file's bytes in order. The worker holding the next bytes feeds
    them as they arrive (one pass, no re-read: with one part in flight every byte goes this
    way); bytes that arrived ahead of their turn are read back from the file by
    ``catch_up`` once every part before them is complete."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._digest = hashlib.sha256()
        self._upto = 0
        """Bytes ``[0, _upto)`` are hashed."""
        self._lock = threading.Lock()
        self._buffer = bytearray(READ_BYTES)

    def offer(self, offset: int, chunk: memoryview) -> None:
        """``chunk`` was written at ``offset``: hash it now if it is next in order."""
        if offset != self._upto:  # unlocked peek; only the next bytes' holder can match
            return
        with self._lock:
            if offset == self._upto:
                self._digest.update(chunk)
                self._upto += len(chunk)

    def catch_up(self, end: int) -> None:
        """Hash the file up to ``end`` (every byte before it is written)."""
        view = memoryview(self._buffer)
        while True:
            with self._lock:
                offset = self._upto
                if offset >= end:
                    return
                want = min(len(self._buffer), end - offset)
                got = os.preadv(self._fd, [view[:want]], offset)
                if got == 0:
                    raise StoreError(f"the download file ended at byte {offset}, expected {end}")
                self._digest.update(view[:got])
                self._upto += got

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _copy_part(
    fetch: Fetch,
    fd: int,
    progress: list[int],
    end: int,
    stop: threading.Event,
    hasher: _InOrder,
) -> None:
    """Copy bytes ``[progress[0], end)`` from one ranged GET into ``fd``, advancing
    ``progress[0]`` past every byte written."""
    start = progress[0]
    buffer = memoryview(bytearray(READ_BYTES))
    body = fetch(start, end - start)
    try:
        while progress[0] < end:
            if stop.is_set():
                return
            offset = progress[0]
            got = body.readinto(buffer[: min(READ_BYTES, end - offset)])
            if not got:
                raise ShortBody(
                    f"the reply for bytes {start}-{end - 1} ended after {offset - start} of "
                    f"{end - start} bytes"
                )
            chunk = buffer[:got]
            _pwrite_all(fd, chunk, offset)
            hasher.offer(offset, chunk)
            progress[0] = offset + got
        if body.readinto(buffer[:1]):
            raise ShortBody(
                f"the reply for bytes {start}-{end - 1} held more than {end - start} bytes"
            )
    finally:
        body.close()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    view = data
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _preallocate(fd: int, size: int) -> None:
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)  # no fallocate here (some network filesystems): a sparse file


__all__ = ["READ_BYTES", "Body", "Fetch", "ShortBody", "download", "part_ranges"]
