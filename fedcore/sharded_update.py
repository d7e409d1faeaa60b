"""A client update cut into one file per rank, and how the aggregator puts it back together.

Why it exists: a client that trains with FSDP (``spec.clients[].parallelism.mode: fsdp``,
``fedcore.sharding``) has no rank holding the whole model, so no rank can write the whole
update. Each rank writes the rows it holds of every parameter (FSDP2 shards each parameter
along its first dimension) as one safetensors file, ``layout.shard_key(r, client, i, n)``;
rank 0 then writes the manifest listing every shard's sha256 and size, signed like any
manifest, last (the commit).

A shard's header metadata says what it holds: ``kind``/``round``/``client`` as in any update,
``shard`` (``"i/n"``) and ``rows``, JSON ``{tensor name: [start, stop)}``: the tensor's rows
``start..stop`` along dimension 0 (a 0-d tensor is ``[0, 1)``). Each piece is stored under
the tensor's own name with shape ``(stop - start, *shape[1:])``.

The aggregator trusts none of it (``fedcore.validation`` calls ``assemble`` after the
manifest's signature verified): every shard must be listed, have exactly its signed size and
sha256, and claim to be shard ``i`` of ``n``; the pieces of every tensor of the model must
tile its rows exactly once (no overlap, no gap), with the model's trailing shape and one dtype;
no piece of a tensor the model lacks. Only then are the pieces copied, tensor by tensor, into
one ordinary update file, which goes through the same content checks as any update.

Memory: one piece at a time (assembly copies bytes, it never materialises a tensor whole).
Disk and time: the update once more (the shards, then the assembled file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

import torch

from fedcore import layout
from fedcore.errors import FedcoreError, IntegrityError, ObjectNotFound, UpdateRejected
from fedcore.store import ObjectStore
from fedcore.weights import (
    SAFETENSORS_CODES,
    Template,
    TensorSpec,
    WeightsReader,
    dtype_name,
    open_weights,
    sha256_file,
    update_metadata,
)
from fedcore.weights_stream import StreamingWeightsWriter

if TYPE_CHECKING:
    from fedcore.validation import ValidationReason

SHARD_META = "shard"
ROWS_META = "rows"

_COPY_BYTES = 8 << 20
"""Bytes copied per read while assembling (bounded memory whatever a piece's size)."""


Rows = tuple[int, int]
_Reject: TypeAlias = "Callable[[ValidationReason, str], UpdateRejected]"


def shards_digest(shards: Sequence[layout.UpdateShard]) -> str:
    """A sharded manifest's ``update_sha256``: sha256 of the shards' digests, one per line,
    in shard order (it binds the list's order and content into the one field every manifest
    has)."""
    return hashlib.sha256("".join(f"{s.sha256}\n" for s in shards).encode()).hexdigest()


def shards_dir(update_path: Path) -> Path:
    """Where the aggregator downloads the shards of the update it assembles at
    ``update_path`` (a sibling folder; removed with the update)."""
    return update_path.with_name(update_path.name + ".shards")


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.safetensors"


# ---- a rank writes its shard -------------------------------------------------------------------


def write_shard(
    path: Path,
    pieces: Mapping[str, tuple[torch.Tensor, Rows]],
    *,
    round: int,
    client: str,
    index: int,
    count: int,
) -> layout.UpdateShard:
    """Save one rank's pieces (``name -> (rows of the delta, (start, stop))``) at ``path``;
    return its manifest entry (sha256 and size). ``stream_shard`` with the pieces at hand."""
    plan = {name: (TensorSpec(tuple(t.shape), t.dtype), rows) for name, (t, rows) in pieces.items()}
    return stream_shard(
        path, plan, lambda name: pieces[name][0], round=round, client=client, index=index,
        count=count,
    )  # fmt: skip


def stream_shard(
    path: Path,
    plan: Mapping[str, tuple[TensorSpec, Rows]],
    piece: Callable[[str], torch.Tensor],
    *,
    round: int,
    client: str,
    index: int,
    count: int,
) -> layout.UpdateShard:
    """Write one rank's shard at ``path`` a tensor at a time: ``plan`` gives each piece's
    shape, dtype and rows up front (the header is written first), ``piece(name)`` computes
    it when its turn comes, so only one piece is ever in memory (a rank's whole delta would
    be a quarter of the model next to its quarter of the parameters, with 4 ranks). The
    bytes are ``save_weights``'s for the same pieces. Return the manifest entry."""
    rows = {name: [start, stop] for name, (_, (start, stop)) in sorted(plan.items())}
    metadata = {
        **update_metadata(round, client),
        SHARD_META: f"{index}/{count}",
        ROWS_META: json.dumps(rows, separators=(",", ":")),
    }
    template = {name: spec for name, (spec, _) in plan.items()}
    with StreamingWeightsWriter(path, template, metadata) as writer:
        for name in writer.order:
            writer.write(name, piece(name))
    return layout.UpdateShard(sha256=sha256_file(path), bytes=path.stat().st_size)


# ---- the aggregator downloads and assembles ----------------------------------------------------


def fetch_shards(
    store: ObjectStore,
    r: int,
    client: str,
    shards: Sequence[layout.UpdateShard],
    folder: Path,
    *,
    max_update_bytes: int,
) -> None:
    """Download the listed shards into ``folder`` after checking their sizes from the store's
    metadata: each must be its declared size and all of them together within
    ``max_update_bytes``, or nothing more is downloaded (``UpdateRejected``)."""
    declared = sum(s.bytes for s in shards)
    if declared > max_update_bytes:
        raise UpdateRejected(
            client,
            "too-large",
            f"the manifest declares {len(shards)} shards of {declared} bytes in all, more than "
            f"the {max_update_bytes} allowed",
        )
    keys = [layout.shard_key(r, client, i, len(shards)) for i in range(len(shards))]
    for key, shard in zip(keys, shards, strict=True):
        try:
            size = store.size(key)
        except ObjectNotFound as e:
            raise UpdateRejected(
                client, "malformed-update", f"the manifest lists shard {key} but it is missing"
            ) from e
        if size != shard.bytes:
            raise UpdateRejected(
                client,
                "bad-signature",
                f"shard {key} is {size} bytes but the manifest says {shard.bytes} (read from "
                "the store's metadata, nothing was downloaded)",
            )
    folder.mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(keys):
        try:
            store.get_file(key, shard_path(folder, i))
        except ObjectNotFound as e:
            raise UpdateRejected(
                client, "malformed-update", f"{e}; it vanished between its size and its read"
            ) from e
        except IntegrityError as e:
            raise UpdateRejected(client, "malformed-update", str(e)) from e


@dataclass(frozen=True)
class _Piece:
    shard: int
    rows: Rows
    dtype: torch.dtype


def assemble(
    manifest: layout.UpdateManifest,
    folder: Path,
    template: Template,
    out: Path,
    *,
    max_bytes: int,
) -> None:
    """Check the shards in ``folder`` against the (verified) ``manifest`` and ``template``;
    write the whole update at ``out``. Raises ``UpdateRejected`` naming what is wrong."""
    client, shards = manifest.client, manifest.shards

    def reject(reason: ValidationReason, detail: str) -> UpdateRejected:
        return UpdateRejected(client, reason, detail)

    if manifest.update_sha256 != shards_digest(shards) or manifest.update_bytes != sum(
        s.bytes for s in shards
    ):
        raise reject(
            "bad-manifest",
            "a sharded manifest's update_sha256 must be shards_digest(shards) and its "
            "update_bytes the sum of the shards' sizes",
        )
    if manifest.update_bytes > max_bytes:
        raise reject(
            "too-large",
            f"the shards are {manifest.update_bytes} bytes in all, more than the "
            f"{max_bytes} allowed",
        )
    for i, shard in enumerate(shards):  # digests first: unsigned bytes say nothing
        path = shard_path(folder, i)
        if not path.is_file() or path.stat().st_size != shard.bytes:
            raise reject("bad-signature", f"shard {i} is not the size its signed entry says")
        if sha256_file(path) != shard.sha256:
            raise reject(
                "bad-signature", f"shard {i}'s sha256 differs from its signed entry in the manifest"
            )
    readers: list[WeightsReader] = []
    try:
        plan: dict[str, list[_Piece]] = {}
        for i in range(len(shards)):
            try:
                reader = open_weights(shard_path(folder, i))
            except FedcoreError as e:
                raise reject("malformed-update", f"shard {i}: {e}") from e
            readers.append(reader)
            for name, piece in _pieces(reader, manifest, i, len(shards), reject).items():
                plan.setdefault(name, []).append(piece)
        unknown = sorted(set(plan) - set(template))
        if unknown:
            raise reject(
                "unknown-tensor", f"the shards hold tensors the model lacks: {unknown[:5]}"
            )
        missing = sorted(set(template) - set(plan))
        if missing:
            raise reject("missing-tensor", f"no shard holds model tensors {missing[:5]}")
        for name in sorted(template):
            _check_tiling(name, template[name], plan[name], readers, reject)
        _write(out, template, plan, readers, manifest)
    finally:
        for reader in readers:
            reader.close()


def _pieces(
    reader: WeightsReader,
    manifest: layout.UpdateManifest,
    index: int,
    count: int,
    reject: _Reject,
) -> dict[str, _Piece]:
    meta = reader.metadata
    expected = {
        **update_metadata(manifest.round, manifest.client),
        SHARD_META: f"{index}/{count}",
    }
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        raise reject(
            "malformed-update",
            f"shard {index}'s header metadata {wrong} disagrees with the manifest's {expected}",
        )
    try:
        rows = json.loads(meta.get(ROWS_META, ""))
    except ValueError:
        rows = None
    if not isinstance(rows, dict) or set(rows) != set(reader.keys()):
        raise reject(
            "malformed-update",
            f"shard {index}'s header must map every tensor it holds to its rows "
            f"({ROWS_META!r}: {{name: [start, stop]}})",
        )
    out: dict[str, _Piece] = {}
    for name, span in rows.items():
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(type(x) is int for x in span)
            or not 0 <= span[0] < span[1]
        ):
            raise reject(
                "malformed-update",
                f"shard {index}: rows of {name!r} must be [start, stop] with 0 <= start < stop",
            )
        out[name] = _Piece(index, (span[0], span[1]), reader.spec(name).dtype)
    return out


