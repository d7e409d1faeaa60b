"""Any S3-compatible service (MinIO, Ceph RGW, AWS S3) as an object store: what the pods of a
cluster run use. With ``sts.py`` (minting credentials) the only modules of fedkube that
import boto3.

- Addressing is path-style by default (``http://host:9000/bucket/key``), which every
  S3-compatible server accepts without wildcard DNS.
- Retries are botocore's ``adaptive`` mode: exponential backoff with jitter plus a client
  side rate limiter that backs off when the server throttles. What still fails after
  ``max_attempts`` (connection refused, 5xx, throttling) is ``StoreUnavailable``.
- Large files move in parallel parts (``multipart_threshold`` / ``multipart_chunksize`` /
  ``max_concurrency``). Uploads go through boto3's transfer manager. Create-if-absent uploads
  of large files use a small multipart loop of our own, because the transfer manager cannot
  pass ``If-None-Match`` to ``CompleteMultipartUpload``; that request, like ``PutObject``, is
  atomic on the server: of two concurrent creators exactly one gets ``ObjectExists``.
  Downloads (``get_file``) are ranged GETs of our own (``fedcore.store.ranged``): each part
  written with ``pwrite`` at its offset and hashed in order behind the parts, every GET
  pinned to the HEAD's ETag (``If-Match``), so a replaced object is read again from the
  start, never mixed. Against the transfer manager's download plus a hashing pass it
  needs half the CPU (``make bench-store-mc``).
- Each object's sha256 is the user metadata ``sha256`` (header ``x-amz-meta-sha256``),
  written with the object in the same request and checked on every read. A multipart ETag is
  not a content hash, and S3's own checksums differ between single and multipart uploads,
  so a digest of our own is the one that means the same everywhere.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, profiles, instance roles), a caller-made session, or a role's
``credentials.json`` (``S3Store.from_credentials_file``); this module never stores, prints or
logs them, and rejects endpoint URLs that embed them.

Credentials from a file are botocore refreshable credentials: before each request the store
checks the file (one ``stat``) and re-reads it when it was replaced (a kubelet swaps a
Secret volume's files atomically; ``fedkube run`` renames a new file into place), and again
whenever the credential in hand is within ``CREDENTIALS_ADVISORY_REFRESH_S`` of expiring.
Rotation therefore needs no restart, and a credential the writer replaced in time is never
used past its expiration. A file that still holds an expired credential when one is needed
is ``StoreUnavailable`` (its writer is late; retrying later can succeed).

Missing keys and scoped readers. A role's credential may GetObject certain keys without
ListBucket (a client probes ``rounds/NNNNNN/round.json`` to find the newest round). MinIO
answers such a reader's request for a missing key with 404 (``NoSuchKey``), as for anyone;
AWS S3 and Ceph RGW answer 403 ``AccessDenied``, hiding whether the key exists from
principals that may not list. The store gives both the same meaning without granting any
listing: ``S3Config.denied_is_missing`` holds the key globs the credential's policy lets it
read, and a plain ``AccessDenied`` on one of those keys is ``ObjectNotFound`` (HEAD replies
carry no error code, so a 403 HEAD is confirmed with a one-byte GET, whose reply does). A
denial of any other key stays an access error, and so do expired or wrong keys (their codes
differ). MinIO needs none of this (its 404 is honest), so a 403 from a server that says it
is MinIO (``Server: MinIO``) stays a refusal: a revoked credential fails loudly instead of
looking like a round not committed yet. The bucket check that tells "no such bucket" from
"no such key" after a 404 needs ListBucket on the whole bucket; a credential refused it
(every role's) takes the bucket as existing (a missing bucket then shows as
``NoSuchBucket`` on the next GET).
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, NoReturn
from urllib.parse import urlsplit

import boto3
import boto3.exceptions
import botocore.credentials
import botocore.exceptions
import botocore.session
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from fedcore.credentials import glob_matches, read_credentials_file
from fedcore.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from fedcore.store import ranged
from fedcore.store.base import (
    atomic_output,
    check_range,
    integrity_message,
    normalize_prefix,
    sha256_bytes,
    sha256_file,
    validate_key,
    validate_list_prefix,
)

log = logging.getLogger(__name__)

MiB = 1 << 20
MIN_PART_BYTES = 5 * MiB
"""S3's smallest part (all but the last) of a multipart upload."""
MAX_PARTS = 10_000
"""S3's largest number of parts in one multipart upload."""
MAX_KEY_BYTES = 1024
"""S3's longest object key (prefix included), in UTF-8 bytes."""
SHA256_METADATA = "sha256"
"""User metadata key holding the object's hex sha256 (header ``x-amz-meta-sha256``)."""

