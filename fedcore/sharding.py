"""Training a model no rank can hold whole: a client's ranks as one FSDP2 group.

With ``spec.clients[].parallelism.mode: fsdp`` a client's ranks train with FSDP2
(``torch.distributed.fsdp.fully_shard``) instead of DDP. FSDP2 shards every parameter along
its first dimension over the ranks (``torch.chunk``'s rule: rank ``i`` holds rows
``[i*c, min((i+1)*c, n))`` with ``c = ceil(n / world_size)``) and gathers one unit's
parameters only while that unit computes. The round's I/O is cut the same way, so the whole
model is never in one rank's memory, not even to download or upload it:

* the model is built on the ``meta`` device (no memory), sharded, then given storage for
  this rank's rows only (``to_empty``);
* every rank reads the global model's safetensors header and then only its own rows of each
  tensor, with ranged reads (``RangeReader.get_range``); tensors FSDP does not shard (buffers)
  are read whole. Ranged bytes cannot be checked against the round's signed sha256, which
  covers the whole file, so rank 0 first streams the whole object through sha256 (network
  and a 8 MiB buffer, never the model in memory) and the group trains only if it matches;
* every rank trains on its ``DistributedSampler`` shard of the data (the task's ``train``,
  given the sharded model: gradients are reduce-scattered, the mean over ranks as with DDP);
* every rank re-reads its rows of the global model (not kept during training: it would cost
  a share of memory), writes ``local - global`` for its rows as one update shard
  (``fedcore.sharded_update``) and uploads it; rank 0 gathers the shards' digests (not their
  bytes) and writes the signed manifest listing them, last.

Units: every module that owns parameters directly is sharded as one unit, then the root,
unless the task names its own (``shard_units(model, ctx) -> list[nn.Module]``, e.g. the
blocks of a transformer). Memory per rank: ``1/world_size`` of parameters, gradients and
optimizer state, plus the largest unit gathered (two while FSDP prefetches the next one)
and its gradient. Time: an all-gather per unit forward and backward and a reduce-scatter of
gradients; the global's bytes are read once by every rank's share and once by rank 0 to hash.

Device: the ranks' device comes from ``fedcore.distributed`` (``cuda:LOCAL_RANK`` under
NCCL, the CPU under gloo); the device mesh is made on that device type. Not supported with
FSDP: SCAFFOLD and FedProx (their per-parameter state assumes whole tensors) and the ``int8``
wire dtype (its scales are per slice of a whole tensor); the client refuses them up front.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard

from fedcore import layout
from fedcore.distributed import all_gather_object, broadcast_object
from fedcore.errors import FedcoreError, ObjectExists, RoundProtocolError, TaskError
from fedcore.records import fit_metrics
from fedcore.round_watch import Work
from fedcore.sharded_update import shards_digest, stream_shard
from fedcore.signing import sign_manifest
from fedcore.store import ObjectStore
from fedcore.store.base import RangeReader
from fedcore.tasks.base import derive_seed, global_batch_size, train_loader
from fedcore.weights import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    SAFETENSORS_DTYPES,
    TensorSpec,
    dtype_name,
)

if TYPE_CHECKING:
    from fedcore.client import ClientRank

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 8 << 20
"""Rank 0 hashes the global model in ranged reads of this size: its memory, whatever the
model's size."""
MAX_HEADER_BYTES = 100 << 20
"""Largest safetensors header a rank reads (safetensors' own limit)."""


def check_supported(rank: ClientRank) -> None:
    """Refuse, before any training, what FSDP training does not support (``TaskError``)."""
    name = rank.client.name
    if rank.spec.strategy.name == "scaffold" or rank.spec.strategy.proximal_mu:
        raise TaskError(
            f"client {name!r} has parallelism.mode fsdp, which does not support "
            f"strategy {rank.spec.strategy.name!r} with control variates or a proximal term; "
            "use mode ddp or another strategy"
        )
    if rank.options.wire_dtype == torch.int8:
        raise TaskError(
            f"client {name!r} has parallelism.mode fsdp, which cannot upload int8 updates; "
            "use updateDtype float32, bfloat16 or float16"
        )


@dataclass(frozen=True)
class RowSpan:
    """This rank's rows ``[start, stop)`` of one tensor (``whole``: not sharded by FSDP)."""

    start: int
    stop: int
    whole: bool


