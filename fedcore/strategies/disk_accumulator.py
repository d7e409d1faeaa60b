"""The weighted sums' accumulator on local disk, so the aggregator's memory does not grow with
the model (FedAvg and the strategies built on it, and DP-FedAvg).

Why it exists: the in-memory accumulator costs 8 bytes per parameter (2x a float32 model),
plus the new model at ``finalize``; a model of tens of GB does not fit an aggregator pod, but
fits its local disk. ``spec.aggregator.accumulator: disk`` keeps the sum ``Σ w_k Δ_k`` in
one file instead, folded slice by slice:

* Layout: one flat array, float64 for float tensors and int64 for integer ones (8 bytes per
  element either way), the tensors in sorted name order, each at a fixed byte offset. Bool
  tensors (constants of the model) have no region.
* ``fold`` reads each tensor of the update ``SLICE_ELEMENTS`` at a time (a positioned read
  of just those bytes, ``WeightsReader.get_flat_slice``; other sources are read a tensor at
  a time), reads the same slice of the accumulator (``pread``), adds, writes it back
  (``pwrite``). The slice is a whole number of ``add_chunked_``'s chunks and the arithmetic
  per element is the same float64 (int64) add, so the sum is bit for bit the in-memory one
  for the same fold order (a test pins it).
* ``finalize`` (``FedAvg.finalize_to_file``) streams ``base + η · acc / n`` slice by slice
  into the safetensors output (``fedcore.weights_stream``: header first, since the shapes
  are known), the same bytes ``save_weights`` writes for the in-memory result.

Memory: one accumulator slice (8 MiB), one update slice (up to 8 MiB), the ``add_chunked_``
temporary (2 MiB) and the output slice: constant, whatever the model's size (plus the
largest tensor for a source that cannot read slices: an int8-quantised update). Disk: 8
bytes per parameter, allocated up front (``posix_fallocate``) so that a full disk fails
the round's start with a clear error, not a fold half-way.

Time: a fold reads the update once and reads and writes the accumulator once (``3x`` the
model's bytes through the page cache or disk, against one pass in memory); ``finalize``
reads the accumulator and the base and writes the model.

``SliceFile`` is the same file for flat tensors of any dtype: the accumulator is one, and
a server optimizer's state (``fedcore.strategies.server_state``) another. ``flat_slices``
reads any source a slice at a time (positioned reads from a file), for folds, norms and
the server step alike.

Crash: the file is anonymous (``tempfile.TemporaryFile``: unlinked while open), so a killed
aggregator leaves nothing behind on its disk, and a restarted one rebuilds the round like
the in-memory accumulator does, folding the round's updates again from the store. No
journal: the updates are in the store anyway, and a journal would need an fsync of the whole
accumulator after every fold (its bytes, not the journal's, are what must be durable) to
save one download and fold per update, and only after a crash.
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fedcore.errors import FedcoreError
from fedcore.weights import (
    FLOAT_DTYPES,
    INT_DTYPES,
    Scratch,
    TensorSource,
    TensorSpec,
    WeightsReader,
)

CHUNK_MULTIPLE = 4
SLICE_ELEMENTS = CHUNK_MULTIPLE << 18
"""Elements per slice of a fold or finalize (8 MiB of float64): a whole number of
``fedavg.CHUNK_ELEMENTS``, so each element sees the same arithmetic as in memory, and large
enough that a positioned read or write costs far more than the call itself."""


class AccumulatorSpaceError(FedcoreError):
    """The accumulator's file does not fit the disk it is on."""


@dataclass(frozen=True)
class Region:
    """Where one tensor's values lie in the file."""

    offset: int
    """Byte offset of its first element."""
    numel: int
    dtype: torch.dtype
    """float64 or int64 in the accumulator; the state's dtype in a server state file."""


