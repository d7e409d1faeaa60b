"""Coordinate-wise trimmed mean of the round's deltas (Yin et al., 2018; Flower's
FedTrimmedAvg), ``spec.strategy.name: trimmedmean``.

For each coordinate the ``k = floor(trimFraction x N)`` largest and ``k`` smallest values
are dropped and the rest averaged, unweighted (``trimFraction`` in (0, 0.5), so at least one
value is kept; the class also takes 0, the plain unweighted mean, which the spec refuses: it
trims nothing, and the API server's range check misreads an integer 0 against a 0.5 bound).
It resists up to ``k`` poisoned updates per coordinate. Memory O(N x slice) plus one model,
time O(P x N log N): see ``fedcore.strategies.coordinatewise``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch

from fedcore.spec import DEFAULT_TRIM_FRACTION, StrategySpec
from fedcore.strategies.coordinatewise import CoordinateWise, rounded_mean_int


class TrimmedMean(CoordinateWise):
    """Mean of each coordinate's values once the extremes at each end are trimmed."""

    name: ClassVar[str] = "trimmedmean"

    def __init__(
        self, *, trim_fraction: float = DEFAULT_TRIM_FRACTION, spool_dir: Path | None = None
    ) -> None:
        if not (math.isfinite(trim_fraction) and 0.0 <= trim_fraction < 0.5):
            raise ValueError(
                f"trim_fraction must be in [0, 0.5), got {trim_fraction}; it is the share "
                "trimmed at each end, so at least one value must remain"
            )
        super().__init__(spool_dir=spool_dir)
        self.trim_fraction = trim_fraction

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> TrimmedMean:
        fraction = spec.trim_fraction
        return cls(trim_fraction=DEFAULT_TRIM_FRACTION if fraction is None else fraction)

    def trimmed(self, n: int) -> int:
        """Values dropped at each end of ``n``."""
        return math.floor(self.trim_fraction * n)

    def reduce(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        k = self.trimmed(n)
        return ordered[k : n - k].sum(dim=0) / (n - 2 * k)

    def reduce_int(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        k = self.trimmed(n)
        return rounded_mean_int(ordered[k : n - k].sum(dim=0), n - 2 * k)
