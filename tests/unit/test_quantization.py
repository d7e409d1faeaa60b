"""int8 updates (``fedcore.quantization``): the quantiser's error bound and wire structure,
what validation refuses in an int8 update (with its reason), and the dequantising source
the strategies fold from."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from fedcore.errors import UpdateRejected
from fedcore.quantization import (
    Q_MAX,
    SLICE_ELEMENTS,
    DequantisedWeights,
    dequantise,
    max_scale,
    quantise_tensor,
    quantise_update,
    scales_name,
    wire_template,
)
from fedcore.weights import Tensors, template_of
from tests.unit.test_validation import Case, good_delta, model


@pytest.mark.parametrize(
    "numel",
    [0, 1, SLICE_ELEMENTS, SLICE_ELEMENTS + 1, 3 * SLICE_ELEMENTS + 17],
    ids=["empty", "one element", "exactly a slice", "a slice and one", "several slices"],
)
def test_dequantised_values_are_within_half_a_step_of_the_delta(numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    d = torch.randn(numel, generator=gen) * 0.01
    if numel > 5:
        d[5] = 3.0  # an outlier only widens the step of its own slice

    q, scales = quantise_tensor(d)

    assert q.dtype == torch.int8
    assert q.shape == d.shape
    assert scales.shape == (math.ceil(numel / SLICE_ELEMENTS),)
    assert int(q.abs().max()) <= Q_MAX if numel else True
    back = dequantise(q, scales)
    step = scales.repeat_interleave(SLICE_ELEMENTS)[:numel]
    assert bool(((back - d).abs() <= step / 2 + 1e-9).all())
    if numel > SLICE_ELEMENTS:  # slices without the outlier keep their fine step
        assert float(scales[1:].max()) < 0.01


def test_an_all_zero_slice_comes_back_exactly_zero() -> None:
    d = torch.zeros(2, SLICE_ELEMENTS)
    d[1, 0] = 1.0

    q, scales = quantise_tensor(d)

    assert scales.tolist() == pytest.approx([1.0, 1.0 / Q_MAX])
    assert torch.equal(dequantise(q, scales)[0], torch.zeros(SLICE_ELEMENTS))


def test_quantising_is_deterministic() -> None:
    d = torch.randn(10_000, generator=torch.Generator().manual_seed(1))

    first, again = quantise_tensor(d), quantise_tensor(d.clone())

    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])


def test_a_non_finite_delta_gets_a_non_finite_scale() -> None:
    d = torch.zeros(SLICE_ELEMENTS + 1)
    d[SLICE_ELEMENTS] = math.inf

    _, scales = quantise_tensor(d)

    assert scales[0] == 1.0
    assert math.isnan(float(scales[1]))


def test_an_update_has_exactly_the_wire_structure_of_its_model() -> None:
    update = quantise_update(good_delta())

    assert template_of(update) == wire_template(template_of(model()))
    assert torch.equal(update["bn.num_batches_tracked"], good_delta()["bn.num_batches_tracked"])


def test_a_model_tensor_named_like_a_scale_is_refused() -> None:
    delta = {"w": torch.ones(2), scales_name("w"): torch.ones(1)}

    with pytest.raises(ValueError, match="rename it or use another updateDtype"):
        quantise_update(delta)


def test_the_dequantised_source_yields_the_models_tensors(tmp_path: Path) -> None:
    from fedcore.weights import Scratch, save_weights

    path = tmp_path / "u.safetensors"
    save_weights(path, quantise_update(good_delta()))

    with DequantisedWeights(path, template_of(model())) as source:
        template = source.template()
        weight = source.get("fc.weight", Scratch()).clone()
        count = source.get("bn.num_batches_tracked")

    assert set(template) == set(model())
    assert template["fc.weight"].dtype == torch.float32
    assert torch.allclose(weight, good_delta()["fc.weight"])
    assert int(count) == 3


# -- validation -----------------------------------------------------------------------------


def int8_case(spoil: dict[str, torch.Tensor | None] | None = None) -> Case:
    tensors: Tensors = quantise_update(good_delta())
    for name, value in (spoil or {}).items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    return Case(tensors=tensors, manifest={"dtype": "int8"}, check={"allow_low_precision": True})


SCALES = scales_name("fc.weight")
HUGE = max_scale(torch.float32) * 2

INT8_REJECTIONS = [
    pytest.param(
        {SCALES: torch.tensor([math.nan])}, "non-finite", "1 NaN or infinite scales", id="NaN scale"
    ),
    pytest.param(
        {SCALES: torch.tensor([math.inf])}, "non-finite", "NaN or infinite scales", id="inf scale"
    ),
    pytest.param(
        {SCALES: torch.tensor([0.0])}, "out-of-range", "must be greater than 0", id="zero scale"
    ),
    pytest.param(
        {SCALES: torch.tensor([-0.5])}, "out-of-range", "must be greater than 0", id="negative"
    ),
    pytest.param({SCALES: torch.tensor([HUGE])}, "out-of-range", "would not be finite", id="huge"),
    pytest.param(
        {"fc.weight": torch.full((4, 3), -128, dtype=torch.int8)},
        "out-of-range",
        "the int8 value -128",
        id="an int8 value outside the symmetric range",
    ),
    pytest.param({SCALES: None}, "missing-tensor", "lacks tensors", id="scales missing"),
    pytest.param(
        {"extra.__int8_scales__": torch.ones(1)}, "unknown-tensor", "extra", id="a stray tensor"
    ),
    pytest.param(
        {SCALES: torch.ones(2)}, "shape-mismatch", r"needs \[1\]", id="scales of another shape"
    ),
    pytest.param(
        {SCALES: torch.ones(1, dtype=torch.float16)},
        "dtype-mismatch",
        "needs float32",
        id="scales in float16",
    ),
    pytest.param(
        {"fc.weight": torch.ones(4, 3)},
        "dtype-mismatch",
        "needs int8",
        id="float values instead of int8",
    ),
]


@pytest.mark.parametrize(("spoil", "reason", "detail"), INT8_REJECTIONS)
def test_a_bad_int8_update_is_rejected_with_its_reason(
    spoil: dict[str, torch.Tensor | None], reason: str, detail: str, tmp_path: Path
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        int8_case(spoil).run(tmp_path)

    assert caught.value.reason == reason
    assert re.search(detail, caught.value.detail), caught.value.detail


def test_a_good_int8_update_passes(tmp_path: Path) -> None:
    assert int8_case().run(tmp_path).dtype == "int8"


def test_an_int8_update_needs_the_job_to_allow_narrow_updates(tmp_path: Path) -> None:
    case = int8_case()
    case.check = {}

    with pytest.raises(UpdateRejected, match=r"spec\.strategy\.updateDtype") as caught:
        case.run(tmp_path)

    assert caught.value.reason == "dtype-mismatch"


def test_a_float16_model_bounds_scales_by_its_own_range() -> None:
    assert max_scale(torch.float16) == pytest.approx(65504 / Q_MAX)
    assert max_scale(torch.float64) == pytest.approx(torch.finfo(torch.float32).max / Q_MAX)


# -- folding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "median"])
def test_strategies_fold_int8_updates_as_their_dequantised_values(
    name: str, tmp_path: Path
) -> None:
    from fedcore.spec import StrategySpec
    from fedcore.strategies import build_strategy
    from fedcore.weights import InMemoryWeights, save_weights

    base = {"w": torch.zeros(3 * SLICE_ELEMENTS + 5), "steps": torch.tensor([1, 2])}
    gen = torch.Generator().manual_seed(7)
    deltas = [
        {"w": torch.randn(3 * SLICE_ELEMENTS + 5, generator=gen), "steps": torch.tensor([i, 0])}
        for i in range(3)
    ]
    results = []
    for quantised in (True, False):
        strategy = build_strategy(StrategySpec(name=name))
        strategy.begin_round(template_of(base))
        for i, delta in enumerate(deltas):
            wire = quantise_update(delta)
            path = tmp_path / f"{name}-{quantised}-{i}.safetensors"
            save_weights(path, wire)
            with DequantisedWeights(path, template_of(base)) as source:
                if quantised:
                    strategy.fold(source, 10 + i)
                else:  # the same values, already dequantised, as plain tensors
                    plain = {n: source.get(n).clone() for n in template_of(base)}
                    strategy.fold(InMemoryWeights(plain), 10 + i)
        results.append(strategy.finalize(InMemoryWeights(base)))

    assert torch.equal(results[0]["w"], results[1]["w"])
    assert torch.equal(results[0]["steps"], results[1]["steps"])
    assert not torch.equal(results[0]["w"], base["w"])
