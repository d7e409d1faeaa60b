"""build_strategy: spec.strategy selects and configures the strategy."""

from __future__ import annotations

import fedcore.strategies
from fedcore.spec import StrategySpec
from fedcore.strategies import STRATEGIES, FedAvg, FedAvgM, build_strategy


def test_every_spec_strategy_name_has_a_strategy() -> None:
    names = StrategySpec.model_fields["name"].annotation
    assert set(STRATEGIES) == set(names.__args__)  # type: ignore[union-attr]


def test_fedavg_spec_builds_fedavg_with_its_server_learning_rate() -> None:
    strategy = build_strategy(StrategySpec(name="fedavg", server_learning_rate=0.5))

    assert type(strategy) is FedAvg
    assert strategy.server_learning_rate == 0.5


def test_fedavgm_spec_builds_fedavgm_with_its_momentum() -> None:
    strategy = build_strategy(
        StrategySpec(name="fedavgm", server_learning_rate=0.8, server_momentum=0.9)
    )

    assert isinstance(strategy, FedAvgM)
    assert (strategy.server_learning_rate, strategy.server_momentum) == (0.8, 0.9)


def test_public_names_are_pinned() -> None:
    assert fedcore.strategies.__all__ == [
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