def slices(numel: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of each slice of a tensor of ``numel`` elements."""
    for start in range(0, numel, SLICE_ELEMENTS):
        yield start, min(numel, start + SLICE_ELEMENTS)


def flat_slices(
    source: TensorSource, name: str, numel: int, scratch: Scratch
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, values)`` of each slice of tensor ``name``, flat: read a slice at a
    time from a file, or sliced from the whole tensor for other sources (read-only)."""
    if isinstance(source, WeightsReader):
        for start, stop in slices(numel):
            yield start, stop, source.get_flat_slice(name, start, stop)
        return
    whole = source.get(name, scratch).reshape(-1)
    for start, stop in slices(numel):
        yield start, stop, whole[start:stop]


class SliceFile:
    """Flat tensors, each of its own dtype at a fixed offset, in an anonymous file on local
    disk, read and written a slice at a time (``pread``/``pwrite``)."""

    def __init__(
        self,
        layout: Mapping[str, tuple[int, torch.dtype]],
        directory: Path | None,
        *,
        what: str = "the disk accumulator",
    ) -> None:
        """``layout``: name -> (elements, dtype), laid out in this order; ``what`` names
        the file in the error when the disk cannot hold it."""
        self.regions: dict[str, Region] = {}
        offset = 0
        for name, (numel, dtype) in layout.items():
            self.regions[name] = Region(offset, numel, dtype)
            offset += dtype.itemsize * numel
        self.nbytes = offset
        where = directory if directory is not None else Path(tempfile.gettempdir())
        self._file = tempfile.TemporaryFile(prefix="fedkube-accumulator-", dir=where)  # noqa: SIM115 (closed by close())
        try:
            if offset:
                os.posix_fallocate(self._file.fileno(), 0, offset)
        except OSError as e:
            self._file.close()
            raise AccumulatorSpaceError(
                f"{what} needs {offset / 2**30:.2f} GiB in {where}, which cannot hold it "
                f"({e.strerror}); give the aggregator more local disk "
                "(spec.aggregator.scratchSizeLimit) or use spec.aggregator.accumulator: memory"
            ) from e
        # An abandoned strategy (the aggregator refolds into a fresh one) gives it back too.
        self._close = weakref.finalize(self, self._file.close)

    def read(
        self, name: str, start: int, stop: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Elements ``[start, stop)`` of ``name``, into ``out`` (1-D, the region's dtype, at
        least that long) or a fresh tensor."""
        region = self.regions[name]
        if out is None:
            out = torch.empty(stop - start, dtype=region.dtype)
        out = out[: stop - start]
        view = out.view(torch.uint8).numpy().data
        done, position = 0, region.offset + region.dtype.itemsize * start
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], position + done)
            if not got:
                raise FedcoreError(f"the scratch file ended inside {name!r}")
            done += got
        return out

    def write(self, name: str, start: int, values: torch.Tensor) -> None:
        """Store ``values`` (the region's dtype) as elements ``start...`` of ``name``."""
        region = self.regions[name]
        if values.dtype != region.dtype or start + values.numel() > region.numel:
            raise ValueError(f"{name!r}: cannot write {values.numel()} elements at {start}")
        view = values.contiguous().view(torch.uint8).numpy().data
        done, position = 0, region.offset + region.dtype.itemsize * start
        while done < len(view):
            done += os.pwrite(self._file.fileno(), view[done:], position + done)

    def close(self) -> None:
        """Give the file's space back (also when the process dies: the file has no name)."""
        self._close()


class DiskAccumulator(SliceFile):
    """Zero-initialised float64/int64 sums of a model's tensors, in an anonymous file."""

    def __init__(self, template: Mapping[str, TensorSpec], directory: Path | None) -> None:
        layout: dict[str, tuple[int, torch.dtype]] = {}
        for name, spec in sorted(template.items()):
            if spec.dtype in FLOAT_DTYPES:
                layout[name] = (math.prod(spec.shape), torch.float64)
            elif spec.dtype in INT_DTYPES:
                layout[name] = (math.prod(spec.shape), torch.int64)
        super().__init__(layout, directory, what="the disk accumulator (8 bytes per parameter)")
        self._buffer = torch.empty(SLICE_ELEMENTS, dtype=torch.float64)

    def read(
        self, name: str, start: int, stop: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Elements ``[start, stop)`` of ``name``'s sum, into a reused buffer (valid until
        the next ``read``) unless ``out`` is given."""
        if out is None:
            out = self._buffer.view(self.regions[name].dtype)
        return super().read(name, start, stop, out)

    def extreme(self, name: str) -> int:
        """``max |sum|`` of an integer tensor (exact, read a slice at a time)."""
        largest = 0
        for start, stop in slices(self.regions[name].numel):
            values = self.read(name, start, stop)
            largest = max(largest, int(values.max()), -int(values.min()))
        return largest


__all__ = [
    "SLICE_ELEMENTS",
    "AccumulatorSpaceError",
    "DiskAccumulator",
    "Region",
    "SliceFile",
    "flat_slices",
    "slices",
]
