"""A directory as an object store: what ``fedkube run`` uses on a laptop, and the reference
the S3 store is tested against.

Object ``key`` is the plain file ``<root>/<prefix>/<key>``, so a model's ``uri`` can be
opened by any tool. Writes go to a temp file in the same folder, are fsynced, then renamed
into place (``os.replace``; ``os.link`` for create-if-absent, which fails atomically when
the name is taken): readers never see a partial object.

Digests. The sha256 of ``<dir>/<name>`` lives in the sidecar ``<dir>/.fedkube-sha256.<name>``
(text lines ``<sha256> <inode>``), not in an extended attribute: xattrs are not available
from Python on macOS, not on older tmpfs, and are dropped by many copy tools, while a
sidecar works on every POSIX file system and survives ``cp -r``. Content and sidecar are
two files, so they cannot change in one rename; instead the sidecar is written *before*
the content and keeps the previous version's line as well, each line tagged with the inode
of the content it describes. A reader that hashes the bytes it read finds its version's
line whether it opened the file before or after a concurrent replace; if a second replace
outran it, the file's inode has changed and it reads again. A crash between the two
renames leaves a sidecar line for content that never appeared, which is harmless.
Writers of one folder serialize on ``<dir>/.fedkube-lock`` (``flock``) only for those two
renames, never while copying bytes. Every name starting with ``.fedkube-`` is the store's
own: keys cannot use it and ``list`` never returns it.

Limitation (S3 has none): a key cannot be both an object and a folder of objects
(``a`` and ``a/b``); fedkube's layout never does that, and the error says so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, ClassVar, NamedTuple

from fedcore.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from fedcore.store.base import (
    RESERVED_SEGMENT_PREFIX,
    atomic_output,
    check_range,
    copy_and_hash,
    integrity_message,
    normalize_prefix,
    sha256_bytes,
    validate_key,
    validate_list_prefix,
)

SIDECAR_PREFIX = f"{RESERVED_SEGMENT_PREFIX}sha256."
"""The digest of ``<dir>/<name>`` is in ``<dir>/.fedkube-sha256.<name>``."""

LOCK_NAME = f"{RESERVED_SEGMENT_PREFIX}lock"
"""Per-folder lock file writers hold while renaming a sidecar and its content."""

_READ_ATTEMPTS = 8
"""Reads restarted because the object was replaced mid-read before giving up; each restart
needs a complete overwrite to land during one read, so even 2 is rare."""


class _Digest(NamedTuple):
    sha256: str
    inode: int


class LocalStore:
    """An ``ObjectStore`` in the directory ``root / prefix`` (created on first write)."""

    local_reads: ClassVar[bool] = True
    """A read is a file read on this machine, not a request to a server: pollers may poll
    often (clients cap their wait between polls lower, ``fedcore.client``)."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._root = Path(root).absolute()
        self._prefix = normalize_prefix(prefix)
        self._base = self._root / self._prefix if self._prefix else self._root

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self._root)!r}, prefix={self._prefix!r})"

    @property
    def base(self) -> Path:
        """The folder holding this store's objects (``root / prefix``)."""
        return self._base

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    # -- writes ---------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        def fill(f: BinaryIO) -> str:
            f.write(data)
            return sha256_bytes(data)

        self._write(key, fill, if_absent=if_absent)

    def put_file(self, key: str, path: Path, *, if_absent: bool = False) -> None:
        # Opened here, outside the store's error translation: a missing source file is the
        # caller's OSError, exactly as with S3Store.
        with Path(path).open("rb") as src:

            def fill(f: BinaryIO) -> str:
                return copy_and_hash(src, f)[0]

            self._write(key, fill, if_absent=if_absent)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.parent.is_dir():
            return
        try:
            with self._locked(path.parent):
                # Content first: a crash in between leaves an orphan sidecar, never an
                # object without its digest.
                path.unlink(missing_ok=True)
                _sidecar(path).unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a folder of objects, not an object: nothing stored at this key
        except OSError as e:
            raise _os_error(e, f"cannot delete {path}") from e

    def _write(self, key: str, fill: Callable[[BinaryIO], str], *, if_absent: bool) -> None:
        path = self._path(key)
        parent = path.parent
        self._make_folder(parent, key)
        if path.is_dir():
            raise _folder_conflict(self.uri(key), key)
        tmp = parent / f"{RESERVED_SEGMENT_PREFIX}tmp-{secrets.token_hex(8)}"
        try:
            # O_EXCL: never write through someone else's file; 0o666 lets the umask decide.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                sha = fill(f)
                f.flush()
                os.fsync(f.fileno())
                inode = os.fstat(f.fileno()).st_ino
            with self._locked(parent):
                current = _inode(path)
                if if_absent and current is not None:
                    raise ObjectExists(f"{self.uri(key)} already exists (create-if-absent)")
                kept = [d for d in _read_sidecar(path) if d.inode == current != inode]
                _write_sidecar(path, [_Digest(sha, inode), *kept[:1]])
                if if_absent:
                    try:
                        os.link(tmp, path)  # fails atomically if the name is taken
                    except FileExistsError as e:
                        raise ObjectExists(
                            f"{self.uri(key)} already exists (create-if-absent)"
                        ) from e
                else:
                    os.replace(tmp, path)
                _fsync_folder(parent)
        except IsADirectoryError as e:
            raise _folder_conflict(self.uri(key), key) from e
        except OSError as e:
            raise _os_error(e, f"cannot write {self.uri(key)}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _make_folder(self, folder: Path, key: str) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise StoreError(
                f"cannot store {self.uri(key)}: a part of {key!r} is already an object, and a "
                "local store cannot hold an object and a folder of the same name; rename the key"
            ) from e
        except OSError as e:
            raise _os_error(e, f"cannot create folder {folder}") from e

    @contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- reads ----------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        for _ in range(_READ_ATTEMPTS):
            with self._open(key, path) as f:
                data = f.read()
                # Verify while the file is open: its inode number cannot be reused yet.
                if self._verified(key, path, sha256_bytes(data), os.fstat(f.fileno()).st_ino):
                    return data
        raise self._unstable(key)

    def get_file(self, key: str, path: Path) -> str:
        src_path = self._path(key)
        dest = Path(path)
        for _ in range(_READ_ATTEMPTS):
            try:
                # Open before creating the temp file: a missing key leaves no trace at dest.
                with (
                    self._open(key, src_path) as src,
                    atomic_output(dest, durable=False) as (out, _tmp),
                ):
                    sha = copy_and_hash(src, out)[0]
                    if not self._verified(key, src_path, sha, os.fstat(src.fileno()).st_ino):
                        raise _ReadAgain
                return sha
            except _ReadAgain:
                continue
        raise self._unstable(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the object, unverified (see ``RangeReader``)."""
        path = self._path(key)
        with self._open(key, path) as f:
            check_range(self.uri(key), start, length, os.fstat(f.fileno()).st_size)
            data = os.pread(f.fileno(), length, start) if length else b""
        if len(data) != length:
            raise StoreError(f"{self.uri(key)} ended inside bytes [{start}, {start + length})")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise ObjectNotFound(f"{self.uri(key)} does not exist") from e
        except OSError as e:
            raise _os_error(e, f"cannot read {self.uri(key)}") from e
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{self.uri(key)} does not exist")
        return st.st_size

    def list(self, prefix: str = "") -> list[str]:
        validate_list_prefix(prefix)
        head = prefix.rpartition("/")[0]
        start = self._base / head if head else self._base
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start, onerror=_raise):
            rel = Path(dirpath).relative_to(self._base).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(RESERVED_SEGMENT_PREFIX) and _may_hold(rel + d + "/", prefix)
            ]
            for name in filenames:
                key = rel + name
                if key.startswith(prefix) and _is_valid_key(key):
                    keys.append(key)
        return sorted(keys)

    # -- helpers --------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._base / validate_key(key)

    @contextmanager
    def _open(self, key: str, path: Path) -> Iterator[BinaryIO]:
        try:
            f = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectNotFound(f"{self.uri(key)} does not exist") from e
        except OSError as e:
            raise _os_error(e, f"cannot read {self.uri(key)}") from e
        with f:
            yield f

    def _verified(self, key: str, path: Path, sha: str, inode: int) -> bool:
        """True if ``sha`` is a recorded digest of ``key``; False if the object was replaced
        while it was read (read again); ``IntegrityError`` otherwise. The caller holds the
        file open, so no new file can have taken its inode number."""
        digests = _read_sidecar(path)
        if any(d.sha256 == sha for d in digests):
            return True
        if _inode(path) != inode:
            return False
        mine = [d.sha256 for d in digests if d.inode == inode] or [d.sha256 for d in digests]
        raise IntegrityError(integrity_message(self.uri(key), mine[0] if mine else None, sha))

    def _unstable(self, key: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"{self.uri(key)} was replaced {_READ_ATTEMPTS} times while being read; "
            "its writer rewrites it in a loop, retry later"
        )


def _sidecar(path: Path) -> Path:
    return path.with_name(SIDECAR_PREFIX + path.name)


def _read_sidecar(path: Path) -> list[_Digest]:
    try:
        text = _sidecar(path).read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError):
        return []  # unreadable digest: the read reports the object as unverifiable
    digests = []
    for line in text.splitlines():
        sha, _, inode = line.partition(" ")
        if len(sha) == 64 and inode.isdigit():
            digests.append(_Digest(sha, int(inode)))
    return digests


def _write_sidecar(path: Path, digests: list[_Digest]) -> None:
    body = "".join(f"{d.sha256} {d.inode}\n" for d in digests).encode("ascii")
    with atomic_output(_sidecar(path)) as (f, _tmp):
        f.write(body)


def _inode(path: Path) -> int | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some file systems cannot fsync a folder, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _may_hold(folder_key: str, prefix: str) -> bool:
    """Whether keys below ``folder_key`` (ending in '/') can start with ``prefix``."""
    return folder_key.startswith(prefix) or prefix.startswith(folder_key)


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except StoreError:
        return False
    return True


def _raise(e: OSError) -> None:
    if e.errno != errno.ENOENT:  # a folder removed while walking is simply not listed
        raise StoreError(f"cannot list {e.filename}: {e.strerror}") from e


def _folder_conflict(uri: str, key: str) -> StoreError:
    return StoreError(
        f"cannot store {uri}: objects exist below {key + '/'!r}, and a local store cannot "
        "hold an object and a folder of the same name; rename the key"
    )


def _os_error(e: OSError, what: str) -> StoreError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreUnavailable(f"{what}: {e.strerror}; free space on the store's disk")
    if isinstance(e, PermissionError):
        return StoreError(f"{what}: permission denied; make the folder writable by this user")
    return StoreError(f"{what}: {e.strerror or e}")


class _ReadAgain(Exception):
    """The object was replaced while being copied out; discard the temp file, read again."""


__all__ = ["LocalStore"]