CREDENTIALS_ADVISORY_REFRESH_S = 120
"""A credential from a file that expires within this many seconds makes the store re-read
the file before each request (without blocking other threads), even if the file looks
unchanged. Writers replace it far earlier (the operator at half its lifetime)."""
CREDENTIALS_MANDATORY_REFRESH_S = 20
"""Within this many seconds of expiry every request waits for the re-read; a file still
holding the expired credential then fails the request with ``StoreUnavailable``."""

_READ_ATTEMPTS = 4
"""Downloads restarted because the object was replaced between its HEAD and its bytes."""
_BODY_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
    ranged.ShortBody,
)
"""A ranged body that broke mid-stream; the rest of the part is asked for again (botocore
retries only the request, not the reading of its body)."""
_BODY_ATTEMPTS = 3
"""Reads of one part's bytes (the first included) before the download fails."""
_UNAVAILABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
    }
)
_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"}
)


@dataclass(frozen=True)
class S3Config:
    """Where an S3 store lives and how it moves bytes. Holds no credentials."""

    bucket: str
    """Bucket holding the objects; it must exist (fedkube never creates buckets)."""
    endpoint: str | None = None
    """S3 API URL, e.g. ``http://minio.minio:9000``. None: boto3's default for the region
    (AWS S3, or ``AWS_ENDPOINT_URL`` when set)."""
    prefix: str = ""
    """Key prefix of this store (a job's prefix); stored with one trailing '/'."""
    region: str = "us-east-1"
    """Signing region; S3-compatible servers accept any value, AWS needs the bucket's."""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    """``path`` works with any server and needs no wildcard DNS; ``virtual`` is AWS's
    preferred style."""
    max_attempts: int = 8
    """Attempts per request (first try included) before ``StoreUnavailable``; with adaptive
    backoff 8 attempts ride out roughly half a minute of server restart."""
    multipart_threshold: int = 16 * MiB
    """Objects of this many bytes or more go up in parts (and come down in ranges). 16 MiB:
    below that one request is as fast; above it parallel parts win."""
    multipart_chunksize: int = 16 * MiB
    """Bytes per part (at least S3's 5 MiB); raised automatically for objects that would
    need more than 10,000 parts."""
    max_concurrency: int = 8
    """Parts in flight at once per transfer; enough to fill a 10 Gbit/s link to a nearby
    server without starving the node's CPU."""
    denied_is_missing: tuple[str, ...] = ()
    """Keys (IAM globs relative to ``prefix``) this store's credential may read but not
    list: an ``AccessDenied`` reading one of them means it does not exist (AWS and Ceph RGW
    hide missing keys from readers without ListBucket). Empty for unscoped credentials."""
    connect_timeout: float = 10.0
    """Seconds to open a connection before the attempt counts as failed."""
    read_timeout: float = 60.0
    """Seconds without a byte from the server before the attempt counts as failed."""

    def __post_init__(self) -> None:
        problems = []
        if not self.bucket:
            problems.append("bucket is empty; name the bucket that holds the job's objects")
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(
                    f"endpoint {self.endpoint!r} is not an http(s) URL; "
                    "write it like 'http://minio.minio:9000'"
                )
            elif parts.username is not None or parts.password is not None:
                problems.append(
                    "endpoint embeds credentials; remove them from the URL and set "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead"
                )
        if self.addressing_style not in ("path", "virtual", "auto"):
            problems.append(
                f"addressing_style {self.addressing_style!r} is not one of path, virtual, auto"
            )
        for name in ("max_attempts", "max_concurrency"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.multipart_chunksize < MIN_PART_BYTES:
            problems.append(
                f"multipart_chunksize={self.multipart_chunksize} is below S3's minimum part "
                f"size; use at least {MIN_PART_BYTES} (5 MiB)"
            )
        if self.multipart_threshold < 1:
            problems.append(f"multipart_threshold={self.multipart_threshold} must be positive")
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive seconds")
        if problems:
            raise StoreError("invalid S3Config: " + "; ".join(problems))
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))


