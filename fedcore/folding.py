"""Folding one round's updates: each one is folded, or rejected with a reason, never a crash.

``OpenRound`` is what the aggregator (``fedcore.aggregator``) knows about the round it is
aggregating, and what it does with one client's update (``take``):

1. a name that is not selected is rejected (``not-selected``; names that are not clients of
   the job are recorded up to ``MAX_STRANGERS_RECORDED`` per round, then only logged);
2. ``fedcore.intake`` reads the manifest and the weights, sizes first;
3. ``fedcore.validation`` checks them against the round's base model;
4. the strategy folds the update (an integer sum that would leave its exact range is
   refused before anything is added: ``out-of-range``).

When ``strategy.maxWeightShare`` caps the clients' shares and the round's counts make the
cap bind, ``apply_weight_cap`` folds the round again from the store with the capped weights
(``fedcore.strategies.weighting`` says why a second pass); an update whose ``num_samples``
changed in between is rejected (``changed-during-round``).

Any other exception while one update is handled rejects that update (``internal-error``,
with the exception's message) and the round goes on; if the fold had begun, the accumulator
may hold part of the update, so the round is recomputed from the updates folded so far
(``refold``: read and validated again from the store). ``StoreUnavailable`` is the store's
fault, not the update's: the update is read again at the next poll.

When the round's result is not finite, ``guard`` rejects the updates at fault and
recomputes the round (``fedcore.guard`` explains the rule). Log lines go to the
aggregator's logger: they are the round loop's.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedcore import layout
from fedcore.credentials import slot_writer
from fedcore.errors import StoreUnavailable, UpdateRejected
from fedcore.guard import largest_magnitude
from fedcore.intake import fetch_update
from fedcore.quantization import open_update
from fedcore.rounds import RoundState
from fedcore.sharded_update import shards_dir
from fedcore.signing import SigningKey
from fedcore.spec import FederatedJobSpec
from fedcore.store import ObjectStore
from fedcore.strategies import Strategy
from fedcore.strategies.base import OutOfRange
from fedcore.strategies.weighting import FoldWeight, capped_weights
from fedcore.validation import validate_update
from fedcore.weights import Template, open_weights

log = logging.getLogger("fedcore.aggregator")

HEADER_ALLOWANCE_BYTES = 1 << 20
"""Slack over the model's tensor bytes allowed in an update (safetensors header, metadata)."""
MAX_CLIENT_NAME_CHARS = 253
"""Longest name in a manifest key that a rejection is recorded for (a DNS subdomain; job
clients' names are far shorter). Longer ones are only logged."""
MAX_STRANGERS_RECORDED = 16
"""Rejections recorded per round for names that are not clients of the job: enough to see
what is going on, few enough that junk keys cannot grow ``round.json`` (or the Events the
operator makes of it) without bound. Further ones are only logged."""


def recordable(client: str) -> bool:
    """Whether a name read from a key can go into a record as is: printable text of
    reasonable length (a store may list keys no record should repeat)."""
    return 0 < len(client) <= MAX_CLIENT_NAME_CHARS and client.isprintable()


def low_precision_allowed(spec: FederatedJobSpec) -> bool:
    """Whether the job lets clients upload float deltas narrower than the model's
    (``strategy.updateDtype``: ``bfloat16`` or ``int8``)."""
    return spec.strategy.update_dtype != "float32"


