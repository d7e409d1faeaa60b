"""A server optimizer's state of the model's size, in memory or on local disk, by the slice.

Why it exists: FedAvgM keeps a momentum and FedOpt two moments per float tensor, each as
large as the model. With ``spec.aggregator.accumulator: disk`` the round's sum is on disk
(``fedcore.strategies.disk_accumulator``); keeping this state whole in memory would undo
that. ``ServerState`` holds it either way and serves the server step one slice at a time:

* State keys are ``<prefix><tensor name>`` (``momentum/w``, ``first_moment/w``), one per
  float tensor of the model per prefix, in ``server_state_dtype`` of the tensor's dtype.
* The previous round's state comes from tensors in memory (``load``, or an in-memory
  ``finalize``), from a state file downloaded from the store (``open``: the file is kept
  open and read a slice at a time, never whole), or from the scratch file the previous
  disk ``finalize`` wrote.
* A disk ``finalize`` writes the new state into a fresh anonymous scratch file
  (``begin_writing``, ``write``) and switches to it only once the whole model is out
  (``commit_written``). A step that fails half-way leaves the previous state untouched (the
  scratch file is dropped with the strategy), so there is nothing half-written to resume.
* ``save`` streams the state into its safetensors file (``fedcore.weights_stream``), the
  same bytes ``save_weights`` writes for the same tensors in memory: the round's
  ``strategy_sha256`` does not depend on the accumulator either.

Memory in disk mode: one slice per prefix being read and one being written (8 MiB at most
each); disk: the previous state (a downloaded file or a scratch file), the new one, and its
safetensors copy while it is uploaded.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from fedcore.strategies.base import arithmetic_threads, server_state_dtype
from fedcore.strategies.disk_accumulator import SliceFile, slices
from fedcore.weights import (
    FLOAT_DTYPES,
    Tensors,
    TensorSpec,
    WeightsReader,
    template_of,
)
from fedcore.weights_stream import StreamingWeightsWriter

Slices = tuple[torch.Tensor | None, ...]
"""One value per prefix: a tensor (whole or a flat slice), or None where there is no state
yet (the first round)."""


class ServerState:
    """Per-float-tensor state under ``prefixes``, read and written whole or by the slice."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self._memory: dict[str, torch.Tensor] = {}
        """State held in memory, by key."""
        self._reader: WeightsReader | None = None
        """An opened state file (``open``)."""
        self._file: SliceFile | None = None
        """The scratch file the last disk finalize wrote."""
        self._specs: dict[str, TensorSpec] = {}
        """Shape and dtype of each key of ``_reader`` or ``_file``."""
        self._next: SliceFile | None = None
        self._next_specs: dict[str, TensorSpec] = {}

    # -- what is kept --------------------------------------------------------------------

    @property
    def on_disk(self) -> bool:
        """Whether the state is read from a file (a loaded state file or a scratch file)."""
        return self._reader is not None or self._file is not None

    def specs(self) -> dict[str, TensorSpec]:
        """Shape and dtype of every key kept, sorted."""
        if self.on_disk:
            return dict(sorted(self._specs.items()))
        return template_of(dict(sorted(self._memory.items())))

    def of(self, prefix: str) -> dict[str, TensorSpec]:
        """Tensor name -> spec of the state kept under ``prefix``."""
        return {
            key.removeprefix(prefix): spec
            for key, spec in self.specs().items()
            if key.startswith(prefix)
        }

    def _read(self, key: str, start: int, stop: int) -> torch.Tensor:
        if self._file is not None:
            return self._file.read(key, start, stop)
        if self._reader is not None:
            return self._reader.get_flat_slice(key, start, stop)
        return self._memory[key].reshape(-1)[start:stop]

    def _has(self, key: str) -> bool:
        return key in (self._specs if self.on_disk else self._memory)

    def slice(self, name: str, start: int, stop: int) -> Slices:
        """Elements ``[start, stop)`` of tensor ``name``'s state under each prefix, flat
        (read-only: a view of the kept tensor in memory)."""
        return tuple(
            self._read(p + name, start, stop) if self._has(p + name) else None
            for p in self.prefixes
        )

    def take(self, name: str) -> Slices:
        """Tensor ``name``'s whole state under each prefix, forgotten here (the in-memory
        step keeps the new one with ``keep``)."""
        return tuple(self._memory.pop(p + name, None) for p in self.prefixes)

    def keep(self, name: str, values: tuple[torch.Tensor, ...]) -> None:
        """Keep ``values`` (one whole tensor per prefix) as tensor ``name``'s new state."""
        for prefix, value in zip(self.prefixes, values, strict=True):
            self._memory[prefix + name] = value

    def tensors(self) -> Tensors:
        """Every key's whole tensor (read from disk when it lives there): for tests, small
        models and the in-memory path."""
        if not self.on_disk:
            return dict(sorted(self._memory.items()))
        out: Tensors = {}
        for key, spec in sorted(self._specs.items()):
            out[key] = self._read(key, 0, math.prod(spec.shape)).clone().reshape(spec.shape)
        return out

    def to_memory(self) -> None:
        """Read state kept on disk into memory (the in-memory accumulator steps whole tensors)."""
        if self.on_disk:
            self.load(self.tensors())

    # -- replacing it ---------------------------------------------------------------------

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Keep these tensors (keys under the prefixes, checked by the caller)."""
        self._close_sources()
        self._memory = {key: tensor.detach().cpu() for key, tensor in tensors.items()}

    def open(self, reader: WeightsReader, keys: list[str]) -> None:
        """Read the state ``keys`` from ``reader`` from now on, a slice at a time; takes
        ownership of it (closed when replaced, or with this object)."""
        self._close_sources()
        self._memory = {}
        self._reader = reader
        self._specs = {key: reader.spec(key) for key in keys}
        weakref.finalize(self, reader.close)

    def begin_writing(self, template: Mapping[str, TensorSpec], directory: Path | None) -> None:
        """Start a new state for a model of this structure in a scratch file under
        ``directory``: every float tensor under every prefix (nothing without prefixes)."""
        self.drop_written()
        if not self.prefixes:
            return
        layout: dict[str, tuple[int, torch.dtype]] = {}
        specs: dict[str, TensorSpec] = {}
        for prefix in self.prefixes:
            for name, spec in sorted(template.items()):
                if spec.dtype in FLOAT_DTYPES:
                    keep = server_state_dtype(spec.dtype)
                    layout[prefix + name] = (math.prod(spec.shape), keep)
                    specs[prefix + name] = TensorSpec(tuple(spec.shape), keep)
        self._next = SliceFile(layout, directory, what="the server optimizer's state")
        self._next_specs = specs

    def write(self, name: str, start: int, values: tuple[torch.Tensor, ...]) -> None:
        """Store ``values`` (one flat slice per prefix) at ``start`` of ``name``'s new state."""
        if not self.prefixes:
            return
        if self._next is None:
            raise RuntimeError("call begin_writing before writing the new state")
        for prefix, value in zip(self.prefixes, values, strict=True):
            self._next.write(prefix + name, start, value)

    def commit_written(self) -> None:
        """The new state is complete: read it from now on, and forget the previous one."""
        if not self.prefixes:
            return
        if self._next is None:
            raise RuntimeError("call begin_writing before committing the new state")
        self._close_sources()
        self._memory = {}
        self._file, self._specs = self._next, self._next_specs
        self._next, self._next_specs = None, {}

    def drop_written(self) -> None:
        """Forget a new state begun but not committed (the previous one stays)."""
        if self._next is not None:
            self._next.close()
        self._next, self._next_specs = None, {}

    def _close_sources(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._file is not None:
            self._file.close()
        self._reader, self._file, self._specs = None, None, {}

    # -- reading it out -------------------------------------------------------------------

    def flat_slices(self, key: str) -> Iterator[torch.Tensor]:
        """Key ``key``'s values, flat, a slice at a time."""
        spec = self.specs()[key]
        for start, stop in slices(math.prod(spec.shape)):
            yield self._read(key, start, stop)

    def non_finite(self, label: str = "") -> list[str]:
        """Keys (prefixed by ``label``) whose values hold NaN or inf, sorted; read a slice
        at a time."""
        bad = []
        with arithmetic_threads():
            for key in self.specs():
                if not all(bool(torch.isfinite(s).all()) for s in self.flat_slices(key)):
                    bad.append(f"{label}{key}")
        return bad

    def save(
        self, path: Path, extra: Mapping[str, torch.Tensor], metadata: Mapping[str, str | int]
    ) -> list[str]:
        """Stream the state and the small ``extra`` tensors (the clipping bound) into a
        safetensors file at ``path``; the keys (``state `` + key) holding NaN or inf."""
        template = {**self.specs(), **template_of(extra)}
        bad: list[str] = []
        with arithmetic_threads(), StreamingWeightsWriter(path, template, metadata) as out:
            for key in out.order:
                values: Iterable[torch.Tensor] = (
                    [extra[key].reshape(-1)] if key in extra else self.flat_slices(key)
                )
                finite = True
                for piece in values:
                    finite = finite and bool(torch.isfinite(piece).all())
                    out.write(key, piece)
                if not finite and template[key].dtype in FLOAT_DTYPES:
                    bad.append(f"state {key}")
        return sorted(bad)

    def close(self) -> None:
        """Give back the files (and memory) the state holds."""
        self.drop_written()
        self._close_sources()
        self._memory = {}


__all__ = ["ServerState", "Slices"]