def _check_tiling(
    name: str,
    want: TensorSpec,
    pieces: list[_Piece],
    readers: Sequence[WeightsReader],
    reject: _Reject,
) -> None:
    total = want.shape[0] if want.shape else 1
    trailing = tuple(want.shape[1:])
    at = 0
    for piece in sorted(pieces, key=lambda p: p.rows):
        start, stop = piece.rows
        if start != at:
            what = "overlap" if start < at else "gap"
            raise reject(
                "malformed-update",
                f"the shards' rows of {name!r} {what} at row {min(start, at)}: every row must "
                "be in exactly one shard",
            )
        got = tuple(readers[piece.shard].spec(name).shape)
        shape = (stop - start, *trailing) if want.shape else ()
        if stop > total or got != shape:
            raise reject(
                "shape-mismatch",
                f"shard {piece.shard} holds rows [{start}, {stop}) of {name!r} with shape "
                f"{list(got)}; the model's tensor is {list(want.shape)}",
            )
        if piece.dtype != pieces[0].dtype:
            raise reject(
                "dtype-mismatch",
                f"the shards hold {name!r} in {dtype_name(pieces[0].dtype)} and "
                f"{dtype_name(piece.dtype)}; one tensor travels in one dtype",
            )
        at = stop
    if at != total:
        raise reject(
            "malformed-update",
            f"the shards' rows of {name!r} stop at {at} of {total}: every row must be in "
            "exactly one shard",
        )


