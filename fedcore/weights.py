"""Model weights on the wire: safetensors files, read one tensor at a time, and deltas.

Every model that crosses the store (a round's global model, a client's update, the server
optimizer's state, the final model) is a flat ``name -> tensor`` mapping saved as safetensors:
no pickle, so the aggregator can open bytes written by an untrusted party; a small JSON header
that is validated before any data is touched; and per-tensor reads, so the aggregator holds
one tensor of an update at a time, never the whole update (see ``fedcore.strategies.fedavg``
for the memory budget this buys).

Conventions:

* Header metadata (a ``str -> str`` map) carries ``kind`` (``global``, ``update``,
  ``state``, ``final``), ``round`` and, for updates, ``client``; ``update_metadata`` builds it.
  ``fedcore.validation`` requires an update's header to agree with its signed manifest.
* Tied weights and shared storage: safetensors refuses two entries backed by the same storage
  (a tied ``lm_head.weight``/``embed.weight`` pair, fused-QKV views) and non-contiguous tensors.
  ``save_weights`` gives every such entry its own contiguous copy, so every ``state_dict`` key
  survives with its values. The tie itself is not recorded: loading the file with
  ``model.load_state_dict`` writes the same values through both names into the one shared
  parameter, which restores the tied model exactly.
* Deltas (``delta``/``apply``) keep each tensor's dtype, except that a float delta may be
  cast to a lower-precision ``wire_dtype`` to halve upload size. Integer deltas must fit the
  tensor's dtype. Bool tensors (masks) are constants of the model: their delta is all-False,
  and a local model that changed one is refused. The aggregation policy for these non-float
  tensors is documented in ``fedcore.strategies.fedavg``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedcore.errors import FedcoreError

Tensors = dict[str, torch.Tensor]

FLOAT_DTYPES: frozenset[torch.dtype] = frozenset(
    {torch.float16, torch.bfloat16, torch.float32, torch.float64}
)
"""Floating-point dtypes fedkube averages (float8 and complex are not supported)."""

INT_DTYPES: frozenset[torch.dtype] = frozenset(
    {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8}
)
"""Integer dtypes fedkube averages (exactly, in int64; see ``fedcore.strategies.fedavg``)."""

SUPPORTED_DTYPES: frozenset[torch.dtype] = FLOAT_DTYPES | INT_DTYPES | {torch.bool}

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors' dtype codes of the dtypes fedkube reads and writes: the one table every
reader or writer of a header uses (``fedcore.sharding``, ``fedcore.sharded_update``,
``fedcore.weights_stream``)."""
SAFETENSORS_CODES: dict[torch.dtype, str] = {d: c for c, d in SAFETENSORS_DTYPES.items()}
"""The inverse of ``SAFETENSORS_DTYPES``: the code a header names for a dtype."""

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Names of dtypes as written in manifests (``UpdateManifest.dtype``) and error messages."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


class TensorSpec(NamedTuple):
    """Shape and dtype of one tensor: what a model's template holds per name."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)}{list(self.shape)}"


Template = Mapping[str, TensorSpec]
"""A model's structure, name -> (shape, dtype): what every update must match."""


