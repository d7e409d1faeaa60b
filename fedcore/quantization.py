"""int8 updates: float deltas quantised per slice by the client, checked and dequantised by
the aggregator, so an update is a quarter of its float32 size on the wire.

Why it exists: with billion-parameter models the upload of every client every round is the
round's largest transfer. ``updateDtype: bfloat16`` halves it; ``updateDtype: int8`` (task
config, per client) quarters it, at the accuracy cost measured in docs/design.md.

Wire format (the manifest's ``dtype`` is ``"int8"``). For every float tensor ``name`` of the
model, with ``N`` elements in any shape, the update holds two tensors:

* ``name``: int8, the model tensor's shape, every value in [-127, 127] (``q``);
* ``name + SCALES_SUFFIX`` (``"<name>.__int8_scales__"``): float32, shape
  ``[ceil(N / SLICE_ELEMENTS)]`` (``s``; none for an empty tensor).

Slice ``k`` is elements ``[k * SLICE_ELEMENTS, (k + 1) * SLICE_ELEMENTS)`` of the tensor
flattened in row-major order (the last slice may be shorter), and element ``i`` stands for
``q[i] * s[i // SLICE_ELEMENTS]``. Every other tensor (integer, bool) is as in any update.
The slice length is part of the format, not of the file: validation computes the expected
structure from the model alone, so a file that disagrees is rejected before its values
are read.

Quantiser (client): symmetric, per slice: ``s = max|d| / 127`` over the slice (``1.0`` for
an all-zero slice, whose ``q`` are all 0), ``q = round(d / s)``, round half to even.
Rounding is deterministic, not stochastic: a rerun round must give the same bytes, and the
error is bounded anyway: ``|d - q * s| <= s / 2 = max|d| / 254`` per element, relative to
the slice's largest value. A delta holding NaN or inf gets a non-finite scale, so the
aggregator rejects it as ``non-finite`` like a float update. 4096 elements per slice keep an
outlier's reach (it sets the step of its slice) small at 0.1 % of overhead for the scales.

Aggregator: ``check_structure`` and ``check_values`` are what ``fedcore.validation`` runs on
an int8 update (scales finite, > 0 and at most ``max_scale``, which keeps every dequantised
value finite in float32 and in the model's dtype; int8 values in [-127, 127]).
``DequantisedWeights`` is a ``TensorSource`` that reads such a file and yields each float
tensor as float32, slice by slice into one buffer, so every strategy folds it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import torch

from fedcore.layout import UpdateManifest
from fedcore.weights import (
    FLOAT_DTYPES,
    Scratch,
    Template,
    Tensors,
    TensorSpec,
    WeightsReader,
    dtype_name,
    open_weights,
)

INT8_WIRE = "int8"
"""``updateDtype`` value and manifest ``dtype`` of int8-quantised updates."""
SLICE_ELEMENTS = 4096
"""Elements sharing one scale (of a tensor flattened in row-major order)."""
SCALES_SUFFIX = ".__int8_scales__"
"""Appended to a float tensor's name to name its scales."""
Q_MAX = 127
"""Largest magnitude of a quantised value (symmetric: -128 is never written)."""
Int8Problem = tuple[
    Literal[
        "missing-tensor",
        "unknown-tensor",
        "shape-mismatch",
        "dtype-mismatch",
        "non-finite",
        "out-of-range",
    ],
    str,
]
"""A reason code of ``fedcore.validation`` and its detail."""
_DEQUANTISE_SLICES = 256
"""Slices dequantised per step (1 Mi elements): bounds the temporaries to 4 MiB."""


def scales_name(name: str) -> str:
    return name + SCALES_SUFFIX


def slice_count(numel: int) -> int:
    return math.ceil(numel / SLICE_ELEMENTS)


