"""Capping any one client's weight share (``strategy.maxWeightShare``), for every strategy.

Without a cap a client's share of the round is ``n_k / n``: one signed client that declares
``num_samples`` 10^12 takes 0.99999999996 of the round and sets the global model. With a
cap ``c`` every share is at most ``c`` and the excess goes to the other clients pro rata
(water-filling). In sample units the weights are the counts clipped at one threshold ``T``::

    w_k = min(n_k, T),   share_k = w_k / Σ_j w_j,   T such that max_k share_k = c

(``T`` is found exactly, in rational arithmetic, by capping the largest counts one by one:
``T = c · Σ_{uncapped} n_j / (1 - c · #capped)``). A client under ``T`` keeps its
``n_k``, so when the cap does not bind the weights are the plain sample counts.

Too few clients. When ``N · c <= 1`` no assignment of shares keeps every one at most ``c``
(or exactly one does, when ``N · c = 1``): the shares become equal, ``1/N`` each, which is
the assignment with the smallest largest share. One client alone has share 1 whatever the
cap. Every client then weighs ``min_j n_j`` in sample units (equal counts already are equal
shares: no second pass).

Integer tensors (step counters) average exactly in int64 and need integer weights: they
use ``min(n_k, floor(T))`` (``floor(T) >= 1``: ``T`` is at least the largest uncapped count),
which keeps their shares at most ``c`` too, within ``1/floor(T)`` of the float shares.

Why two passes, and why the first is the plain one. The aggregator folds updates as they
arrive (O(model) memory), but the weights depend on every count of the round, known only
when it closes. No single O(model) accumulator can fold ``n_k · Δ_k`` and later turn the
capped clients' terms into ``T · Δ_k``: subtracting ``(n_k - T) · Δ_k`` (after reading the
capped updates again) cancels catastrophically (10^12 against 10^2 loses 10 of float64's
16 digits) and a huge ``n_k · Δ_k`` may overflow the accumulator on its own; one
accumulator per possibly-capped client costs up to ``1/c`` models. So the round folds with
the plain counts, and ``capped_weights`` says at close whether the cap binds; only then is
the round folded again from the store with these weights, known up front (``fold(...,
weight=...)``). An honest round pays nothing; a round the cap binds reads its updates twice.
Memory stays O(model) either way; time grows with ``N log N`` here, plus one more pass over
the updates' bytes when the cap binds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class FoldWeight:
    """What one update weighs in the round's mean, in sample units."""

    value: float
    """The weight of its float tensors (``min(n_k, T)``)."""
    integer: int
    """The weight of its integer tensors (``min(n_k, floor(T))``, at least 1)."""
    num_samples: int
    """The ``num_samples`` the weight was computed from (a replaced manifest would differ)."""


def check_max_weight_share(max_share: float | None) -> None:
    """Raise ``ValueError`` unless ``max_share`` is None or a number in (0, 1]."""
    if max_share is None:
        return
    if not (math.isfinite(max_share) and 0.0 < max_share <= 1.0):
        raise ValueError(
            f"max_weight_share must be in (0, 1], got {max_share}; 1.0 (or unset) caps nothing"
        )


def capped_weights(
    num_samples: Mapping[str, int], max_share: float | None
) -> dict[str, FoldWeight] | None:
    """The weights that keep every client's share at most ``max_share``, or None when the
    plain sample counts already do (then the round's plain fold is the answer).

    ``num_samples``: each folded client's count (every one at least 1). Equal shares when
    there are too few clients for the cap (module docstring). Time ``O(N log N)``.
    """
    check_max_weight_share(max_share)
    if max_share is None or not num_samples:
        return None
    if any(n < 1 for n in num_samples.values()):
        raise ValueError(f"every num_samples must be at least 1, got {dict(num_samples)}")
    cap = Fraction(max_share)  # the float's exact value: decisions are exact
    total = sum(num_samples.values())
    if Fraction(max(num_samples.values()), total) <= cap:
        return None
    n_clients = len(num_samples)
    if n_clients * cap <= 1:
        equal = min(num_samples.values())
        if equal == max(num_samples.values()):
            return None  # equal counts are already equal shares: the plain fold is the answer
        return {c: FoldWeight(float(equal), equal, n) for c, n in num_samples.items()}
    threshold = _threshold(sorted(num_samples.values(), reverse=True), cap)
    floor = max(1, math.floor(threshold))
    return {
        c: FoldWeight(float(min(Fraction(n), threshold)), min(n, floor), n)
        for c, n in num_samples.items()
    }


def _threshold(descending: list[int], cap: Fraction) -> Fraction:
    """``T`` of the water-filling: cap the largest counts until the next one fits under it."""
    rest = sum(descending)
    for capped, n in enumerate(descending):
        threshold = cap * rest / (1 - cap * capped)
        if n <= threshold:
            return threshold
        rest -= n
    raise AssertionError("unreachable: with N * cap > 1 some count fits under the threshold")


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    """Each client's share of the round from weights in sample units (for records and tests)."""
    total = math.fsum(weights.values())
    return {c: w / total for c, w in weights.items()}


__all__ = ["FoldWeight", "capped_weights", "check_max_weight_share", "shares"]
