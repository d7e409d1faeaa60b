"""Aggregation strategies, one module each, chosen by ``spec.strategy.name``.

``build_strategy(spec)`` is how the aggregator gets one; ``STRATEGIES`` lists them. Every
strategy streams (``fedcore.strategies.base``): memory O(model), whatever the client count.
"""

from __future__ import annotations

from collections.abc import Callable

from fedcore.spec import StrategySpec
from fedcore.strategies.base import MAX_NUM_SAMPLES, Strategy
from fedcore.strategies.fedavg import FedAvg
from fedcore.strategies.fedavgm import FedAvgM
from fedcore.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedcore.strategies.fedprox import FedProx

STRATEGIES: dict[str, Callable[[StrategySpec], Strategy]] = {
    FedAvg.name: FedAvg.from_spec,
    FedAvgM.name: FedAvgM.from_spec,
    FedAdam.name: FedAdam.from_spec,
    FedYogi.name: FedYogi.from_spec,
    FedAdagrad.name: FedAdagrad.from_spec,
    FedProx.name: FedProx.from_spec,
}
"""Strategy name (``spec.strategy.name``) -> factory."""


def build_strategy(spec: StrategySpec) -> Strategy:
    """The strategy ``spec`` names, configured from it."""
    factory = STRATEGIES.get(spec.name)
    if factory is None:
        raise ValueError(f"unknown strategy {spec.name!r}; choose one of {sorted(STRATEGIES)}")
    return factory(spec)


__all__ = [
    "MAX_NUM_SAMPLES",
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Strategy",
    "build_strategy",
]
