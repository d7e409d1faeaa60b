"""DP-FedAvg against a direct dense computation: clipping, equal weights, the fixed
denominator, the noise from the round's key, adaptive clipping, and bit-identical resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedcore.spec import StrategySpec
from fedcore.strategies import DPFedAvg, build_strategy
from fedcore.strategies.dp_noise import NoiseKey
from fedcore.strategies.dpfedavg import AdaptiveClipping, update_noise_multiplier
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import InMemoryWeights, Tensors, load_weights, save_weights, template_of

KEY = NoiseKey(bytes(range(32)))
ADAPTIVE = AdaptiveClipping(
    target_unclipped_quantile=0.5, learning_rate=0.2, clipped_count_stddev=2.0
)


def base_model() -> Tensors:
    g = torch.Generator().manual_seed(7)
    return {
        "w": torch.randn(5, 3, generator=g),
        "b": torch.zeros(3, dtype=torch.bfloat16),
        "steps": torch.tensor(4),
        "mask": torch.tensor([True, False]),
    }


def updates(r: int) -> list[Tensors]:
    g = torch.Generator().manual_seed(100 + r)
    return [
        {
            "w": torch.randn(5, 3, generator=g) * scale,
            "b": (torch.randn(3, generator=g) * scale).to(torch.bfloat16),
            "steps": torch.tensor(10 + i),
            "mask": torch.tensor([False, False]),
        }
        for i, scale in enumerate([0.1, 2.0, 0.5])
    ]


def norm(update: Tensors) -> float:
    return math.sqrt(
        sum(float(t.double().pow(2).sum()) for t in update.values() if t.is_floating_point())
    )


def dense(
    base: Tensors,
    ups: list[Tensors],
    *,
    bound: float,
    z_update: float,
    m: int,
    key: NoiseKey,
    lr: float = 1.0,
) -> Tensors:
    """The rule written out: every update clipped whole, summed with weight 1, the tensor's
    noise stream scaled by z C, divided by m, and integer/bool tensors kept."""
    out: Tensors = {}
    for name, b in base.items():
        if not b.is_floating_point():
            out[name] = b.clone()
            continue
        total = torch.zeros(b.shape, dtype=torch.float64)
        for u in ups:
            total += u[name].double() * min(1.0, bound / norm(u))
        noise = key.stream(name).normals(b.numel()).view(b.shape)
        total += noise * (z_update * bound)
        out[name] = (total * (lr / m) + b.double()).to(b.dtype)
    return out


def one_round(
    strategy: DPFedAvg,
    base: Tensors,
    ups: list[Tensors],
    *,
    m: int | None = None,
    key: NoiseKey | None = KEY,
    samples: list[int] | None = None,
) -> Tensors:
    strategy.begin_round(template_of(base))
    for u, n in zip(ups, samples or [10] * len(ups), strict=True):
        strategy.fold(InMemoryWeights(u), n)
    strategy.expected_clients = m
    strategy.noise_key = key
    return strategy.finalize(InMemoryWeights(base))


def assert_close(got: Tensors, want: Tensors) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6, msg=name)


def test_round_is_the_clipped_equal_weight_sum_plus_keyed_noise_over_the_selected_count() -> None:
    base, ups = base_model(), updates(1)
    strategy = DPFedAvg(noise_multiplier=0.7, clip_norm=1.0, server_learning_rate=0.5)

    got = one_round(strategy, base, ups, m=4)

    assert_close(got, dense(base, ups, bound=1.0, z_update=0.7, m=4, key=KEY, lr=0.5))
    assert torch.equal(got["steps"], base["steps"])  # counters are not aggregated
    assert torch.equal(got["mask"], base["mask"])


def test_a_client_declaring_a_huge_sample_count_weighs_no_more_than_the_others() -> None:
    base, ups = base_model(), updates(1)

    modest = one_round(DPFedAvg(noise_multiplier=1.0, clip_norm=1.0), base, ups, m=3)
    boastful = one_round(
        DPFedAvg(noise_multiplier=1.0, clip_norm=1.0), base, ups, m=3, samples=[1, 10**12, 1]
    )

    for name in base:
        assert torch.equal(modest[name], boastful[name]), name


def test_a_capped_weight_is_refused_and_sample_counts_are_still_checked() -> None:
    strategy = DPFedAvg(noise_multiplier=1.0, clip_norm=1.0)
    strategy.begin_round(template_of(base_model()))
    update = InMemoryWeights(updates(1)[0])

    with pytest.raises(ValueError, match="equally"):
        strategy.fold(update, 10, weight=FoldWeight(5.0, 5, 10))
    with pytest.raises(ValueError, match="num_samples"):
        strategy.fold(update, 0)


def test_one_client_moves_the_noiseless_sum_by_at_most_the_bound() -> None:
    base, ups = base_model(), updates(2)
    without_noise = NoiseKey(bytes(32))

    def noiseless(us: list[Tensors]) -> Tensors:
        strategy = DPFedAvg(noise_multiplier=1e-9, clip_norm=0.3)
        return one_round(strategy, base, us, m=3, key=without_noise)

    with_all, zeroed = (
        noiseless(ups),
        noiseless([*ups[:2], {k: torch.zeros_like(v) for k, v in ups[2].items()}]),
    )

    moved = math.sqrt(
        sum(float((with_all[n].double() - zeroed[n].double()).pow(2).sum()) for n in ("w", "b"))
    )
    assert moved * 3 <= 0.3 * (1 + 1e-2)  # x m: the sum's sensitivity (bf16 rounding aside)


def test_without_the_selected_count_the_denominator_is_the_folded_count() -> None:
    base, ups = base_model(), updates(1)

    got = one_round(DPFedAvg(noise_multiplier=0.5, clip_norm=1.0), base, ups, m=None)

    assert_close(got, dense(base, ups, bound=1.0, z_update=0.5, m=3, key=KEY))


def test_more_updates_than_selected_clients_is_refused() -> None:
    with pytest.raises(ValueError, match="selected"):
        one_round(DPFedAvg(noise_multiplier=0.5, clip_norm=1.0), base_model(), updates(1), m=2)


def test_without_a_key_each_round_draws_fresh_noise() -> None:
    base, ups = base_model(), updates(1)

    one = one_round(DPFedAvg(noise_multiplier=1.0, clip_norm=1.0), base, ups, key=None)
    two = one_round(DPFedAvg(noise_multiplier=1.0, clip_norm=1.0), base, ups, key=None)

    assert not torch.equal(one["w"], two["w"])


def test_noise_has_the_promised_scale() -> None:
    base = {"w": torch.zeros(200_000, dtype=torch.float64)}
    ups = [{"w": torch.zeros(200_000, dtype=torch.float64)}] * 2

    got = one_round(DPFedAvg(noise_multiplier=2.0, clip_norm=0.5), base, ups, m=5)

    # z C / m = 0.2; 200k draws of a fixed key: the bound is ~20 standard errors.
    assert float(got["w"].std()) == pytest.approx(0.2, rel=0.01)


def test_adaptive_clipping_charges_the_count_and_steps_the_bound_by_hand() -> None:
    base, ups = base_model(), updates(1)
    strategy = DPFedAvg(noise_multiplier=1.0, clip_norm=1.0, adaptive=ADAPTIVE)
    z_update = (1.0**-2 - (2 * 2.0) ** -2) ** -0.5

    got = one_round(strategy, base, ups, m=4)

    assert strategy.update_noise_multiplier == pytest.approx(z_update, rel=1e-15)
    assert_close(got, dense(base, ups, bound=1.0, z_update=z_update, m=4, key=KEY))
    unclipped = sum(1 for u in ups if norm(u) <= 1.0)
    count_noise = float(KEY.count_stream().normals(1)[0]) * 2.0
    share = 0.5 + (unclipped - len(ups) / 2 + count_noise) / 4
    assert strategy.clip_bound == pytest.approx(math.exp(-0.2 * (share - 0.5)), rel=1e-12)
    assert strategy.round_clip_bound == 1.0
    assert float(strategy.state_dict()["clip/bound"][0]) == strategy.clip_bound


def test_count_noise_that_would_spend_the_whole_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="noise_multiplier/2"):
        update_noise_multiplier(2.0, ADAPTIVE.__class__(0.5, 0.2, 1.0))


def test_restarted_aggregator_resumes_bit_identically_from_persisted_state(
    tmp_path: Path,
) -> None:
    def key(r: int) -> NoiseKey:
        return KEY.for_round(r, [("a", str(r))])

    def fresh() -> DPFedAvg:
        return DPFedAvg(noise_multiplier=1.0, clip_norm=0.3, adaptive=ADAPTIVE)

    uninterrupted, model = fresh(), base_model()
    for r in range(1, 4):
        model = one_round(uninterrupted, model, updates(r), m=3, key=key(r))

    first, resumed = fresh(), base_model()
    for r in range(1, 3):
        resumed = one_round(first, resumed, updates(r), m=3, key=key(r))
    save_weights(tmp_path / "state.safetensors", first.state_dict(), {"kind": "state", "round": 2})
    save_weights(tmp_path / "global.safetensors", resumed)
    del first  # the crash
    second = fresh()
    second.load_state_dict(load_weights(tmp_path / "state.safetensors"))
    resumed = one_round(
        second, load_weights(tmp_path / "global.safetensors"), updates(3), m=3, key=key(3)
    )

    for name in model:
        assert torch.equal(model[name], resumed[name]), name
    assert uninterrupted.clip_bound == second.clip_bound


def test_state_of_a_fixed_bound_job_or_another_strategy_is_refused() -> None:
    bound = {"clip/bound": torch.tensor([1.0], dtype=torch.float64)}

    with pytest.raises(ValueError, match="adaptiveClipping"):
        DPFedAvg(noise_multiplier=1.0, clip_norm=1.0).load_state_dict(bound)
    with pytest.raises(ValueError, match="another strategy"):
        DPFedAvg(noise_multiplier=1.0, clip_norm=1.0).load_state_dict(
            {"momentum/w": torch.zeros(1)}
        )
    with pytest.raises(ValueError, match="> 0"):
        DPFedAvg(noise_multiplier=1.0, clip_norm=1.0, adaptive=ADAPTIVE).load_state_dict(
            {"clip/bound": torch.tensor([-1.0], dtype=torch.float64)}
        )


def test_build_strategy_makes_it_from_the_spec() -> None:
    spec = StrategySpec.model_validate(
        {
            "name": "dpfedavg",
            "serverLearningRate": 0.5,
            "dp": {
                "noiseMultiplier": 1.2,
                "clipNorm": 0.4,
                "delta": 1e-5,
                "adaptiveClipping": {"clippedCountStddev": 3.0},
            },
        }
    )

    strategy = build_strategy(spec)

    assert isinstance(strategy, DPFedAvg)
    assert (strategy.noise_multiplier, strategy.clip_bound) == (1.2, 0.4)
    assert strategy.server_learning_rate == 0.5
    assert strategy.adaptive == AdaptiveClipping(0.5, 0.2, 3.0)
    assert strategy.max_weight_share is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"noise_multiplier": 0.0, "clip_norm": 1.0}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "clip_norm": math.inf}, "clip_norm"),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "server_learning_rate": -1},
            "server_learning",
        ),
    ],
)
def test_bad_options_are_refused_naming_them(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DPFedAvg(**kwargs)  # type: ignore[arg-type]
