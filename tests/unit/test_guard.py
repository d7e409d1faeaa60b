"""The checks before a commit: which tensors are not finite, and how large an update is."""

from __future__ import annotations

import math

import torch

from fedcore.guard import largest_magnitude, non_finite_tensors
from fedcore.weights import InMemoryWeights


def test_non_finite_tensors_names_float_tensors_holding_nan_or_inf_sorted() -> None:
    tensors = {
        "z": torch.tensor([1.0, math.inf]),
        "a": torch.tensor([math.nan], dtype=torch.float16),
        "ok": torch.ones(3),
        "steps": torch.tensor(2**62),
        "empty": torch.zeros(0),
    }

    assert non_finite_tensors(tensors) == ["a", "z"]
    assert non_finite_tensors(tensors, "state ") == ["state a", "state z"]


def test_largest_magnitude_is_the_largest_absolute_float_value() -> None:
    update = InMemoryWeights(
        {
            "w": torch.tensor([[1.0, -7.5], [2.0, 3.0]]),
            "scalar": torch.tensor(-2.0, dtype=torch.float64),
            "steps": torch.tensor(10**9),
            "empty": torch.zeros(0),
        }
    )

    assert largest_magnitude(update) == 7.5
    assert largest_magnitude(InMemoryWeights({"steps": torch.tensor(3)})) == 0.0
