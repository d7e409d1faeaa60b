"""Aggregation strategies, one module each, chosen by ``spec.strategy.name``.

``build_strategy(spec)`` is how the aggregator gets one; ``STRATEGIES`` lists them. The
weighted-mean strategies stream (``fedcore.strategies.base``): memory O(model), whatever the
client count; ``dpfedavg`` adds client-level differential privacy (clipping, equal weights,
secret Gaussian noise; ``fedcore.strategies.dpfedavg``) to that, and ``scaffold`` streams
too, its updates carrying the clients' control variate deltas. The robust ones (``median``,
``trimmedmean``, ``krum``) keep the round's updates on local disk and reduce them slice by
slice (``fedcore.strategies.spool``).
"""

from __future__ import annotations

from collections.abc import Callable

from fedcore.spec import StrategySpec
from fedcore.strategies.base import MAX_NUM_SAMPLES, Strategy
from fedcore.strategies.dpfedavg import DPFedAvg
from fedcore.strategies.fedavg import FedAvg
from fedcore.strategies.fedavgm import FedAvgM
from fedcore.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedcore.strategies.fedprox import FedProx
from fedcore.strategies.krum import Krum
from fedcore.strategies.median import Median
from fedcore.strategies.scaffold import Scaffold
from fedcore.strategies.trimmedmean import TrimmedMean

STRATEGIES: dict[str, Callable[[StrategySpec], Strategy]] = {
    FedAvg.name: FedAvg.from_spec,
    FedAvgM.name: FedAvgM.from_spec,
    FedAdam.name: FedAdam.from_spec,
    FedYogi.name: FedYogi.from_spec,
    FedAdagrad.name: FedAdagrad.from_spec,
    FedProx.name: FedProx.from_spec,
    Median.name: Median.from_spec,
    TrimmedMean.name: TrimmedMean.from_spec,
    Krum.name: Krum.from_spec,
    DPFedAvg.name: DPFedAvg.from_spec,
    Scaffold.name: Scaffold.from_spec,
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
    "DPFedAvg",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "Scaffold",
    "Strategy",
    "TrimmedMean",
    "build_strategy",
]