def template_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The template (name -> shape, dtype) of an in-memory state_dict, in sorted name order."""
    return {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in sorted(tensors.items())}


def update_metadata(round: int, client: str) -> dict[str, str]:
    """Header metadata of a client update for ``round`` (what validation expects)."""
    return {"kind": "update", "round": str(round), "client": client}


def _wire_ready(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    """Detached, dense, contiguous CPU tensors with no two entries sharing storage."""
    out: Tensors = {}
    seen_storage: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"weights entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided:
            raise ValueError(
                f"tensor {name!r} has layout {tensor.layout}; only dense tensors can be saved, "
                "convert it with .to_dense() first"
            )
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"tensor {name!r} has dtype {dtype_name(tensor.dtype)}, which fedkube does not "
                f"aggregate; supported: {sorted(dtype_name(d) for d in SUPPORTED_DTYPES)}"
            )
        t = tensor.detach().cpu()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        shared = storage.nbytes() > 0 and ptr in seen_storage
        if storage.nbytes() > 0:
            seen_storage.add(ptr)
        # A tied weight, a view of a fused tensor, or a transposed view: safetensors wants
        # each entry alone in its own contiguous buffer.
        out[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return out


def save_weights(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str | int] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` as safetensors, atomically (temporary file, then rename).

    ``metadata`` goes into the header as strings (``kind``, ``round``, ``client``). Tensors
    that share storage or are not contiguous are copied first (see the module docstring).
    """
    target = Path(path)
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    ready = _wire_ready(tensors)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(ready, tmp, metadata=header)
        _sort_header_metadata(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sort_header_metadata(path: str) -> None:
    """Rewrite the header's ``__metadata__`` with its keys sorted, in place.

    safetensors serializes the metadata from a Rust HashMap, whose order changes from call
    to call, so the same tensors and metadata would give different bytes (and sha256) each
    time: a rerun round could not reproduce its global model's digest. Sorting the keys of
    the same pairs keeps the header's length, so the data offsets stay valid.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # not a permutation of what safetensors wrote; leave it
            return
        f.seek(8)
        f.write(text.ljust(size))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks (constant memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _safe_open(path: Path) -> Any:
    # Any: safetensors' stubs carry no annotations, so its methods are untyped calls.
    return safe_open(str(path), framework="pt", device="cpu")


class Scratch:
    """One reusable read buffer, for callers that read many tensors and keep none of them.

    ``WeightsReader.get(name, scratch)`` reads into it and returns a view of it, valid only
    until the next read into the same scratch. A fresh buffer per tensor would churn the C
    allocator, which keeps freed blocks of varied sizes and so grows the process by several
    times the largest tensor; one buffer sized for the largest tensor holds steady. Other
    sources may ignore it and return their own tensor; a caller must treat the result as
    read-only either way.
    """

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.uint8)

    def take(self, nbytes: int) -> torch.Tensor:
        """The first ``nbytes`` bytes of the buffer, grown (never shrunk) when too small."""
        if self._buffer.numel() < nbytes:
            self._buffer = torch.empty(0, dtype=torch.uint8)  # free before allocating
            self._buffer = torch.empty(nbytes, dtype=torch.uint8)
        return self._buffer[:nbytes]


def _spec_of(checked: Any, name: str) -> TensorSpec:
    view = checked.get_slice(name)
    code = view.get_dtype()
    dtype = SAFETENSORS_DTYPES.get(code)
    if dtype is None:
        raise ValueError(f"tensor {name!r} has safetensors dtype {code}, not supported here")
    return TensorSpec(tuple(int(d) for d in view.get_shape()), dtype)


def _data_extents(
    f: io.FileIO, path: Path, specs: Mapping[str, TensorSpec]
) -> dict[str, tuple[int, int]]:
    """(file offset, byte count) of each tensor, from the header safe_open has validated."""
    f.seek(0)
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    size = os.fstat(f.fileno()).st_size
    extents: dict[str, tuple[int, int]] = {}
    for name, spec in specs.items():
        begin, end = (int(x) for x in header[name]["data_offsets"])
        expected = math.prod(spec.shape) * spec.dtype.itemsize
        if end - begin != expected or data_start + end > size:
            raise FedcoreError(
                f"{path}: tensor {name!r} spans bytes [{begin}, {end}) but its shape and dtype "
                f"need {expected}; the file changed while it was being opened"
            )
        extents[name] = (data_start + begin, end - begin)
    return extents


class WeightsReader:
    """An open safetensors file: names, shapes and dtypes from its header; tensors on demand.

    ``safetensors.safe_open`` validates the header on open (offsets inside the file, sizes
    matching shapes and dtypes, no overlaps); nothing else is read until asked for. ``get``
    then reads one tensor with a plain positioned read into a fresh CPU tensor, instead of
    safetensors' memory map: pages of a mapped file that have been touched stay in the
    process's resident memory until the whole file is unmapped, so folding a mapped update
    would hold all of it (one more model's worth of RSS, measured by ``make bench``), while a
    read holds one tensor at a time. Use it as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with _safe_open(self.path) as checked:
                names = sorted(checked.keys())
                specs = {name: _spec_of(checked, name) for name in names}
                metadata = dict(checked.metadata() or {})
        except FileNotFoundError:
            raise
        except Exception as e:  # safetensors raises its own untyped errors on bad headers
            raise FedcoreError(
                f"{self.path} is not a readable safetensors weights file: {e}".strip()
            ) from e
        self._specs: dict[str, TensorSpec] = specs
        self.metadata: dict[str, str] = metadata
        """The header's ``str -> str`` metadata (``kind``, ``round``, ``client``)."""
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        try:
            self._extents = _data_extents(self._file, self.path, specs)
        except BaseException:
            self._file.close()
            raise

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def spec(self, name: str) -> TensorSpec:
        """Shape and dtype of ``name`` from the header (no data read)."""
        return self._specs[name]

    def template(self) -> dict[str, TensorSpec]:
        """Every tensor's shape and dtype from the header, in sorted name order."""
        return dict(self._specs)

    def get(self, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        """Read one tensor into a fresh CPU tensor, or into ``scratch`` (see ``Scratch``)."""
        if name not in self._specs:
            raise KeyError(f"{self.path} has no tensor named {name!r}")
        spec = self._specs[name]
        start, nbytes = self._extents[name]
        raw = torch.empty(nbytes, dtype=torch.uint8) if scratch is None else scratch.take(nbytes)
        if nbytes:
            buffer = raw.numpy().data
            self._file.seek(start)
            done = 0
            while done < nbytes:
                got = self._file.readinto(buffer[done:])
                if not got:
                    raise FedcoreError(
                        f"{self.path} ended inside tensor {name!r}; it was truncated"
                    )
                done += got
        return raw.view(spec.dtype).reshape(spec.shape)

    def get_flat_slice(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``[start, stop)`` of tensor ``name`` flattened, read alone (one
        positioned read of just those bytes) into a fresh 1-D tensor."""
        if name not in self._specs:
            raise KeyError(f"{self.path} has no tensor named {name!r}")
        spec = self._specs[name]
        numel = math.prod(spec.shape)
        if not 0 <= start <= stop <= numel:
            raise ValueError(f"slice [{start}, {stop}) is outside {name!r} ({numel} elements)")
        size = spec.dtype.itemsize
        offset, _ = self._extents[name]
        nbytes = (stop - start) * size
        raw = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            buffer = raw.numpy().data
            done = 0
            while done < nbytes:
                got = os.preadv(self._file.fileno(), [buffer[done:]], offset + start * size + done)
                if not got:
                    raise FedcoreError(
                        f"{self.path} ended inside tensor {name!r}; it was truncated"
                    )
                done += got
        return raw.view(spec.dtype)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs in sorted name order, each read only when reached."""
        for name in self._specs:
            yield name, self.get(name)

    def load_all(self) -> Tensors:
        """Every tensor in memory at once (clients and tests; the aggregator never does this)."""
        return dict(self.items())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightsReader({str(self.path)!r}, tensors={len(self._specs)})"


class TensorSource(Protocol):
    """Anything a strategy can fold or finalize from: a header-like template and per-name reads.

    ``WeightsReader`` (a file) is the real one; ``InMemoryWeights`` wraps a dict for callers
    that already hold the tensors (tests, small local runs).
    """

    def template(self) -> dict[str, TensorSpec]: ...

    def get(self, name: str, scratch: Scratch | None = None) -> torch.Tensor: ...


class InMemoryWeights:
    """A ``TensorSource`` over tensors already in memory."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], label: str = "in-memory weights"
    ) -> None:
        self._tensors = dict(tensors)
        self._label = label

    def template(self) -> dict[str, TensorSpec]:
        return template_of(self._tensors)

    def get(self, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        return self._tensors[name].detach().cpu()

    def __repr__(self) -> str:
        return f"InMemoryWeights({self._label!r}, tensors={len(self._tensors)})"


def open_weights(path: str | os.PathLike[str]) -> WeightsReader:
    """Open a safetensors weights file for lazy, per-tensor reading.

    Raises ``FedcoreError`` when the header is not valid safetensors, ``FileNotFoundError``
    when there is no such file.
    """
    return WeightsReader(path)


def load_weights(path: str | os.PathLike[str]) -> Tensors:
    """Every tensor of a weights file in memory (clients, tests, small models)."""
    with open_weights(path) as reader:
        return reader.load_all()


def check_same_structure(
    left: Mapping[str, TensorSpec],
    right: Mapping[str, TensorSpec],
    *,
    left_name: str,
    right_name: str,
    compare_dtypes: bool = True,
) -> None:
    """Raise ``ValueError`` naming the first difference in names, shapes or dtypes."""
    missing = sorted(set(left) - set(right))
    extra = sorted(set(right) - set(left))
    if missing or extra:
        raise ValueError(
            f"{right_name} does not have the same tensors as {left_name}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name in sorted(left):
        a, b = left[name], right[name]
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"tensor {name!r} has shape {list(b.shape)} in {right_name} but "
                f"{list(a.shape)} in {left_name}"
            )
        if compare_dtypes and a.dtype != b.dtype:
            raise ValueError(
                f"tensor {name!r} has dtype {dtype_name(b.dtype)} in {right_name} but "
                f"{dtype_name(a.dtype)} in {left_name}"
            )


def _check_int_range(name: str, values: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    info = torch.iinfo(dtype)
    if values.numel() and (int(values.min()) < info.min or int(values.max()) > info.max):
        raise ValueError(
            f"{what} of integer tensor {name!r} does not fit {dtype_name(dtype)} "
            f"[{info.min}, {info.max}]; store it as a wider integer in the model"
        )


def delta(
    local: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    *,
    wire_dtype: torch.dtype | None = None,
) -> Tensors:
    """``local - base`` per tensor: what a client uploads.

    Float tensors are subtracted in their own dtype, then cast to ``wire_dtype`` when it is
    given and narrower (``torch.bfloat16``/``torch.float16`` halve the upload). Integer deltas
    are exact and must fit the tensor's dtype. Bool tensors must be unchanged (their delta is
    all-False); a changed one raises ``ValueError``.
    """
    if wire_dtype is not None and wire_dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"wire_dtype {dtype_name(wire_dtype)} is not a float dtype; use one of "
            f"{sorted(dtype_name(d) for d in FLOAT_DTYPES)}"
        )
    check_same_structure(
        template_of(base),
        template_of(local),
        left_name="the base model",
        right_name="the local model",
    )
    out: Tensors = {}
    for name in sorted(base):
        b, w = base[name].detach().cpu(), local[name].detach().cpu()
        if b.dtype in FLOAT_DTYPES:
            d = w - b
            if wire_dtype is not None and wire_dtype.itemsize < d.dtype.itemsize:
                d = d.to(wire_dtype)
        elif b.dtype == torch.bool:
            if not torch.equal(w, b):
                raise ValueError(
                    f"bool tensor {name!r} changed during local training; fedkube treats bool "
                    "tensors as constants of the model (masks) and cannot average them"
                )
            d = torch.zeros_like(b)
        else:
            d64 = w.to(torch.int64) - b.to(torch.int64)
            _check_int_range(name, d64, b.dtype, "the delta")
            d = d64.to(b.dtype)
        out[name] = d.contiguous()
    return out


def apply(base: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> Tensors:
    """``base + update`` per tensor, in each base tensor's dtype.

    Float sums are computed in float64 and rounded once to the base dtype (as the aggregator
    does), so ``apply(base, delta(local, base))`` recovers ``local`` up to that rounding.
    """
    check_same_structure(
        template_of(base),
        template_of(update),
        left_name="the base model",
        right_name="the delta",
        compare_dtypes=False,
    )
    out: Tensors = {}
    for name in sorted(base):
        b, d = base[name].detach().cpu(), update[name].detach().cpu()
        if b.dtype in FLOAT_DTYPES:
            if d.dtype not in FLOAT_DTYPES:
                raise ValueError(f"delta of float tensor {name!r} has dtype {dtype_name(d.dtype)}")
            out[name] = (b.to(torch.float64) + d.to(torch.float64)).to(b.dtype)
        elif b.dtype == torch.bool:
            if d.dtype != torch.bool or bool(d.any()):
                raise ValueError(f"delta of bool tensor {name!r} must be all-False")
            out[name] = b.clone()
        else:
            if d.dtype != b.dtype:
                raise ValueError(
                    f"delta of integer tensor {name!r} has dtype {dtype_name(d.dtype)}, "
                    f"expected {dtype_name(b.dtype)}"
                )
            s = b.to(torch.int64) + d.to(torch.int64)
            _check_int_range(name, s, b.dtype, "the sum")
            out[name] = s.to(b.dtype)
    return out


__all__ = [
    "DTYPE_NAMES",
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "SUPPORTED_DTYPES",
    "InMemoryWeights",
    "Scratch",
    "Template",
    "TensorSource",
    "TensorSpec",
    "Tensors",
    "WeightsReader",
    "apply",
    "check_same_structure",
    "delta",
    "dtype_name",
    "load_weights",
    "open_weights",
    "save_weights",
    "sha256_file",
    "template_of",
    "update_metadata",
]
