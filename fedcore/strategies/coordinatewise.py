"""Coordinate-wise robust aggregation: each coordinate of the model is reduced on its own over
the round's N deltas (``median``, ``trimmedmean``).

Both are unweighted by definition: every accepted update counts once, whatever its
``num_samples`` (a client declaring a huge count gains nothing), so ``maxWeightShare`` does
not apply and the spec refuses it with them, as it refuses clipping and a server learning
rate (the reduction already bounds any one update's pull).

They cannot stream: ``fold`` keeps each validated update on the aggregator's local disk
(``fedcore.strategies.spool``) and ``finalize`` reads, for each tensor, the same flat slice
of every kept update, stacks them (N x slice, float64 for float tensors, int64 for integer
ones), sorts along the clients and reduces.

Memory: O(N x slice) for the reduction (``spool.SLICE_BYTES``, 32 MiB, a few times that
while sorting) plus the result (one model) and the tensor being built, in float64 (twice the
largest float32 tensor); never N x model. Disk: N x model. Time: O(P x N log N) for P
parameters (one sort of N values per coordinate), plus reading every update once more.

Numerics: float tensors are reduced in float64, added to the base in float64 and rounded
once to the model's dtype. Integer tensors (counters) are reduced exactly in int64 and
rounded to nearest with ties toward +inf, as FedAvg's integer path does: the median of an
even count is the rounded mean of the two middle values, the trimmed mean the rounded mean of
the kept values. Bool tensors are constants: the result is the base tensor. Ties and arrival
order do not matter: sorting makes the result a function of the set of updates.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from fedcore.strategies.base import arithmetic_threads
from fedcore.strategies.spool import (
    SpooledStrategy,
    slice_elements,
)
from fedcore.weights import (
    FLOAT_DTYPES,
    INT_DTYPES,
    Tensors,
    TensorSource,
    check_same_structure,
    dtype_name,
)


class CoordinateWise(SpooledStrategy):
    """Base of strategies that reduce each coordinate over the sorted updates."""

    @abstractmethod
    def reduce(self, ordered: torch.Tensor) -> torch.Tensor:
        """Reduce ``ordered`` (N x slice, sorted along dim 0, float64) to one float64 row."""

    @abstractmethod
    def reduce_int(self, ordered: torch.Tensor) -> torch.Tensor:
        """Reduce ``ordered`` (N x slice, sorted, int64) to one int64 row, exactly."""

    def finalize(self, base: TensorSource) -> Tensors:
        template, spool = self._round("finalize")
        if not spool.kept:
            raise ValueError(
                "cannot finalize a round into which no update was folded; a round needs at "
                "least one accepted update"
            )
        check_same_structure(
            template, base.template(), left_name="the model", right_name=repr(base)
        )
        step = slice_elements(len(spool.kept))
        out: Tensors = {}
        with arithmetic_threads(), spool.open_all() as readers:
            for name, spec in template.items():
                b = base.get(name)
                if spec.dtype not in FLOAT_DTYPES | INT_DTYPES:
                    out[name] = b.clone()
                    continue
                is_float = spec.dtype in FLOAT_DTYPES
                work = torch.float64 if is_float else torch.int64
                flat = b.reshape(-1).to(work)
                for start in range(0, flat.numel(), step):
                    stop = min(start + step, flat.numel())
                    stacked = torch.stack(
                        [r.get_flat_slice(name, start, stop).to(work) for _, r in readers]
                    )
                    ordered = stacked.sort(dim=0, stable=True).values
                    flat[start:stop] += (
                        self.reduce(ordered) if is_float else self.reduce_int(ordered)
                    )
                out[name] = _cast(name, flat.reshape(spec.shape), spec.dtype)
        self._end_round()
        return out


def _cast(name: str, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in INT_DTYPES:
        info = torch.iinfo(dtype)
        if values.numel() and (int(values.min()) < info.min or int(values.max()) > info.max):
            raise ValueError(
                f"the aggregated integer tensor {name!r} does not fit {dtype_name(dtype)}; "
                "store it as a wider integer in the model"
            )
    return values.to(dtype)


def rounded_mean_int(total: torch.Tensor, count: int) -> torch.Tensor:
    """``round(total / count)`` in int64, ties toward +inf (FedAvg's integer rule)."""
    return torch.div(2 * total + count, 2 * count, rounding_mode="floor")
