"""What the aggregator does for a ``dpfedavg`` job, in one place (``fedcore.aggregator`` calls it).

* Before a round folds anything: the strategy's fixed denominator is the number of clients
  selected for the round (``fedcore.strategies.dpfedavg``).
* Before ``finalize``: the round's secret noise key, derived from the job's commit signing key
  and the folded updates (``fedcore.strategies.dp_noise``). The key is never logged.
* At commit: the round's ``PrivacyRecord`` (``fedcore.privacy``): epsilon so far and whether
  the next round would pass ``targetEpsilon``, in which case the record announces no next
  round and the job ends after it. Client-declared fields (``num_samples``,
  ``client_metrics``) are left out of the record.

For every other strategy each of these is a no-op, and ``fedcore.privacy`` (with its
``dp-accounting`` import) is not even loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fedcore import layout
from fedcore.commit_signing import CommitSigner
from fedcore.spec import FederatedJobSpec
from fedcore.strategies import Strategy
from fedcore.strategies.dp_noise import NoiseKey
from fedcore.strategies.dpfedavg import DPFedAvg

log = logging.getLogger("fedcore.aggregator")

NOISE_PURPOSE = "dpfedavg noise"
"""What the commit key's derived secret is for (``CommitSigner.derive_secret``)."""


class RoundPrivacy:
    """The aggregator's privacy duties for one job (no-ops unless it runs ``dpfedavg``)."""

    def __init__(self, spec: FederatedJobSpec, commit_key: CommitSigner) -> None:
        self.spec = spec
        self.dp = spec.strategy.dp
        self._key = NoiseKey(commit_key.derive_secret(NOISE_PURPOSE)) if self.dp else None

    @property
    def enabled(self) -> bool:
        return self.dp is not None

    def begin(self, strategy: Strategy, selected: Sequence[str]) -> None:
        """Fix the round's denominator: the clients selected for it."""
        if isinstance(strategy, DPFedAvg):
            strategy.expected_clients = len(selected)

    def seal(
        self, strategy: Strategy, round_: int, folded: Mapping[str, layout.UpdateManifest]
    ) -> None:
        """Give the strategy the noise key of this round and these folded updates."""
        if isinstance(strategy, DPFedAvg) and self._key is not None:
            pairs = [(client, m.update_sha256) for client, m in folded.items()]
            strategy.noise_key = self._key.for_round(round_, pairs)

    def account(
        self,
        previous: layout.RoundRecord | None,
        selected: Sequence[str],
        next_round: layout.NextRound | None,
        strategy: Strategy | None,
    ) -> layout.PrivacyRecord | None:
        """The privacy record of the round being committed (None without dp)."""
        if self.dp is None:
            return None
        from fedcore.privacy import account  # dp-accounting: loaded by DP jobs only

        clip = strategy.round_clip_bound if isinstance(strategy, DPFedAvg) else None
        return account(
            self.dp,
            previous.privacy if previous is not None else None,
            selected,
            next_round.selected if next_round is not None else None,
            clip_norm=clip,
        )

    def finish(
        self, record: layout.RoundRecord, privacy: layout.PrivacyRecord | None
    ) -> layout.RoundRecord:
        """``record`` with its privacy fields: no next round once the budget is reached, and
        no client-declared numbers."""
        if privacy is None:
            return record
        prefixes = tuple(f"{c.name}/" for c in self.spec.clients)
        dropped = {k: v for k, v in record.dropped_metrics.items() if not k.startswith(prefixes)}
        update: dict[str, object] = {
            "privacy": privacy,
            "num_samples": {},
            "client_metrics": {},
            "dropped_metrics": dropped,
        }
        if privacy.budget_reached:
            update["next"] = None
            log.warning(
                "round %d: %s", record.round, privacy.stop_message(record.round, self.spec.rounds)
            )
        return record.model_copy(update=update)


__all__ = ["NOISE_PURPOSE", "RoundPrivacy"]
