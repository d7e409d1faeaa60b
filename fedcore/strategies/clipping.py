"""Norm clipping of each client update (``strategy.clipNorm``, ``strategy.clipQuantile``).

Without it a client whose delta is 10^6 times the others' norm moves the model 10^5 times as
far. With a bound ``C`` each update's delta is scaled by ``min(1, C / ||Δ_k||)`` before it is
folded, where ``||Δ_k||`` is the L2 norm over all its float tensors together (integer and
bool tensors are counters and constants: not clipped). Clipping shrinks the delta, not the
client's weight: the round is ``Σ w_k · s_k · Δ_k / Σ w_k`` with ``s_k`` the scale.

Fixed or adaptive. ``clipNorm`` alone is a fixed bound. With ``clipQuantile`` ``q`` too, the
bound adapts: round ``r`` clips at the ``q``-quantile of the norms of the updates folded in
round ``r - 1`` (``clipNorm`` is round 1's bound). Why the previous round's and not this
round's: this round's quantile is known only when every update is in, but the aggregator
folds each update as it arrives (O(model) memory); using the previous round's keeps the fold
streaming, and the bound is strategy state (``clip/bound`` in
``rounds/NNNNNN/strategy.safetensors``), so a restarted aggregator clips exactly as an
undisturbed one. The norms measured are the unclipped ones, so the bound follows the
clients' honest scale; one huge update moves a quantile below 1 by at most one rank.

Cost: the norm is one more read of the update, a slice at a time (``||Δ||^2`` summed in
float64 over the slices of ``disk_accumulator.SLICE_ELEMENTS`` elements, the same slices
whether the update is read from a file or held in memory, so both give the same norm to the
bit): time grows with the update's size, memory with one slice for a file (the largest
tensor for other sources); the round keeps one float per folded update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from fedcore.strategies.disk_accumulator import flat_slices
from fedcore.weights import FLOAT_DTYPES, Scratch, TensorSource, TensorSpec

BOUND_KEY = "clip/bound"
"""State key of the adaptive bound: a float64 tensor of one element."""


def check_clipping(clip_norm: float | None, clip_quantile: float | None) -> None:
    """Raise ``ValueError`` for a bound that is not a finite number > 0, a quantile outside
    (0, 1], or a quantile without the first round's bound."""
    if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    if clip_quantile is not None:
        if not (math.isfinite(clip_quantile) and 0 < clip_quantile <= 1):
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        if clip_norm is None:
            raise ValueError(
                "clip_quantile needs clip_norm, the bound of the first round (before any norm "
                "was measured); set both"
            )


def update_norm(
    update: TensorSource, names: Iterable[tuple[str, TensorSpec]], scratch: Scratch
) -> float:
    """The L2 norm over every float tensor of ``update`` together, read slice by slice."""
    squares = 0.0
    for name, spec in names:
        if spec.dtype not in FLOAT_DTYPES:
            continue
        for _, _, t in flat_slices(update, name, math.prod(spec.shape), scratch):
            squares += float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    return math.sqrt(squares)


def clip_scale(norm: float, bound: float | None) -> float:
    """``min(1, bound / norm)``: 1 without a bound, or for an update already within it."""
    if bound is None or norm <= bound:
        return 1.0
    return bound / norm


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile with linear interpolation between order statistics (NumPy's
    default), in plain floats so it is the same on every machine."""
    if not values:
        raise ValueError("the quantile of no values is undefined")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


__all__ = ["BOUND_KEY", "check_clipping", "clip_scale", "quantile", "update_norm"]
