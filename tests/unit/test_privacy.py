"""The privacy accountant: dp-accounting's numbers, bracketed by two independent bounds, the
rounds each client was selected for, and the budget stopping before it is exceeded."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import rdp

from fedcore.layout import PrivacyRecord
from fedcore.privacy import account, epsilon
from fedcore.spec import DPSpec


def dp_spec(**overrides: object) -> DPSpec:
    fields: dict[str, object] = {"noiseMultiplier": 1.0, "clipNorm": 1.0, "delta": 1e-5}
    return DPSpec.model_validate({**fields, **overrides})


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def exact_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """The tight epsilon of ``rounds`` Gaussian mechanisms (Balle and Wang, 2018: their
    composition is one Gaussian with multiplier z / sqrt(rounds)), by bisection."""
    mu = math.sqrt(rounds) / z

    def delta_of(eps: float) -> float:
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    low, high = 0.0, 500.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_of(mid) > delta else (low, mid)
    return high


def classic_rdp_epsilon(z: float, rounds: int, delta: float) -> float:
    """Mironov's (2017) conversion of the Gaussian's RDP ``rounds alpha / (2 z^2)``: a looser
    bound than dp-accounting's (which uses an improved conversion)."""
    return min(
        rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1)
        for a in (1 + x / 100 for x in range(1, 100_000))
    )


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 10), (0.8, 1), (2.0, 100), (5.0, 1000)])
def test_epsilon_is_dp_accountings_rdp_and_lies_between_the_tight_and_the_classic_bound(
    z: float, rounds: int
) -> None:
    direct = rdp.RdpAccountant()
    direct.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds))

    got = epsilon(z, rounds, 1e-5)

    assert got == direct.get_epsilon(1e-5)
    assert exact_gaussian_epsilon(z, rounds, 1e-5) <= got <= classic_rdp_epsilon(z, rounds, 1e-5)


def test_a_known_value() -> None:
    # z = 1, 10 rounds, delta 1e-5: 19.05 with the RDP accountant (the tight value is 17.86).
    assert epsilon(1.0, 10, 1e-5) == pytest.approx(19.0536, abs=1e-3)
    assert epsilon(1.0, 0, 1e-5) == 0.0


def test_round_zero_spends_nothing_and_looks_one_round_ahead() -> None:
    record = account(dp_spec(), None, [], ["a", "b"], clip_norm=None)

    assert (record.epsilon, record.rounds_accounted, record.selections) == (0.0, 0, {})
    assert record.next_epsilon == epsilon(1.0, 1, 1e-5)
    assert not record.budget_reached
    assert record.accountant.startswith("rdp (dp-accounting ")


def test_each_client_is_charged_for_the_rounds_it_was_selected_for() -> None:
    spec = dp_spec()
    r1 = account(spec, None, ["a", "b"], ["b", "c"], clip_norm=1.0)
    r2 = account(spec, r1, ["b", "c"], ["a", "c"], clip_norm=1.0)

    assert r2.selections == {"a": 1, "b": 2, "c": 1}
    assert r2.rounds_accounted == 2
    assert r2.epsilon == epsilon(1.0, 2, 1e-5)
    assert r2.next_epsilon == epsilon(1.0, 2, 1e-5)  # c's second round: still two at most


def test_the_budget_stops_before_the_round_that_would_exceed_it() -> None:
    target = (epsilon(1.0, 2, 1e-5) + epsilon(1.0, 3, 1e-5)) / 2
    spec = dp_spec(targetEpsilon=target)
    everyone = ["a", "b"]

    r0 = account(spec, None, [], everyone, clip_norm=None)
    r1 = account(spec, r0, everyone, everyone, clip_norm=1.0)
    r2 = account(spec, r1, everyone, everyone, clip_norm=1.0)

    assert not r0.budget_reached
    assert not r1.budget_reached
    assert r2.budget_reached
    assert r2.epsilon <= target < (r2.next_epsilon or 0)
    assert "stopped after round 2 of 5" in r2.stop_message(2, 5)
    assert "strategy.dp.targetEpsilon" in r2.stop_message(2, 5)


def test_a_budget_smaller_than_one_round_ends_the_job_at_the_initial_model() -> None:
    record = account(dp_spec(targetEpsilon=0.01), None, [], ["a"], clip_norm=None)

    assert record.budget_reached
    assert record.epsilon == 0.0


def test_after_the_last_round_nothing_is_ahead() -> None:
    record = account(dp_spec(targetEpsilon=0.01), None, ["a"], None, clip_norm=1.0)

    assert record.next_epsilon is None
    assert not record.budget_reached
    assert isinstance(record, PrivacyRecord)
