"""The storage contract every part of fedkube talks through, and the rules both stores share.

The store is the only channel between the aggregator, the clients and the operator, so the
two implementations (a directory on a laptop, any S3-compatible service in a cluster) must
behave the same down to their errors. What they share lives here: the ``ObjectStore``
protocol, key validation (keys written through one store must be valid in the other) and
sha256 streaming helpers.

Keys are '/'-separated paths relative to the store's prefix (a job's prefix). A valid key
is not empty, does not start with '/', has no empty, ``.`` or ``..`` segment, no backslash
or control character, and no segment starting with ``.fedkube-``: that name space is the
store's own (temporary files and digests of ``LocalStore``), so it can never collide with
an object.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from fedcore.errors import StoreError

RESERVED_SEGMENT_PREFIX = ".fedkube-"
"""Key segments starting with this are the store's own files and never objects."""

CHUNK_BYTES = 1 << 20
"""Read size (1 MiB) when streaming files through sha256: large enough to keep the hash at
memory speed, small enough not to matter next to a model."""

_FORBIDDEN_CHARS = frozenset(chr(c) for c in range(32)) | {"\x7f", "\\"}


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store with create-if-absent writes and verified reads.

    Every object carries the sha256 of its bytes, recorded when written; every read checks
    it and raises ``IntegrityError`` on a mismatch. Writes are atomic: a reader sees the old
    object or the new one, never a mix or a prefix.
    """

    def uri(self, key: str) -> str:
        """Where the object lives, for people and records: ``s3://bucket/prefix/key`` or
        ``file:///abs/path/key``."""
        ...

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store ``data`` at ``key``; with ``if_absent`` raise ``ObjectExists`` if the key
        is taken (atomic: of concurrent writers exactly one succeeds)."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ``ObjectNotFound``, ``IntegrityError`` on a sha256 mismatch."""
        ...

    def put_file(self, key: str, path: Path, *, if_absent: bool = False) -> None:
        """Store the contents of the file at ``path``; same semantics as ``put_bytes``."""
        ...

    def get_file(self, key: str, path: Path) -> str:
        """Write the object to ``path`` atomically (temp file in its folder, then rename);
        ``path`` is left untouched when the read fails. Return the sha256 of the bytes now
        at ``path``, taken as they were written and checked against the digest recorded
        with the object (``IntegrityError``), so a caller that compares with a signed
        digest need not read the file again. The file is not fsync'd: a download is read
        by the process that made it, and after a crash it is downloaded (or its digest
        checked) again, never trusted from disk."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes, from its metadata (a HEAD on S3, a ``stat`` locally):
        no byte of it is read, so a caller can refuse an object too large to download.
        ``ObjectNotFound`` when there is none."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (a plain string prefix, as in S3)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...


@runtime_checkable
class RangeReader(Protocol):
    """A store that can read part of an object (both stores can; the round protocol itself
    never needs it). The bytes are NOT checked against the object's sha256, which covers the
    whole object: a caller checks the whole digest some other way (``fedcore.sharding``
    streams the object through sha256 on one rank) or treats the bytes as unverified."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the object; ``ObjectNotFound``; a
        ``StoreError`` when the range is not inside the object."""
        ...


def check_range(uri: str, start: int, length: int, size: int) -> None:
    """Raise ``StoreError`` unless ``[start, start + length)`` lies inside ``size`` bytes."""
    if start < 0 or length < 0 or start + length > size:
        raise StoreError(
            f"cannot read bytes [{start}, {start + length}) of {uri}: the object has {size}"
        )


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``StoreError`` saying why."""
    if not isinstance(key, str):
        raise StoreError(f"object key must be a str, got {type(key).__name__}: {key!r}")
    if not key:
        raise StoreError("object key '' is empty; name the object, e.g. 'rounds/000001/round.json'")
    if key.startswith("/"):
        raise StoreError(
            f"object key {key!r} starts with '/'; keys are relative to the store's prefix, "
            f"write {key.lstrip('/')!r}"
        )
    bad_chars = sorted(set(key) & _FORBIDDEN_CHARS)
    if bad_chars:
        raise StoreError(
            f"object key {key!r} contains {', '.join(repr(c) for c in bad_chars)}; "
            "use '/' to separate segments and printable characters only"
        )
    for segment in key.split("/"):
        if segment == "":
            raise StoreError(
                f"object key {key!r} has an empty segment ('//' or a trailing '/'); "
                "remove the extra '/'"
            )
        if segment in (".", ".."):
            raise StoreError(
                f"object key {key!r} has a {segment!r} segment; keys cannot leave or "
                "re-enter their folder, spell the path out"
            )
        if segment.startswith(RESERVED_SEGMENT_PREFIX):
            raise StoreError(
                f"object key {key!r} has a segment starting with {RESERVED_SEGMENT_PREFIX!r}, "
                "which the store reserves for its own files; rename the object"
            )
    return key


def validate_list_prefix(prefix: str) -> str:
    """Return ``prefix`` if it may be listed: empty, a key, or a key followed by '/'."""
    if not isinstance(prefix, str):
        raise StoreError(f"list prefix must be a str, got {type(prefix).__name__}: {prefix!r}")
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def normalize_prefix(prefix: str) -> str:
    """A store prefix as stored: '' or segments joined by '/' with one trailing '/'."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    try:
        validate_key(stripped)
    except StoreError as e:
        raise StoreError(f"store prefix {prefix!r} is not a valid key path: {e}") from e
    return stripped + "/"


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in ``CHUNK_BYTES`` pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def copy_and_hash(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` in one pass; return (hex sha256, bytes copied)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_BYTES):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def integrity_message(uri: str, recorded: str | None, actual: str) -> str:
    """The one wording of a sha256 mismatch, shared so both stores report it alike."""
    if recorded is None:
        return (
            f"{uri} has no recorded sha256, so its bytes cannot be verified; it was not "
            "written through fedcore.store (or its digest was removed): rewrite the object"
        )
    return (
        f"{uri} is corrupt: its bytes hash to sha256 {actual} but {recorded} was recorded "
        "when it was written; rewrite the object (or restore it from a good copy)"
    )


@contextmanager
def atomic_output(path: Path, *, durable: bool = True) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield a new temp file next to ``path`` (and its name); on a clean exit it is synced
    (``durable``) and renamed over ``path``, on an exception removed, so ``path`` only ever
    holds complete contents. ``durable=False`` skips the ``fsync`` for files nothing reads
    after a crash without checking (downloads: ``ObjectStore.get_file``); the rename still
    makes them appear whole to every other process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{RESERVED_SEGMENT_PREFIX}tmp-{secrets.token_hex(8)}")
    # O_EXCL: never write through someone else's file; 0o666 lets the umask decide, as for
    # any file the user creates (mkstemp would force 0o600). O_RDWR: a parallel download
    # reads back what its workers wrote to hash it (fedcore.store.ranged).
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