def wire_template(template: Template) -> dict[str, TensorSpec]:
    """The tensors (name -> shape, dtype) of an int8 update of a model with ``template``."""
    wire: dict[str, TensorSpec] = {}
    for name, spec in template.items():
        if spec.dtype in FLOAT_DTYPES:
            wire[name] = TensorSpec(tuple(spec.shape), torch.int8)
            wire[scales_name(name)] = TensorSpec(
                (slice_count(math.prod(spec.shape)),), torch.float32
            )
        else:
            wire[name] = TensorSpec(tuple(spec.shape), spec.dtype)
    return dict(sorted(wire.items()))


def max_scale(model_dtype: torch.dtype) -> float:
    """Largest scale accepted for a tensor of ``model_dtype``: ``Q_MAX`` steps of it stay
    finite in float32 (what it is dequantised into) and in the model's dtype."""
    largest = min(torch.finfo(model_dtype).max, torch.finfo(torch.float32).max)
    return largest / Q_MAX


def quantise_tensor(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)`` of one float delta: int8 of its shape and float32 per slice."""
    if delta.dtype not in FLOAT_DTYPES:
        raise ValueError(f"only float tensors are quantised, not {dtype_name(delta.dtype)}")
    flat = delta.detach().cpu().reshape(-1).to(torch.float32)
    count = slice_count(flat.numel())
    padded = torch.zeros(count * SLICE_ELEMENTS, dtype=torch.float32)
    padded[: flat.numel()] = flat
    rows = padded.view(count, SLICE_ELEMENTS)
    largest = rows.abs().amax(dim=1) if count else torch.zeros(0)
    # A NaN or inf anywhere in a slice makes its scale non-finite: the aggregator rejects
    # the update as non-finite, as it would the float delta.
    finite = torch.isfinite(rows).all(dim=1) if count else torch.zeros(0, dtype=torch.bool)
    scales = torch.where(largest > 0, largest / Q_MAX, torch.ones_like(largest))
    scales = torch.where(finite, scales, torch.full_like(scales, math.nan))
    q = torch.round(rows / scales[:, None]).clamp_(-Q_MAX, Q_MAX)
    q = torch.nan_to_num(q, nan=0.0).to(torch.int8).reshape(-1)[: flat.numel()]
    return q.reshape(delta.shape).contiguous(), scales.contiguous()


def quantise_update(update: Mapping[str, torch.Tensor]) -> Tensors:
    """An update (name -> delta) in the int8 wire format; non-float tensors unchanged."""
    out: Tensors = {}
    for name, tensor in sorted(update.items()):
        if tensor.dtype not in FLOAT_DTYPES:
            out[name] = tensor
            continue
        if scales_name(name) in update:
            raise ValueError(
                f"the model has a tensor named {scales_name(name)!r}, which int8 updates use "
                f"for the scales of {name!r}; rename it or use another updateDtype"
            )
        out[name], out[scales_name(name)] = quantise_tensor(tensor)
    return out


def dequantise(
    q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 values of ``q`` (any shape) with per-slice ``scales``, into ``out`` (flat,
    at least ``q.numel()`` float32 elements) when given; a step of slices at a time."""
    numel = q.numel()
    flat_q = q.reshape(-1)
    result = torch.empty(numel, dtype=torch.float32) if out is None else out[:numel]
    step = _DEQUANTISE_SLICES * SLICE_ELEMENTS
    for start in range(0, numel, step):
        stop = min(numel, start + step)
        first = start // SLICE_ELEMENTS
        per_element = scales[first : slice_count(stop)].repeat_interleave(SLICE_ELEMENTS)
        chunk = result[start:stop]
        chunk.copy_(flat_q[start:stop])
        chunk.mul_(per_element[: stop - start])
    return result.view(q.shape)


# -- aggregator side: checks ----------------------------------------------------------------