def _write(
    out: Path,
    template: Template,
    plan: Mapping[str, list[_Piece]],
    readers: Sequence[WeightsReader],
    manifest: layout.UpdateManifest,
) -> None:
    """The pieces, tensor by tensor in name order, as one safetensors file: rows are
    contiguous in row-major order, so a tensor's bytes are its pieces' bytes in row order."""
    header: dict[str, object] = {}
    offset = 0
    for name in sorted(template):
        dtype = plan[name][0].dtype
        nbytes = math.prod(template[name].shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_CODES[dtype],
            "shape": list(template[name].shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = dict(sorted(update_metadata(manifest.round, manifest.client).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(template):
            for piece in sorted(plan[name], key=lambda p: p.rows):
                _copy_piece(readers[piece.shard], name, f)
        f.flush()
        os.fsync(f.fileno())


def _copy_piece(reader: WeightsReader, name: str, f: BinaryIO) -> None:
    spec = reader.spec(name)
    numel = math.prod(spec.shape)
    step = max(1, _COPY_BYTES // max(1, spec.dtype.itemsize))
    for start in range(0, numel, step):
        chunk = reader.get_flat_slice(name, start, min(numel, start + step))
        f.write(chunk.view(torch.uint8).numpy().tobytes())


__all__ = [
    "assemble",
    "fetch_shards",
    "shard_path",
    "shards_digest",
    "shards_dir",
    "stream_shard",
    "write_shard",
]