class S3Store:
    """An ``ObjectStore`` in ``s3://bucket/prefix`` on an S3-compatible service.

    ``session`` supplies the credentials; by default a new ``boto3.session.Session()``
    (the standard AWS environment variables, profiles, roles). The client is thread-safe,
    so one store may be shared by threads.
    """

    @classmethod
    def with_keys(cls, config: S3Config, access_key_id: str, secret_access_key: str) -> S3Store:
        """A store signed with this key pair instead of the process's own credentials (the
        operator reads each job's pair from that job's Secret)."""
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key
        )
        return cls(config, session=session)

    @classmethod
    def from_credentials_file(cls, config: S3Config, path: Path) -> S3Store:
        """A store signed with the role credentials in ``credentials.json`` at ``path``,
        re-read whenever the file is replaced and before the credential expires. A missing
        or malformed file is a ``CredentialsError`` now, not at the first request."""
        provider = _FileCredentialProvider(Path(path))
        provider.load()
        botocore_session = botocore.session.Session()
        botocore_session.get_component("credential_provider").insert_before("env", provider)
        store = cls(config, session=boto3.session.Session(botocore_session=botocore_session))
        store._credentials_file = provider.path
        return store

    def __init__(self, config: S3Config, *, session: boto3.session.Session | None = None) -> None:
        self.config = config
        session = session or boto3.session.Session()
        self._client: Any = session.client(
            "s3",
            endpoint_url=config.endpoint,
            region_name=config.region,
            config=BotoConfig(
                s3={"addressing_style": config.addressing_style},
                retries={"total_max_attempts": config.max_attempts, "mode": "adaptive"},
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                max_pool_connections=max(10, config.max_concurrency * 2),
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunksize,
            max_concurrency=config.max_concurrency,
            use_threads=True,
        )
        self._bucket_seen = False
        self._credentials_file: Path | None = None
        """Where a role's scoped credentials come from (``from_credentials_file``)."""

    def __repr__(self) -> str:
        c = self.config
        return f"S3Store(endpoint={c.endpoint!r}, bucket={c.bucket!r}, prefix={c.prefix!r})"

    def uri(self, key: str) -> str:
        return f"s3://{self.config.bucket}/{self._key(key)}"

    # -- writes ---------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        full = self._key(key)
        sha = sha256_bytes(data)
        view = memoryview(data)

        def read_part(offset: int, size: int) -> bytes:
            return bytes(view[offset : offset + size])

        self._upload(key, full, len(data), sha, io.BytesIO(data), read_part, if_absent)

    def put_file(self, key: str, path: Path, *, if_absent: bool = False) -> None:
        full = self._key(key)
        path = Path(path)
        sha = sha256_file(path)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size

            def read_part(offset: int, length: int) -> bytes:
                return os.pread(f.fileno(), length, offset)

            self._upload(key, full, size, sha, f, read_part, if_absent, path=path)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors(key, "delete"):
            self._client.delete_object(Bucket=self.config.bucket, Key=full)

    def _upload(
        self,
        key: str,
        full: str,
        size: int,
        sha: str,
        body: BinaryIO,
        read_part: Callable[[int, int], bytes],
        if_absent: bool,
        path: Path | None = None,
    ) -> None:
        bucket = self.config.bucket
        metadata = {SHA256_METADATA: sha}
        log.debug("put %s (%d bytes, if_absent=%s)", self.uri(key), size, if_absent)
        with self._errors(key, "write", conditional=if_absent):
            if size < self.config.multipart_threshold:
                extra = {"IfNoneMatch": "*"} if if_absent else {}
                self._client.put_object(
                    Bucket=bucket, Key=full, Body=body, Metadata=metadata, **extra
                )
            elif not if_absent:
                extra_args = {"ExtraArgs": {"Metadata": metadata}, "Config": self._transfer}
                if path is not None:
                    # By name, each part is read by its own worker; a file object would
                    # funnel every part through one reader.
                    self._client.upload_file(str(path), bucket, full, **extra_args)
                else:
                    self._client.upload_fileobj(body, bucket, full, **extra_args)
            else:
                self._create_in_parts(key, full, size, metadata, read_part)

    def _create_in_parts(
        self,
        key: str,
        full: str,
        size: int,
        metadata: dict[str, str],
        read_part: Callable[[int, int], bytes],
    ) -> None:
        """Create-if-absent multipart upload: parts in parallel, then one conditional
        ``CompleteMultipartUpload`` that either creates the object or fails with 412."""
        bucket = self.config.bucket
        # Not needed for correctness (the completion is conditional); it spares uploading
        # a large file only to be told the key was taken.
        if self._head(key, full) is not None:
            raise ObjectExists(f"{self.uri(key)} already exists (create-if-absent)")
        chunk = max(self.config.multipart_chunksize, math.ceil(size / MAX_PARTS))
        count = max(1, math.ceil(size / chunk))
        upload_id = self._client.create_multipart_upload(
            Bucket=bucket, Key=full, Metadata=metadata
        )["UploadId"]

        def send(index: int) -> dict[str, Any]:
            offset = index * chunk
            reply = self._client.upload_part(
                Bucket=bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=index + 1,
                Body=read_part(offset, min(chunk, size - offset)),
            )
            part = {"PartNumber": index + 1, "ETag": reply["ETag"]}
            # botocore adds a checksum to every part by default; the completion must
            # repeat it or the server rejects the part list.
            part.update({k: v for k, v in reply.items() if k.startswith("Checksum")})
            return part

        try:
            with ThreadPoolExecutor(min(self.config.max_concurrency, count)) as pool:
                parts = list(pool.map(send, range(count)))
            self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                log.warning("could not abort multipart upload of %s", self.uri(key))
            raise

    # -- reads ----------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        with self._errors(key, "read"):
            reply = self._client.get_object(Bucket=self.config.bucket, Key=full)
            with reply["Body"] as body:
                data: bytes = body.read()
        recorded = reply.get("Metadata", {}).get(SHA256_METADATA)
        actual = sha256_bytes(data)
        if recorded != actual:
            raise IntegrityError(integrity_message(self.uri(key), recorded, actual))
        log.debug("got %s (%d bytes)", self.uri(key), len(data))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` (one ranged GET), unverified (``RangeReader``)."""
        full = self._key(key)
        if length == 0:
            check_range(self.uri(key), start, length, self.size(key))
            return b""
        if start < 0 or length < 0:
            check_range(self.uri(key), start, length, 0)
        with self._errors(key, "read"):
            reply = self._client.get_object(
                Bucket=self.config.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
            )
            with reply["Body"] as body:
                data: bytes = body.read()
        if len(data) != length:  # S3 cuts a range that runs past the end short
            raise StoreError(
                f"cannot read bytes [{start}, {start + length}) of {self.uri(key)}: got "
                f"{len(data)} bytes; the range is not inside the object"
            )
        return data

    def get_file(self, key: str, path: Path) -> str:
        full = self._key(key)
        for _ in range(_READ_ATTEMPTS):
            head = self._head(key, full)
            if head is None:
                raise ObjectNotFound(f"{self.uri(key)} does not exist")
            recorded = head.get("Metadata", {}).get(SHA256_METADATA)
            try:
                with atomic_output(Path(path), durable=False) as (out, _tmp):
                    actual = self._download(key, full, head, out.fileno())
                    if recorded != actual:
                        now = self._head(key, full)
                        if now is None or now.get("ETag") != head.get("ETag"):
                            raise _ReadAgain  # replaced between the HEAD and the bytes
                        raise IntegrityError(integrity_message(self.uri(key), recorded, actual))
            except _ReadAgain:
                continue
            log.debug("got %s into %s", self.uri(key), path)
            return actual
        raise StoreUnavailable(
            f"{self.uri(key)} was replaced {_READ_ATTEMPTS} times while being downloaded; "
            "its writer rewrites it in a loop, retry later"
        )

    def _download(self, key: str, full: str, head: dict[str, Any], fd: int) -> str:
        """The object's bytes as of ``head`` into ``fd`` in parallel ranged GETs (see
        ``fedcore.store.ranged``); their sha256. Every GET names the HEAD's ETag, so an
        object replaced since makes it ``_ReadAgain`` instead of mixing two versions."""
        size, etag = int(head["ContentLength"]), head["ETag"]
        part = self.config.multipart_chunksize if size >= self.config.multipart_threshold else size

        def fetch(start: int, length: int) -> ranged.Body:
            reply = self._client.get_object(
                Bucket=self.config.bucket,
                Key=full,
                Range=f"bytes={start}-{start + length - 1}",
                IfMatch=etag,
            )
            # The urllib3 response under botocore's StreamingBody: read into the worker's
            # buffer without StreamingBody's copies. Its length and content checks are the
            # download's own (exact range length, sha256 of the whole).
            streaming = reply["Body"]
            raw = getattr(streaming, "_raw_stream", None)  # private: fall back if it goes away
            body: ranged.Body = raw if raw is not None else _ReadInto(streaming)
            return body

        with self._errors(key, "read"):
            try:
                return ranged.download(
                    fetch,
                    fd,
                    size,
                    part_bytes=max(1, part),
                    concurrency=self.config.max_concurrency,
                    retryable=_BODY_ERRORS,
                    attempts=_BODY_ATTEMPTS,
                )
            except botocore.exceptions.ClientError as e:
                if _code(e) == "PreconditionFailed" or _status(e) == 412:
                    raise _ReadAgain from e  # the ETag moved: replaced after the HEAD
                raise
            except ranged.ShortBody:
                raise
            except _BODY_ERRORS as e:
                raise StoreUnavailable(
                    f"cannot read {self.uri(key)}: the connection broke while its bytes "
                    f"arrived, {_BODY_ATTEMPTS} times for one part ({type(e).__name__}: {e}); "
                    "retry later"
                ) from e

    def exists(self, key: str) -> bool:
        return self._head(key, self._key(key)) is not None

    def size(self, key: str) -> int:
        head = self._head(key, self._key(key))
        if head is None:
            raise ObjectNotFound(f"{self.uri(key)} does not exist")
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        validate_list_prefix(prefix)
        own = self.config.prefix
        keys: list[str] = []
        with self._errors(None, "list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=own + prefix
            )
            for page in pages:
                keys.extend(item["Key"][len(own) :] for item in page.get("Contents", ()))
        return sorted(keys)

    # -- helpers --------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        full = self.config.prefix + validate_key(key)
        if len(full.encode()) > MAX_KEY_BYTES:
            raise StoreError(
                f"object key {full!r} is longer than S3's {MAX_KEY_BYTES} bytes; "
                "shorten the job prefix or the key"
            )
        return full

    def _head(self, key: str, full: str) -> dict[str, Any] | None:
        """The object's HEAD reply, or None if it does not exist (and the bucket does)."""
        try:
            with self._errors(key, "read"):
                try:
                    reply: dict[str, Any] = self._client.head_object(
                        Bucket=self.config.bucket, Key=full
                    )
                except botocore.exceptions.ClientError as e:
                    if (
                        _status(e) == 403
                        and self._hides_missing(key)
                        and may_hide_absence(e)
                        and self._denied_get(full)
                    ):
                        return None  # see "Missing keys and scoped readers" above
                    raise
                return reply
        except ObjectNotFound:
            # A HEAD has no body, so "no such key" and "no such bucket" look alike.
            self._check_bucket()
            return None

    def _hides_missing(self, key: str) -> bool:
        return any(glob_matches(p, key) for p in self.config.denied_is_missing)

    def _denied_get(self, full: str) -> bool:
        """Whether a one-byte GET of ``full`` is refused with a plain ``AccessDenied`` (as
        AWS answers a missing key to a reader without ListBucket)."""
        try:
            reply = self._client.get_object(Bucket=self.config.bucket, Key=full, Range="bytes=0-0")
        except botocore.exceptions.ClientError as e:
            return _code(e) == "NoSuchKey" or (_code(e) == "AccessDenied" and may_hide_absence(e))
        reply["Body"].close()
        return False

    def _check_bucket(self) -> None:
        if self._bucket_seen:
            return
        with self._errors(None, "check the bucket of"):
            try:
                self._client.head_bucket(Bucket=self.config.bucket)
            except botocore.exceptions.ClientError as e:
                if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                    raise self._no_bucket() from e
                if _status(e) != 403:
                    raise
                # A scoped credential (a role's: no ListBucket, or only under its prefix) may
                # not HEAD the bucket; a missing bucket still shows as NoSuchBucket on a GET.
        self._bucket_seen = True

    def _no_bucket(self) -> StoreError:
        c = self.config
        return StoreError(
            f"bucket {c.bucket!r} does not exist at {c.endpoint or 'the default S3 endpoint'}; "
            f"create it (e.g. `mc mb <alias>/{c.bucket}` or `aws s3 mb s3://{c.bucket}`) "
            "or set spec.storage.bucket to an existing bucket"
        )

    @contextmanager
    def _errors(self, key: str | None, action: str, *, conditional: bool = False) -> Iterator[None]:
        """Turn boto3/botocore exceptions into the fedcore.errors hierarchy (cause chained)."""
        where = (
            self.uri(key) if key is not None else f"s3://{self.config.bucket}/{self.config.prefix}"
        )
        try:
            yield
        except (
            botocore.exceptions.ClientError,
            boto3.exceptions.S3UploadFailedError,
        ) as e:
            client_error = _client_error(e)
            if client_error is None:
                raise StoreError(f"cannot {action} {where}: {e}") from e
            self._raise_for(client_error, key, where, action, conditional)
        except boto3.exceptions.RetriesExceededError as e:
            raise StoreUnavailable(
                f"cannot {action} {where}: the connection kept failing after "
                f"{self.config.max_attempts} attempts ({e.last_exception}); retry later"
            ) from e
        except (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.IncompleteReadError,
        ) as e:
            raise StoreUnavailable(
                f"cannot {action} {where}: {self.config.endpoint or 'S3'} unreachable after "
                f"{self.config.max_attempts} attempts ({type(e).__name__}); check that the "
                "server runs and the endpoint is right, or retry later"
            ) from e
        except (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
        ) as e:
            raise StoreError(
                f"cannot {action} {where}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (in a cluster: spec.storage.secretRef)"
            ) from e

    def _raise_for(
        self,
        e: botocore.exceptions.ClientError,
        key: str | None,
        where: str,
        action: str,
        conditional: bool,
    ) -> NoReturn:
        code = _code(e)
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = e.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            raise self._no_bucket() from e
        if (
            code == "AccessDenied"
            and action == "read"
            and key
            and self._hides_missing(key)
            and may_hide_absence(e)
        ):
            raise ObjectNotFound(f"{where} does not exist (or is hidden from this role)") from e
        if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchUpload"):
            raise ObjectNotFound(f"{where} does not exist") from e
        if conditional and (
            code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
        ):
            raise ObjectExists(f"{where} already exists (create-if-absent)") from e
        if code in _UNAVAILABLE_CODES or status >= 500:
            raise StoreUnavailable(
                f"cannot {action} {where}: the server kept failing after "
                f"{self.config.max_attempts} attempts ({code or status}: {message}); retry later"
            ) from e
        if self._credentials_file is not None and (code in _ACCESS_CODES or status == 403):
            raise StoreError(
                f"cannot {action} {where}: access denied ({code}) to the scoped credentials in "
                f"{self._credentials_file}: this process's role may not do that (a client "
                "reads the job's public keys and writes only its own update; see "
                "fedcore.credentials), or the credentials were revoked"
            ) from e
        if code in _ACCESS_CODES or status == 403:
            raise StoreError(
                f"cannot {action} {where}: access denied ({code}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, spec.storage.secretRef) and that "
                f"they may use bucket {self.config.bucket!r}"
            ) from e
        raise StoreError(f"cannot {action} {where}: {code or status}: {message}") from e


