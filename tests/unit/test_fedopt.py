"""FedAdam, FedYogi, FedAdagrad against a direct dense computation of Reddi et al.'s
Algorithm 2, over several rounds, and resumed from persisted state bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from fedcore.spec import StrategySpec
from fedcore.strategies import FedAdagrad, FedAdam, FedYogi, build_strategy
from fedcore.strategies.fedopt import FedOpt
from fedcore.weights import InMemoryWeights, Tensors, template_of

VARIANTS: list[type[FedOpt]] = [FedAdam, FedYogi, FedAdagrad]


def run_round(strategy: FedOpt, base: Tensors, updates: list[tuple[Tensors, int]]) -> Tensors:
    strategy.begin_round(template_of(base))
    for update, n in updates:
        strategy.fold(InMemoryWeights(update), n)
    return strategy.finalize(InMemoryWeights(base))


def dense_rounds(
    variant: str, base: Tensors, rounds: list[list[tuple[Tensors, int]]], eta: float,
    beta1: float, beta2: float, tau: float,
) -> Tensors:  # fmt: skip
    """The paper's update element by element in float64, moments kept as float32."""
    m: dict[str, torch.Tensor] = {k: torch.zeros_like(t) for k, t in base.items()}
    v: dict[str, torch.Tensor] = {k: torch.zeros_like(t) for k, t in base.items()}
    w = dict(base)
    for updates in rounds:
        n = sum(k for _, k in updates)
        nxt = {}
        for name, b in w.items():
            d = sum(u[name].double() * k for u, k in updates) / n
            m_t = beta1 * m[name].double() + (1 - beta1) * d
            v_prev = v[name].double()
            if variant == "fedadagrad":
                v_t = v_prev + d**2
            elif variant == "fedadam":
                v_t = beta2 * v_prev + (1 - beta2) * d**2
            else:
                v_t = v_prev - (1 - beta2) * d**2 * torch.sign(v_prev - d**2)
            nxt[name] = (b.double() + eta * m_t / (v_t.sqrt() + tau)).float()
            m[name], v[name] = m_t.float(), v_t.float()
        w = nxt
    return w


def make_rounds(seed: int, count: int = 4) -> tuple[Tensors, list[list[tuple[Tensors, int]]]]:
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    rounds = [
        [
            ({k: torch.randn(t.shape, generator=g) * 0.1 for k, t in base.items()}, n)
            for n in (1, 4, 2)
        ]
        for _ in range(count)
    ]
    return base, rounds


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.name)
def test_each_round_matches_the_dense_algorithm(cls: type[FedOpt]) -> None:
    base, rounds = make_rounds(0)
    strategy = cls(server_learning_rate=0.05, beta1=0.8, beta2=0.95, tau=1e-3)

    model = base
    for updates in rounds:
        model = run_round(strategy, model, updates)

    expected = dense_rounds(cls.name, base, rounds, 0.05, 0.8, 0.95, 1e-3)
    for name in base:
        assert torch.allclose(model[name], expected[name], rtol=0, atol=1e-6), name


def test_first_fedadam_step_by_hand() -> None:
    base = {"w": torch.tensor([1.0, 1.0])}
    update = {"w": torch.tensor([0.5, -2.0])}

    got = run_round(
        FedAdam(server_learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3), base, [(update, 1)]
    )

    # m = 0.1 d, v = 0.01 d^2: step = 0.1 * 0.1 d / (0.1 |d| + 1e-3) = 0.01 d / (0.1 |d| + 1e-3)
    by_hand = [1.0 + 0.01 * 0.5 / (0.05 + 1e-3), 1.0 - 0.01 * 2.0 / (0.2 + 1e-3)]
    assert got["w"].tolist() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.name)
def test_a_strategy_restarted_from_its_state_gives_bit_identical_models(cls: type[FedOpt]) -> None:
    base, rounds = make_rounds(1)
    undisturbed = cls(server_learning_rate=0.05)
    model = base
    for updates in rounds:
        model = run_round(undisturbed, model, updates)

    resumed = base
    state: Tensors = {}
    for updates in rounds:  # a new strategy per round, as a restarted aggregator builds it
        strategy = cls(server_learning_rate=0.05)
        strategy.load_state_dict({k: v.clone() for k, v in state.items()})
        resumed = run_round(strategy, resumed, updates)
        state = strategy.state_dict()

    assert all(torch.equal(resumed[k], model[k]) for k in base)
    assert set(state) == {"first_moment/b", "first_moment/w", "second_moment/b", "second_moment/w"}
    assert all(t.dtype == torch.float32 for t in state.values())


def test_state_of_another_model_is_refused_at_begin_round() -> None:
    strategy = FedAdam()
    strategy.load_state_dict({"first_moment/w": torch.zeros(2), "second_moment/w": torch.zeros(2)})

    with pytest.raises(ValueError, match="belongs to another model"):
        strategy.begin_round(template_of({"w": torch.zeros(3)}))


def test_state_of_another_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="not a fedyogi state key"):
        FedYogi().load_state_dict({"momentum/w": torch.zeros(2)})
    with pytest.raises(ValueError, match="incomplete"):
        FedYogi().load_state_dict({"first_moment/w": torch.zeros(2)})


@pytest.mark.parametrize(
    ("option", "value"), [("beta1", 1.0), ("beta2", -0.1), ("tau", 0.0), ("tau", math.inf)]
)
def test_out_of_range_options_are_refused(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        FedAdam(**{option: value})


def test_an_update_that_would_overflow_the_moments_is_not_finite_alone() -> None:
    base = {"w": torch.zeros(1)}
    strategy = FedAdagrad()
    strategy.begin_round(template_of(base))

    huge = InMemoryWeights({"w": torch.tensor([3e38])})
    fine = InMemoryWeights({"w": torch.tensor([1.0])})

    assert not strategy.alone_is_finite(huge, InMemoryWeights(base))  # v = 9e76 > float32
    assert strategy.alone_is_finite(fine, InMemoryWeights(base))


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_spec_builds_each_fedopt_strategy_with_its_options(name: str) -> None:
    beta2 = None if name == "fedadagrad" else 0.9
    spec = StrategySpec(name=name, server_learning_rate=0.1, beta1=0.5, beta2=beta2, tau=1e-2)  # type: ignore[arg-type]

    strategy = build_strategy(spec)

    assert isinstance(strategy, FedOpt)
    assert strategy.name == name
    assert (strategy.server_learning_rate, strategy.beta1, strategy.tau) == (0.1, 0.5, 1e-2)


def test_fedopt_options_on_another_strategy_are_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match=r"beta1=0\.5 applies to fedadam, fedyogi, fedadagrad"):
        StrategySpec(name="fedavg", beta1=0.5)
    with pytest.raises(ValueError, match=r"beta2=0\.9 applies to fedadam, fedyogi only"):
        StrategySpec(name="fedadagrad", beta2=0.9)
    with pytest.raises(ValueError, match="serverMomentum"):
        StrategySpec(name="fedadam", server_momentum=0.9)
