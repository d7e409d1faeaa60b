"""strategy.maxWeightShare through the aggregator's round loop (LocalStore, real files).

The cap binds only when the round closes, so the aggregator folds the round again from the
store with the capped weights (``fedcore.strategies.weighting``); these tests check the
committed model against the dense capped mean computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fedcore.folding import OpenRound
from fedcore.weights import Tensors
from tests.integration.test_aggregator import Harness, deltas, harness_factory, make_job

__all__ = ["harness_factory"]  # the fixture, shared with test_aggregator


def capped_mean(base: Tensors, updates: list[tuple[Tensors, float]]) -> Tensors:
    total = sum(w for _, w in updates)
    out = {}
    for name, b in base.items():
        acc = torch.zeros(b.shape, dtype=torch.float64)
        for d, w in updates:
            acc += d[name].double() * w
        out[name] = (acc / total + b.double()).to(b.dtype)
    return out


def test_a_client_declaring_a_huge_count_weighs_no_more_than_the_cap(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(make_job(("a", "b", "m"), strategy={"maxWeightShare": 0.5}))
    h.start()
    w0 = h.global_model(0)

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "b", deltas(2.0), 3)
    h.send(1, "m", deltas(-100.0), 10**12)
    h.finish()

    # T = 0.5 * (1 + 3) / (1 - 0.5) = 4: m weighs 4, as much as a and b together.
    expected = capped_mean(w0, [(deltas(1.0), 1.0), (deltas(2.0), 3.0), (deltas(-100.0), 4.0)])
    got = h.global_model(1)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    r1 = h.record(1)
    assert r1.participants == ["a", "b", "m"]
    assert r1.num_samples == {"a": 1, "b": 3, "m": 10**12}  # as declared
    assert r1.rejected == []


def test_an_update_whose_count_changes_before_the_capped_pass_is_rejected(
    harness_factory: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(make_job(("a", "b", "m"), strategy={"maxWeightShare": 0.5}))
    refold = OpenRound.refold

    def replace_m_then_refold(self: OpenRound, *, alone: bool = False) -> None:
        h.send(1, "m", deltas(-100.0), 10**11)  # m rewrites its manifest in between
        refold(self, alone=alone)

    monkeypatch.setattr(OpenRound, "refold", replace_m_then_refold)
    h.start()
    w0 = h.global_model(0)

    h.send(1, "a", deltas(1.0), 1)
    h.send(1, "b", deltas(2.0), 3)
    h.send(1, "m", deltas(-100.0), 10**12)
    h.finish()

    r1 = h.record(1)
    assert {x.client: x.reason for x in r1.rejected} == {"m": "changed-during-round"}
    assert r1.participants == ["a", "b"]
    # Two clients left under a cap of 0.5: exactly enough for it, so the shares are equal.
    expected = capped_mean(w0, [(deltas(1.0), 1.0), (deltas(2.0), 1.0)])
    got = h.global_model(1)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