def _client_error(e: BaseException) -> botocore.exceptions.ClientError | None:
    """The ClientError behind ``e`` (boto3 wraps upload failures without chaining them)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, botocore.exceptions.ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _code(e: botocore.exceptions.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def may_hide_absence(e: botocore.exceptions.ClientError) -> bool:
    """Whether a 403 may be a store hiding a missing key from a reader that may not list
    (AWS, Ceph RGW). Not from MinIO: it answers a missing key 404 to every reader allowed to
    GetObject it, so its 403 is a real refusal (say, a revoked credential) and stays one."""
    headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return not str(headers.get("server", "")).lower().startswith("minio")


def _status(e: botocore.exceptions.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class _FileCredentialProvider(botocore.credentials.CredentialProvider):  # type: ignore[misc]
    """Credentials from a role's ``credentials.json``, refreshed from the file."""

    METHOD = "fedkube-credentials-file"
    CANONICAL_NAME = "fedkube-credentials-file"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.signature: tuple[int, ...] | None = None
        """The file's identity when it was last read successfully."""

    def load(self) -> _FileCredentials:
        creds: _FileCredentials = _FileCredentials.create_from_metadata(
            metadata=self._read(),
            refresh_using=self._refresh,
            method=self.METHOD,
            advisory_timeout=CREDENTIALS_ADVISORY_REFRESH_S,
            mandatory_timeout=CREDENTIALS_MANDATORY_REFRESH_S,
        )
        creds.provider = self
        return creds

    def file_signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)  # follows the kubelet's ..data symlink
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, str]:
        signature = self.file_signature()
        creds = read_credentials_file(self.path)
        self.signature = signature
        return {
            "access_key": creds.access_key_id,
            "secret_key": creds.secret_access_key,
            "token": creds.session_token,
            "expiry_time": creds.expiration.isoformat(),
        }

    def _refresh(self) -> dict[str, str]:
        metadata = self._read()
        expiry = datetime.fromisoformat(metadata["expiry_time"])
        if expiry <= datetime.now(UTC):
            raise StoreUnavailable(
                f"the store credentials in {self.path} expired at {expiry:%Y-%m-%dT%H:%M:%SZ} "
                "and were not replaced in time; their writer (the operator, or fedkube run) "
                "rotates them before expiry: check that it runs, then retry"
            )
        return metadata


class _FileCredentials(botocore.credentials.RefreshableCredentials):  # type: ignore[misc]
    """Refreshable credentials that also count a replaced file as a reason to refresh."""

    provider: _FileCredentialProvider | None = None

    def refresh_needed(self, refresh_in: float | None = None) -> bool:
        # Only the advisory check (never the mandatory one) counts a replaced file: a file
        # that cannot be read then leaves the credential in hand instead of failing a request.
        if self.provider is not None and (
            refresh_in is None or refresh_in >= self._advisory_refresh_timeout
        ):
            now = self.provider.file_signature()
            if now is not None and now != self.provider.signature:
                return True
        return bool(super().refresh_needed(refresh_in))


class _ReadAgain(Exception):
    """The object changed under a download; discard the temp file and start over."""


__all__ = ["S3Config", "S3Store"]


class _ReadInto:
    """``readinto`` over any body with ``read(n)`` (one copy more than the urllib3 stream
    under botocore's ``StreamingBody``, which the download uses when it is there)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def readinto(self, buffer: memoryview) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