def fmt_metrics(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "-"


@dataclass(frozen=True)
class RoundInputs:
    """What folding reads besides the round itself."""

    spec: FederatedJobSpec
    store: ObjectStore
    keys: Mapping[str, SigningKey]
    workdir: Path
    """Where an update is downloaded while it is handled (one at a time)."""
    fresh_strategy: Callable[[], Strategy]
    """The round's strategy as it was before anything was folded (state reloaded)."""


@dataclass
class OpenRound:
    """What the aggregator tracks about the round it is aggregating, and its folding."""

    round: int
    previous: layout.RoundRecord
    """The newest committed round: its global model is this round's base."""
    next: layout.NextRound
    """What ``previous`` announced about this round: who was selected, the deadline."""
    template: Template
    base_path: Path
    """This round's base global model, downloaded and checked against ``previous``."""
    inputs: RoundInputs
    strategy: Strategy
    folded: dict[str, layout.UpdateManifest] = field(default_factory=dict)
    rejected: dict[str, layout.RejectedUpdate] = field(default_factory=dict)
    late: dict[str, layout.LateUpdate] = field(default_factory=dict)
    """Updates for ``previous.round`` that arrived after it closed."""
    seen: set[str] = field(default_factory=set)
    """Manifest keys already handled (folded or rejected)."""
    needs_refold: bool = False
    """A fold failed half-way: the strategy must be rebuilt from the folded updates."""
    strangers: int = 0
    """Rejections recorded for names that are not clients of the job."""
    weights: dict[str, FoldWeight] | None = None
    """The capped weights this pass folds with (``apply_weight_cap``); None: plain counts."""
    used_weights: dict[str, FoldWeight | None] = field(default_factory=dict)
    """The weight each folded update was folded with (None: its plain count)."""
    magnitudes: dict[str, float] = field(default_factory=dict)
    """Largest absolute value of each folded update, measured while recomputing a round
    whose aggregate was not finite (``fedcore.guard``)."""

    @property
    def max_update_bytes(self) -> int:
        """Largest update accepted: the bytes of the tensors an update carries (the model's,
        and the strategy's extras: ``Strategy.update_template``) plus header slack."""
        carried = self.strategy.update_template(self.template)
        tensor_bytes = sum(spec.dtype.itemsize * math.prod(spec.shape) for spec in carried.values())
        return tensor_bytes + HEADER_ALLOWANCE_BYTES + 256 * len(carried)

    def state(self, min_clients: int, excluded: Mapping[str, str]) -> RoundState:
        selected = self.next.selected
        return RoundState(
            selected=selected,
            deadline=self.next.deadline,
            min_clients=min_clients,
            folded=frozenset(self.folded),
            rejected=frozenset(c for c in self.rejected if c in selected),
            excluded=frozenset(excluded),
        )

    # -- one update ------------------------------------------------------------------------

    def take(self, client: str, *, alone: bool = False) -> None:
        """Validate one client's update and fold it, or record why it was rejected.

        With ``alone`` (recomputing a round whose aggregate was not finite) the update is
        first checked on its own (``fedcore.guard``) and its magnitude noted. Afterwards
        call ``settle`` (a fold that failed half-way asks for a recomputation).
        """
        r, selected, inputs = self.round, self.next.selected, self.inputs
        update_path = inputs.workdir / f"update-{r}.safetensors"
        folding = False
        try:
            if client not in selected:
                known = client in {c.name for c in inputs.spec.clients}
                if not known and self.strangers >= MAX_STRANGERS_RECORDED:
                    log.warning("round %d: ignoring %r, not a client of this job", r, client)
                    return
                self.strangers += 0 if known else 1
                why = (
                    f"was not selected for round {r} (selected: {', '.join(selected)})"
                    if known
                    else "is not a client of this job"
                )
                raise UpdateRejected(client, "not-selected", f"client {client!r} {why}")
            manifest_bytes = fetch_update(
                inputs.store, r, client, update_path, max_update_bytes=self.max_update_bytes
            )
            with open_weights(self.base_path) as base:
                manifest = validate_update(
                    manifest_bytes,
                    update_path,
                    client=client,
                    expected_round=r,
                    base_sha256=self.previous.model_sha256,
                    template=self.strategy.update_template(self.template),
                    max_bytes=self.max_update_bytes,
                    key=inputs.keys.get(client),
                    base=base,
                    allow_low_precision=low_precision_allowed(inputs.spec),
                )
                with open_update(update_path, manifest, self.template) as update:
                    if alone:
                        self.magnitudes[client] = largest_magnitude(update)
                        if not self.strategy.alone_is_finite(update, base):
                            raise UpdateRejected(
                                client,
                                "non-finite-aggregate",
                                "the round's new global model (or server state) came out "
                                "holding NaN or inf, and this update alone would make it so; "
                                "the round was recomputed without it",
                            )
                    weight = (self.weights or {}).get(client)
                    if weight is not None and weight.num_samples != manifest.num_samples:
                        raise UpdateRejected(
                            client,
                            "changed-during-round",
                            f"its manifest declared num_samples={weight.num_samples} when the "
                            f"round closed, and {manifest.num_samples} when it was read again "
                            "to fold it with its capped weight (strategy.maxWeightShare)",
                        )
                    folding = True
                    try:
                        self.strategy.fold(update, manifest.num_samples, weight=weight)
                    except OutOfRange as e:
                        folding = False  # refused before anything was added
                        raise UpdateRejected(client, "out-of-range", str(e)) from e
        except UpdateRejected as e:
            self.reject(client, e.reason, e.detail)
            return
        except StoreUnavailable as e:
            # Not the update's fault: forget the key so the next poll reads it again.
            self.seen.discard(layout.manifest_key(r, client))
            log.warning("round %d %s: store unavailable, will read it again: %s", r, client, e)
            return
        except Exception as e:  # no bytes in the store may end the process
            log.exception("round %d %s: unexpected error while handling the update", r, client)
            self.reject(client, "internal-error", f"{type(e).__name__}: {e}")
            if folding:  # the accumulator may hold part of this update
                self.needs_refold = True
            return
        finally:
            update_path.unlink(missing_ok=True)
            shutil.rmtree(shards_dir(update_path), ignore_errors=True)
        self.folded[client] = manifest
        self.used_weights[client] = weight
        log.info(
            "fold round %d %s: %d samples, metrics %s (%d/%d folded)",
            r,
            client,
            manifest.num_samples,
            fmt_metrics(manifest.metrics),
            len(self.folded),
            len(selected),
        )

    def reject(self, client: str, reason: str, detail: str) -> None:
        spec = self.inputs.spec
        writer = slot_writer(
            self.round,
            client,
            scoped=bool(spec.storage.endpoint) and spec.storage.credentials == "scoped",
            is_client=client in {c.name for c in spec.clients},
        )
        self.rejected[client] = layout.RejectedUpdate(
            client=client, reason=reason, detail=detail, writer=writer
        )
        log.warning("reject round %d %s: %s: %s", self.round, client, reason, detail)

    # -- recomputing the round -------------------------------------------------------------

    def refold(self, *, alone: bool = False) -> None:
        """Rebuild the strategy and fold the round's folded updates again, read anew from
        the store (validated again: a client may have replaced its files meanwhile)."""
        self.needs_refold = False
        clients = list(self.folded)
        log.warning(
            "round %d: recomputing from %d folded updates%s",
            self.round,
            len(clients),
            ", each checked alone" if alone else "",
        )
        self.folded = {}
        self.used_weights = {}
        self.magnitudes = {}
        self.strategy = self.inputs.fresh_strategy()
        for client in clients:
            self.take(client, alone=alone)
            if self.needs_refold:
                return  # another fold failed half-way: settle starts over

    def apply_weight_cap(self) -> None:
        """Make the strategy hold the round folded with the weights its counts call for
        (``fedcore.strategies.weighting``): when ``strategy.maxWeightShare`` binds, fold the
        round again from the store with the capped weights. Call it before ``finalize``.

        Each further pass happens only because the last one rejected an update (or one
        arrived meanwhile), so this ends within one pass per update.
        """
        while True:
            counts = {c: m.num_samples for c, m in self.folded.items()}
            wanted = capped_weights(counts, self.strategy.max_weight_share)
            if self.used_weights == (wanted if wanted is not None else dict.fromkeys(counts)):
                return
            if wanted is not None:
                total = math.fsum(w.value for w in wanted.values())
                log.warning(
                    "round %d: capping weight shares at %s: %s",
                    self.round,
                    self.strategy.max_weight_share,
                    ", ".join(f"{c}={w.value / total:.4f}" for c, w in wanted.items()),
                )
            self.weights = wanted
            self.refold()
            self.settle()

    def settle(self) -> None:
        """Recompute until no fold is left half-way (each pass rejects one update more)."""
        while self.needs_refold:
            self.refold()

    def guard(self, bad: list[str]) -> None:
        """The round's result holds NaN or inf in ``bad``: reject the updates at fault and
        recompute the round from the others (see ``fedcore.guard``)."""
        log.warning(
            "round %d: the new global model holds NaN or inf (%s); not committing it",
            self.round,
            ", ".join(bad[:5]),
        )
        before = set(self.rejected)
        self.refold(alone=True)
        self.settle()
        if set(self.rejected) - before or not self.magnitudes:
            return
        worst = max(self.magnitudes, key=lambda c: (self.magnitudes[c], c))
        del self.folded[worst]
        self.reject(
            worst,
            "non-finite-aggregate",
            "the round's new global model (or server state) came out holding NaN or inf; no "
            "update alone makes it so, and this one has the largest values "
            f"({self.magnitudes[worst]:.4g}), so the round was recomputed without it",
        )
        self.refold()
        self.settle()


__all__ = [
    "HEADER_ALLOWANCE_BYTES",
    "MAX_CLIENT_NAME_CHARS",
    "MAX_STRANGERS_RECORDED",
    "OpenRound",
    "RoundInputs",
    "low_precision_allowed",
    "recordable",
]
