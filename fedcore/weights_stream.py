"""Writing a safetensors file tensor slice by tensor slice, header first.

Why it exists: ``save_weights`` needs every tensor in memory at once. The disk accumulator
(``fedcore.strategies.disk_accumulator``) produces the new global model one slice at a time
and must never hold it whole, but the shapes and dtypes are known before any value is
computed, so the header (with every tensor's data offsets) can be written first and the
data appended in order.

The bytes are the ones ``save_weights`` writes for the same tensors and metadata (a test
pins it): safetensors lays the data out by dtype (widest first, in its own order, then by
name), its header is compact JSON with ``__metadata__`` first (here with sorted keys, as
``save_weights`` leaves it), padded with spaces to a multiple of 8 bytes. So a round's
global model has the same sha256 whichever accumulator computed it.

``StreamingWeightsWriter`` writes to a temporary file next to the target and renames it
into place on a clean exit (as ``save_weights`` does); it refuses data that does not match
the header (a tensor out of order, too few or too many bytes), so a bug cannot produce a
file whose header lies about its data.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import torch

from fedcore.weights import SAFETENSORS_CODES, TensorSpec, dtype_name

LAYOUT_RANK: dict[torch.dtype, int] = {
    torch.int64: 0,
    torch.float64: 1,
    torch.float32: 2,
    torch.int32: 3,
    torch.bfloat16: 4,
    torch.float16: 5,
    torch.int16: 6,
    torch.int8: 7,
    torch.uint8: 8,
    torch.bool: 9,
}
"""Order of the data by dtype in a file safetensors writes (its dtype enum, descending)."""


def layout_order(template: Mapping[str, TensorSpec]) -> list[str]:
    """The tensor names in the order their data lies in the file."""
    for name, spec in template.items():
        if spec.dtype not in LAYOUT_RANK:
            raise ValueError(f"tensor {name!r}: dtype {dtype_name(spec.dtype)} cannot be written")
    return sorted(template, key=lambda name: (LAYOUT_RANK[template[name].dtype], name))


def header_bytes(template: Mapping[str, TensorSpec], metadata: Mapping[str, str | int]) -> bytes:
    """The 8-byte length and the padded JSON header of a file holding ``template``."""
    # save_weights always passes a metadata map, so safetensors always writes one.
    header: dict[str, object] = {
        "__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}
    }
    offset = 0
    for name in layout_order(template):
        spec = template[name]
        nbytes = math.prod(spec.shape) * spec.dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class StreamingWeightsWriter:
    """A safetensors file written in layout order (``order``), each tensor in one or more
    ``write`` calls of flat slices; ``path`` appears, complete, when the block exits cleanly."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        template: Mapping[str, TensorSpec],
        metadata: Mapping[str, str | int] | None = None,
    ) -> None:
        self.path = Path(path)
        self._template = dict(template)
        self.order = layout_order(self._template)
        """Tensor names in the order their data must be written."""
        self._header = header_bytes(self._template, metadata or {})
        self._next = 0
        """Index in ``order`` of the tensor being written."""
        self._written = 0
        """Bytes of that tensor written so far."""
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._file.write(self._header)
        self._skip_empty()

    def _expected(self, index: int) -> int:
        spec = self._template[self.order[index]]
        return math.prod(spec.shape) * spec.dtype.itemsize

    def _skip_empty(self) -> None:
        while self._next < len(self.order) and self._written == self._expected(self._next):
            self._next += 1
            self._written = 0

    def write(self, name: str, values: torch.Tensor) -> None:
        """Append the next flat slice of tensor ``name`` (its dtype, contiguous)."""
        if self._next >= len(self.order) or self.order[self._next] != name:
            due = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise ValueError(f"wrote tensor {name!r} out of order; {due!r} is due")
        spec = self._template[name]
        if values.dtype != spec.dtype:
            raise ValueError(
                f"tensor {name!r} is {dtype_name(spec.dtype)} in the header, got a slice of "
                f"{dtype_name(values.dtype)}"
            )
        raw = values.contiguous().view(-1).view(torch.uint8)
        if self._written + raw.numel() > self._expected(self._next):
            raise ValueError(f"tensor {name!r}: more data than its shape holds")
        self._file.write(raw.numpy().data)
        self._written += raw.numel()
        self._skip_empty()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._file.close()
            if exc_type is None:
                if self._next < len(self.order):
                    raise ValueError(
                        f"{self.path}: tensor {self.order[self._next]!r} and those after it "
                        "were not written in full"
                    )
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)


__all__ = ["StreamingWeightsWriter", "header_bytes", "layout_order"]