def rows_of(tensor: torch.Tensor, rank: int, world_size: int) -> RowSpan:
    """Which rows of ``tensor``'s full shape this rank holds: a DTensor sharded on dim 0 by
    ``torch.chunk``'s rule (checked against its local shape), else the whole tensor."""
    if not isinstance(tensor, DTensor):
        return RowSpan(0, tensor.shape[0] if tensor.dim() else 1, whole=True)
    if tuple(tensor.placements) != (Shard(0),):
        raise FedcoreError(f"FSDP placed a tensor as {tensor.placements}, not Shard(0)")
    n = tensor.shape[0]
    chunk = math.ceil(n / world_size)
    start = min(rank * chunk, n)
    stop = min(start + chunk, n)
    if tensor.to_local().shape[0] != stop - start:
        raise FedcoreError(
            f"FSDP gave rank {rank} {tensor.to_local().shape[0]} rows of a {n}-row tensor; "
            f"expected {stop - start} (torch.chunk's rule)"
        )
    return RowSpan(start, stop, whole=False)


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    """Absolute byte offset of the tensor's data in the object."""


class GlobalReader:
    """The round's global model in the store, read by ranges: its header, then rows."""

    def __init__(self, store: RangeReader, key: str, uri: str, size: int) -> None:
        self.store, self.key, self.uri = store, key, uri
        if size < 8:
            raise RoundProtocolError(f"{uri} is {size} bytes, too short for safetensors")
        (length,) = struct.unpack("<Q", store.get_range(key, 0, 8))
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise RoundProtocolError(f"{uri} declares a {length}-byte header; not safetensors")
        try:
            header = json.loads(store.get_range(key, 8, length))
        except ValueError as e:
            raise RoundProtocolError(f"{uri}'s header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise RoundProtocolError(f"{uri}'s header is not a JSON object")
        header.pop("__metadata__", None)
        self.entries: dict[str, _Entry] = {}
        for name, item in header.items():
            try:
                dtype = SAFETENSORS_DTYPES[item["dtype"]]
                shape = tuple(int(d) for d in item["shape"])
                begin, end = (int(x) for x in item["data_offsets"])
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                raise RoundProtocolError(f"{uri}: header entry {name!r} is malformed") from e
            nbytes = math.prod(shape) * dtype.itemsize
            if min(shape, default=0) < 0 or end - begin != nbytes or begin < 0:
                raise RoundProtocolError(f"{uri}: tensor {name!r}'s offsets disagree with shape")
            if 8 + length + end > size:
                raise RoundProtocolError(f"{uri}: tensor {name!r} runs past the end of the file")
            self.entries[name] = _Entry(dtype, shape, 8 + length + begin)

    def read_rows(self, name: str, want: torch.Tensor, span: RowSpan) -> torch.Tensor:
        """Rows ``span`` of tensor ``name``, checked against the model's full ``want``."""
        entry = self.entries.get(name)
        if entry is None:
            raise TaskError(f"the global model {self.uri} lacks tensor {name!r} of the model")
        if entry.shape != tuple(want.shape) or entry.dtype != want.dtype:
            raise TaskError(
                f"the global model's {name!r} is {list(entry.shape)} {dtype_name(entry.dtype)}, "
                f"the model's is {list(want.shape)} {dtype_name(want.dtype)}"
            )
        row = math.prod(entry.shape[1:]) * entry.dtype.itemsize if entry.shape else 0
        trailing = entry.shape[1:]
        if not entry.shape:  # a 0-d tensor
            data = self.store.get_range(self.key, entry.offset, entry.dtype.itemsize)
            return torch.frombuffer(bytearray(data), dtype=entry.dtype).reshape(())
        count = span.stop - span.start
        data = self.store.get_range(self.key, entry.offset + span.start * row, count * row)
        if not data:
            return torch.empty((0, *trailing), dtype=entry.dtype)
        return torch.frombuffer(bytearray(data), dtype=entry.dtype).reshape(count, *trailing)


MMAP_THRESHOLD_BYTES = 1 << 20
"""Blocks from this size up come from (and go back to) the OS directly: see
``release_freed_blocks``."""


def release_freed_blocks() -> None:
    """Make glibc hand large freed blocks back to the OS (Linux; elsewhere a no-op).

    FSDP allocates and frees a whole unit's parameters and gradients at every forward and
    backward. glibc raises its mmap threshold to the largest block freed (up to 32 MiB), so
    after the first unit those buffers come from the heap and freed ones stay resident: on
    CPU the process grew by about the whole model in a round (measured, ``make bench``),
    which is what FSDP exists to avoid. A fixed threshold keeps large blocks mmapped.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        log.debug("mallopt is not available; freed FSDP buffers may stay resident")


_M_MMAP_THRESHOLD = -3


def stream_sha256(store: RangeReader, key: str, size: int) -> str:
    """sha256 of the whole object, read in ``HASH_CHUNK_BYTES`` ranges."""
    h = hashlib.sha256()
    for start in range(0, size, HASH_CHUNK_BYTES):
        h.update(store.get_range(key, start, min(HASH_CHUNK_BYTES, size - start)))
    return h.hexdigest()


class ShardedTraining:
    """One rank's FSDP side of ``fedcore.client.ClientRank`` (built when the client's
    ``parallelism.mode`` is ``fsdp``)."""

    def __init__(self, owner: ClientRank) -> None:
        check_supported(owner)
        if owner.store is None:
            raise FedcoreError(
                f"every rank of FSDP client {owner.client.name!r} reads and writes the store; "
                "this rank was given none"
            )
        if not isinstance(owner.store, RangeReader):
            raise FedcoreError(f"{type(owner.store).__name__} cannot read ranges (get_range)")
        self.owner = owner
        self.store: ObjectStore = owner.store
        self.ranges: RangeReader = owner.store
        self._model: nn.Module | None = None
        self._data: Any = None

    # -- setup, once per process ------------------------------------------------------------

    def _prepare(self, ctx: Any) -> tuple[nn.Module, Any]:
        if self._model is None:
            from fedcore import client as client_module  # the client imports this module

            owner = self.owner
            release_freed_blocks()
            client_module._seed_everything(derive_seed(owner.spec.seed, "init"))
            with torch.device("meta"):
                model = owner.task.build_model(ctx)
            if not isinstance(model, nn.Module):
                raise TaskError(
                    f"{owner.spec.task.entrypoint}.build_model returned a "
                    f"{type(model).__name__}, not a torch.nn.Module"
                )
            mesh = init_device_mesh(ctx.device.type, (owner.dist.world_size,))
            hook = getattr(owner.task, "shard_units", None)
            units = (
                list(hook(model, ctx))
                if callable(hook)
                else [
                    m
                    for m in model.modules()
                    if m is not model and any(True for _ in m.parameters(recurse=False))
                ]
            )
            for unit in units:
                fully_shard(unit, mesh=mesh)
            fully_shard(model, mesh=mesh)
            model.to_empty(device=ctx.device)
            self._model = model
            self._data = owner.task.train_dataset(ctx)
            n = client_module._length(self._data, owner.spec.task.entrypoint)
            sizes = all_gather_object(n)
            if len(set(sizes)) != 1:
                raise TaskError(
                    f"the ranks of client {owner.client.name!r} loaded different data: "
                    f"{sizes} samples; train_dataset must return the client's whole data on "
                    "every rank (fedkube shards it)"
                )
        return self._model, self._data

    # -- one round --------------------------------------------------------------------------

    def train_round(self, work: Work) -> None:
        from fedcore import client as client_module

        owner = self.owner
        r = work.base_round + 1
        ctx = owner.ctx(r)
        model, data = self._prepare(ctx)
        reader = self._open_global(work)
        self._load(model, reader)
        client_module._seed_everything(
            derive_seed(owner.spec.seed, "train", r, owner.client.name, owner.dist.rank)
        )
        loader = train_loader(
            data,
            batch_size=global_batch_size(owner.task, ctx),
            ctx=ctx,
            shuffle_seed=derive_seed(owner.spec.seed, "shuffle", r, owner.client.name),
        )
        started = time.monotonic()
        metrics = owner.task.train(model, loader, ctx)
        seconds = time.monotonic() - started
        for p in model.parameters():
            p.grad = None  # the task's gradients: a share of memory the upload can use
        group_metrics = client_module._mean_metrics(
            all_gather_object(client_module._float_metrics(metrics))
        )
        shard = self._write_shard(r, model, reader)
        shards = [layout.UpdateShard.model_validate(s) for s in all_gather_object(shard)]
        if owner.dist.is_leader:  # the others go on to the next poll, which rank 0 leads
            num_samples = client_module._length(data, owner.spec.task.entrypoint)
            self._commit(work, shards, num_samples, group_metrics, seconds)

    def _open_global(self, work: Work) -> GlobalReader:
        """Check the global's digest on rank 0 (streamed), then open it on every rank."""
        key = layout.global_key(work.base_round)
        uri = self.store.uri(key)
        size = self.store.size(key)
        problem: str | None = None
        if self.owner.dist.is_leader:
            got = stream_sha256(self.ranges, key, size)
            if got != work.base_sha256:
                problem = (
                    f"{uri} has sha256 {got[:12]}..., but round {work.base_round}'s record "
                    f"names {work.base_sha256[:12]}..."
                )
        problem = broadcast_object(problem)
        if problem is not None:
            raise RoundProtocolError(problem)
        return GlobalReader(self.ranges, key, uri, size)

    def _load(self, model: nn.Module, reader: GlobalReader) -> None:
        rank, world = self.owner.dist.rank, self.owner.dist.world_size
        state = model.state_dict()
        unknown = sorted(set(reader.entries) - set(state))
        if unknown:
            raise TaskError(
                f"the global model has tensors the model lacks: {unknown[:5]}; "
                f"{self.owner.spec.task.entrypoint}.build_model makes another model"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                span = rows_of(tensor, rank, world)
                local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
                local.copy_(reader.read_rows(name, tensor, span))

    def _write_shard(self, r: int, model: nn.Module, reader: GlobalReader) -> dict[str, Any]:
        """This rank's rows of ``local - global`` as its update shard, computed a tensor at
        a time as the file is written (``stream_shard``), uploaded; the manifest entry."""
        owner = self.owner
        rank, world = owner.dist.rank, owner.dist.world_size
        wire = owner.options.wire_dtype
        state = model.state_dict()
        plan: dict[str, tuple[TensorSpec, tuple[int, int]]] = {}
        for name, tensor in state.items():
            span = rows_of(tensor, rank, world)
            if span.stop == span.start or (span.whole and rank != 0):
                continue  # an empty share; whole tensors come from rank 0
            local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
            dtype = wire if wire is not None and local.dtype in FLOAT_DTYPES else local.dtype
            rows = (0, 1) if not local.shape else (span.start, span.stop)
            plan[name] = (TensorSpec(tuple(local.shape), dtype), rows)

        def piece(name: str) -> torch.Tensor:
            tensor = state[name]
            span = rows_of(tensor, rank, world)
            local = (tensor.to_local() if isinstance(tensor, DTensor) else tensor).cpu()
            with torch.no_grad():
                base = reader.read_rows(name, tensor, span)
                if local.dtype == torch.bool:
                    delta = local ^ base
                else:
                    delta = local - base
                    if wire is not None and local.dtype in FLOAT_DTYPES:
                        delta = delta.to(wire)
            return delta.contiguous()

        path = owner.workdir / f"update-{r:06d}-shard-{rank:05d}.safetensors"
        try:
            entry = stream_shard(
                path, plan, piece, round=r, client=owner.client.name, index=rank, count=world
            )
            self.store.put_file(layout.shard_key(r, owner.client.name, rank, world), path)
        finally:
            path.unlink(missing_ok=True)
        return entry.model_dump(mode="json")

    def _commit(
        self,
        work: Work,
        shards: list[layout.UpdateShard],
        num_samples: int,
        metrics: Mapping[str, float],
        seconds: float,
    ) -> None:
        owner = self.owner
        r = work.base_round + 1
        wire = owner.options.wire_dtype or DTYPE_NAMES["float32"]
        manifest = layout.UpdateManifest(
            client=owner.client.name,
            round=r,
            base_round=work.base_round,
            base_sha256=work.base_sha256,
            num_samples=num_samples,
            metrics=fit_metrics(
                {**metrics, "samples": float(num_samples), "train_seconds": seconds}
            ),
            update_sha256=shards_digest(shards),
            update_bytes=sum(s.bytes for s in shards),
            dtype=dtype_name(wire),
            shards=shards,
        )
        if owner.signing_key is not None:
            manifest = sign_manifest(manifest, owner.signing_key)
        try:
            self.store.put_bytes(
                layout.manifest_key(r, owner.client.name), manifest.to_json(), if_absent=True
            )
        except ObjectExists:
            log.warning("round %d: a manifest was already in the store; kept it", r)
        log.info(
            "round %d: uploaded a sharded update (%d shards, %d samples)",
            r,
            len(shards),
            num_samples,
        )


__all__ = ["GlobalReader", "RowSpan", "ShardedTraining", "check_supported", "rows_of"]
