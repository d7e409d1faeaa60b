"""Adaptive norm clipping through the aggregator: the bound is strategy state, so a restart
mid-job clips exactly as an undisturbed run (LocalStore, real files)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from fedcore import layout
from fedcore.aggregator import AggregatorStopped
from fedcore.weights import Tensors, load_weights
from tests.integration.test_aggregator import Harness, deltas, harness_factory, make_job, wait_for

__all__ = ["harness_factory"]  # the fixture, shared with test_aggregator


def clipped_mean(base: Tensors, updates: list[tuple[Tensors, int]], bound: float) -> Tensors:
    n = sum(k for _, k in updates)
    out = {}
    for name, b in base.items():
        acc = torch.zeros(b.shape, dtype=torch.float64)
        for d, k in updates:
            norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in d.values()))
            acc += d[name].double() * k * min(1.0, bound / norm)
        out[name] = (acc / n + b.double()).to(b.dtype)
    return out


def test_adaptive_clipping_resumes_mid_job_with_the_committed_bound(
    harness_factory: Callable[..., Harness],
) -> None:
    job = make_job(rounds=2, strategy={"clipNorm": 4.0, "clipQuantile": 0.5})
    first = harness_factory(job)
    first.start()
    w0 = first.global_model(0)
    first.send(1, "a", deltas(1.0), 1)  # norm sqrt(10)
    first.send(1, "b", deltas(3.0), 2)  # norm 3 sqrt(10), clipped to 4
    first.record(1)
    first.send(2, "a", deltas(5.0), 1)
    wait_for(lambda: first.store.exists(layout.manifest_key(2, "a")), "a's update")
    first.stop()
    assert isinstance(first.outcome.get("error"), AggregatorStopped)

    second = Harness(job, first.store, first.keys, first.workdir.with_name("second"))
    second.workdir.mkdir()
    second.start()
    second.send(2, "b", deltas(0.5), 1)
    second.finish()

    w1 = clipped_mean(w0, [(deltas(1.0), 1), (deltas(3.0), 2)], 4.0)
    bound2 = 2 * math.sqrt(10)  # the median of round 1's norms, sqrt(10) and 3 sqrt(10)
    w2 = clipped_mean(w1, [(deltas(5.0), 1), (deltas(0.5), 1)], bound2)
    got = second.global_model(2)
    assert all(torch.allclose(got[n], w2[n], rtol=0, atol=1e-6) for n in w2)
    state_path = second.workdir / "state-1"
    second.store.get_file(layout.strategy_state_key(1), state_path)
    assert float(load_weights(state_path)["clip/bound"][0]) == pytest.approx(bound2, rel=1e-15)
