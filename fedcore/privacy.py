"""The privacy accountant of ``dpfedavg``: client-level epsilon after every round, and the
budget (``strategy.dp.targetEpsilon``) that ends a job before it is spent.

What is released. Every round publishes a global model computed by the Gaussian mechanism
of ``fedcore.strategies.dpfedavg`` (noise multiplier ``z`` on a sum of sensitivity ``C`` under
zero-out adjacency; with adaptive clipping, ``z`` already covers the noised count). Epsilon is
computed with Rényi DP (Mironov, 2017) by Google's ``dp-accounting`` library
(``dp_accounting.rdp.RdpAccountant``), then converted to ``(epsilon, delta)`` at the job's
``strategy.dp.delta``.

Why no amplification by sampling. With ``fractionFit < 1`` fedkube selects a fixed-size sample
without replacement each round, and ``dp-accounting`` can account for that
(``SampledWithoutReplacementDpEvent``) or for Poisson sampling, with a much smaller epsilon.
But those bounds hold only when the adversary does not know who was sampled, and in fedkube
everybody does: the selection is drawn from ``spec.seed`` (in ``job.json``) and announced in
``round.json`` (``next.selected``) so that the selected clients know to train. Claiming the
amplification would overstate privacy. Instead each client's loss composes over the rounds it
was selected for (``selections``; a client neither selected nor folded is untouched by a
round under zero-out adjacency), and the job's epsilon is that of the most-selected client:
``RdpAccountant`` composing ``GaussianDpEvent(z)`` ``rounds_accounted`` times. A selected
client that misses the deadline, or whose update is rejected, is still counted (conservative:
whether it reported may depend on its data).

Why RDP rather than the tighter PLD accountant. RDP is the accountant of the DP-FedAvg and
adaptive clipping papers and of TensorFlow Federated and Opacus, so the numbers can be
checked against them; it is a closed form over a fixed list of orders (no discretization
parameter, the same number on every machine, microseconds per round whatever the round
count), and it errs on the safe side (PLD would report a somewhat smaller epsilon).

What the guarantee assumes, and does not cover:

* the noise is secret (``fedcore.strategies.dp_noise``): the aggregator's commit key is not
  leaked;
* the coordinator is trusted: it sees each update unnoised (central DP);
* one model per round is released: a crash after a round's global model is uploaded and before
  its record, followed by a rerun that folds a different set of updates, uploads a second
  model for the round (with independent noise) that the accountant does not charge;
* what clients declare about their data (``num_samples``, their training metrics) is left out
  of dpfedavg's round records, but the list of participants, rejections with their reasons
  and late updates stay public; these depend on whether a client's software sent a valid
  update in time, not on the values of its data;
* the aggregator's evaluation metrics are computed on the aggregator's data from the released
  model (post-processing: free).

Only the aggregator imports this module (``dp-accounting`` is a runtime dependency): the
operator copies epsilon from the signed records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import version

import dp_accounting
from dp_accounting import rdp

from fedcore.layout import PrivacyRecord
from fedcore.spec import DPSpec


def accountant_name() -> str:
    return f"rdp (dp-accounting {version('dp-accounting')})"


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` of ``rounds`` compositions of the Gaussian mechanism with
    ``noise_multiplier`` (0 for no round)."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return 0.0
    accountant = rdp.RdpAccountant()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), rounds
    )
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _selected_once_more(selections: Mapping[str, int], selected: Iterable[str]) -> dict[str, int]:
    counts = dict(selections)
    for client in selected:
        counts[client] = counts.get(client, 0) + 1
    return dict(sorted(counts.items()))


def account(
    dp: DPSpec,
    previous: PrivacyRecord | None,
    selected: Iterable[str],
    next_selected: Iterable[str] | None,
    *,
    clip_norm: float | None,
) -> PrivacyRecord:
    """The privacy record of a round whose selection was ``selected`` (empty for round 0),
    after ``previous`` (None for round 0); ``next_selected``: the clients the next round would
    select (None after the last round). ``budget_reached`` when that round would take
    epsilon past ``dp.target_epsilon``."""
    selections = _selected_once_more(previous.selections if previous else {}, selected)
    rounds = max(selections.values(), default=0)
    eps = epsilon(dp.noise_multiplier, rounds, dp.delta)
    next_eps = None
    if next_selected is not None:
        upcoming = _selected_once_more(selections, next_selected)
        next_eps = epsilon(dp.noise_multiplier, max(upcoming.values(), default=0), dp.delta)
    reached = (
        dp.target_epsilon is not None and next_eps is not None and next_eps > dp.target_epsilon
    )
    return PrivacyRecord(
        epsilon=eps,
        delta=dp.delta,
        noise_multiplier=dp.noise_multiplier,
        accountant=accountant_name(),
        clip_norm=clip_norm,
        rounds_accounted=rounds,
        selections=selections,
        target_epsilon=dp.target_epsilon,
        budget_reached=reached,
        next_epsilon=next_eps,
    )


__all__ = ["account", "accountant_name", "epsilon"]