def check_structure(template: Template, wire: Mapping[str, TensorSpec]) -> Int8Problem | None:
    """``(reason, detail)`` for the first way an int8 update's tensors differ from what the
    format requires for this model (``fedcore.validation`` reason codes), else None."""
    expected = wire_template(template)
    missing = sorted(set(expected) - set(wire))
    if missing:
        return "missing-tensor", f"the int8 update lacks tensors {_listed(missing)}"
    unknown = sorted(set(wire) - set(expected))
    if unknown:
        return "unknown-tensor", f"the int8 update has tensors the format lacks: {_listed(unknown)}"
    for name, want in expected.items():
        got = wire[name]
        if tuple(got.shape) != tuple(want.shape):
            return (
                "shape-mismatch",
                f"tensor {name!r} has shape {list(got.shape)}; an int8 update of this model "
                f"needs {list(want.shape)}",
            )
        if got.dtype != want.dtype:
            return (
                "dtype-mismatch",
                f"tensor {name!r} has dtype {dtype_name(got.dtype)}; an int8 update of this "
                f"model needs {dtype_name(want.dtype)}",
            )
    return None


def check_values(
    name: str, model_dtype: torch.dtype, q: torch.Tensor, scales: torch.Tensor
) -> Int8Problem | None:
    """``(reason, detail)`` when float tensor ``name``'s int8 values or scales are unusable."""
    if scales.numel():
        bad = int((~torch.isfinite(scales)).sum())
        if bad:
            return (
                "non-finite",
                f"tensor {name!r} has {bad} NaN or infinite scales of {scales.numel()}",
            )
        bound = max_scale(model_dtype)
        low, high = float(scales.min()), float(scales.max())
        if low <= 0:
            return (
                "out-of-range",
                f"tensor {name!r} has a scale of {low:g}; scales must be greater than 0",
            )
        if high > bound:
            return (
                "out-of-range",
                f"tensor {name!r} has a scale of {high:g}, above {bound:g}: {Q_MAX} steps of "
                f"it would not be finite in {dtype_name(model_dtype)}",
            )
    if q.numel() and int(q.min()) < -Q_MAX:
        return (
            "out-of-range",
            f"tensor {name!r} holds the int8 value -128; symmetric int8 updates use "
            f"[-{Q_MAX}, {Q_MAX}]",
        )
    return None


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# -- aggregator side: reading ---------------------------------------------------------------


class DequantisedWeights:
    """A ``TensorSource`` over an int8 update file (validated first): the model's tensor
    names and shapes, float tensors as float32 values, others as stored."""

    def __init__(self, path: Path, template: Template) -> None:
        self._reader: WeightsReader = open_weights(path)
        self._model = dict(template)
        self._q_scratch = Scratch()

    @property
    def path(self) -> Path:
        return self._reader.path

    def template(self) -> dict[str, TensorSpec]:
        return {
            name: TensorSpec(
                tuple(spec.shape), torch.float32 if spec.dtype in FLOAT_DTYPES else spec.dtype
            )
            for name, spec in sorted(self._model.items())
        }

    def get(self, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        spec = self._model[name]
        if spec.dtype not in FLOAT_DTYPES:
            return self._reader.get(name, scratch)
        q = self._reader.get(name, self._q_scratch)
        scales = self._reader.get(scales_name(name))
        numel = q.numel()
        out = None if scratch is None else scratch.take(4 * numel).view(torch.float32)
        return dequantise(q, scales, out)

    def close(self) -> None:
        self._reader.close()

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
        return f"DequantisedWeights({str(self._reader.path)!r})"


def open_update(
    path: Path, manifest: UpdateManifest, template: Template
) -> WeightsReader | DequantisedWeights:
    """A validated update file as a ``TensorSource``: dequantised when its manifest says
    ``int8``, else the file as it is."""
    if manifest.dtype == INT8_WIRE:
        return DequantisedWeights(path, template)
    return open_weights(path)


__all__ = [
    "INT8_WIRE",
    "Q_MAX",
    "SCALES_SUFFIX",
    "SLICE_ELEMENTS",
    "DequantisedWeights",
    "Int8Problem",
    "check_structure",
    "check_values",
    "dequantise",
    "max_scale",
    "open_update",
    "quantise_tensor",
    "quantise_update",
    "scales_name",
    "wire_template",
]
