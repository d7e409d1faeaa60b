"""Coordinate-wise median of the round's deltas (Yin et al., 2018; Flower's FedMedian).

Unweighted. With an even number of updates the median is the mean of the two middle values
(as ``numpy.median`` and Flower have it; ``torch.median`` would take the lower one). A
minority of poisoned updates, however far away, cannot move a coordinate past the honest
values. Memory O(N x slice) plus one model, time O(P x N log N): see
``fedcore.strategies.coordinatewise``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedcore.spec import StrategySpec
from fedcore.strategies.coordinatewise import CoordinateWise, rounded_mean_int


class Median(CoordinateWise):
    """Coordinate-wise median of the deltas, added to the base."""

    name: ClassVar[str] = "median"

    @classmethod
    def from_spec(cls, spec: StrategySpec) -> Median:
        return cls()

    def reduce(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        if n % 2:
            return ordered[n // 2].clone()
        return (ordered[n // 2 - 1] + ordered[n // 2]) / 2

    def reduce_int(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        if n % 2:
            return ordered[n // 2].clone()
        return rounded_mean_int(ordered[n // 2 - 1] + ordered[n // 2], 2)
