"""The round protocol's decisions as pure functions: who trains, when a round closes.

The aggregator's loop (``fedcore.aggregator``) does the I/O; every decision it takes about a
round lives here so it can be tested with plain values and no store: which clients a round
selects, its deadline, whether it may close now or must keep waiting, whether quorum has
become unreachable, and which fields of a spec must not change under a running job.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from fedcore.spec import FederatedJobSpec

TRAINING_CLIENT_FIELDS = ("name", "replicas", "procs_per_replica", "gpu", "task_config")
"""Client fields that change what a client computes. Placement (resources, nodeSelector,
volumes, env) may change between restarts; these may not."""


def select_clients(
    spec: FederatedJobSpec, round_: int, excluded: Collection[str] = ()
) -> list[str]:
    """The clients that train ``round_``, in spec order.

    Every non-excluded client is a candidate; ``spec.clients_per_round`` says how many are
    taken. When only part of them is taken the sample is drawn from a generator seeded by
    ``(spec.seed, round_)``, so a restarted aggregator selects exactly the same clients.
    """
    candidates = [c.name for c in spec.clients if c.name not in excluded]
    wanted = spec.clients_per_round(len(candidates))
    if wanted >= len(candidates):
        return candidates
    digest = hashlib.sha256(f"fedkube-select:{spec.seed}:{round_}".encode()).digest()
    chosen = set(random.Random(int.from_bytes(digest[:8], "big")).sample(candidates, wanted))
    return [name for name in candidates if name in chosen]


def round_deadline(started_at: datetime, spec: FederatedJobSpec) -> datetime:
    """When a round started at ``started_at`` may close with a quorum instead of everyone."""
    return started_at + timedelta(seconds=spec.strategy.round_timeout_seconds)


class Decision(StrEnum):
    """What the aggregator does with an open round after looking at the store."""

    WAIT = "wait"
    """Selected clients are still due and the round may not close yet."""
    ALL_REPORTED = "all-reported"
    """Every selected, non-excluded client answered (folded or rejected): close now."""
    DEADLINE = "deadline"
    """The deadline passed and at least ``minClients`` updates are folded: close now."""
    UNREACHABLE = "unreachable"
    """Even if every pending client reports, fewer than ``minClients`` updates would be
    folded: the round can never close, so the job fails."""


@dataclass(frozen=True)
class RoundState:
    """What the aggregator knows about an open round (all names are client names)."""

    selected: Sequence[str]
    deadline: datetime
    min_clients: int
    folded: frozenset[str] = frozenset()
    rejected: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    @property
    def pending(self) -> list[str]:
        """Selected clients still expected to report, in selection order."""
        done = self.folded | self.rejected | self.excluded
        return [name for name in self.selected if name not in done]


def decide(state: RoundState, now: datetime) -> Decision:
    """Close, keep waiting, or give up on an open round.

    A round closes when every selected, non-excluded client answered, or when its deadline
    passed and it folded ``minClients`` updates. Past the deadline without a quorum it keeps
    waiting while the quorum is still reachable (the job's ``activeDeadlineSeconds`` bounds
    that wait).
    """
    folded = len(state.folded)
    if folded + len(state.pending) < state.min_clients:
        return Decision.UNREACHABLE
    if not state.pending:
        return Decision.ALL_REPORTED
    if now >= state.deadline and folded >= state.min_clients:
        return Decision.DEADLINE
    return Decision.WAIT


def explain_unreachable(round_: int, state: RoundState, reasons: dict[str, str]) -> str:
    """One paragraph saying why ``round_`` can never reach its quorum, naming the clients."""
    lost = [
        f"{name} ({reasons.get(name, 'excluded' if name in state.excluded else 'rejected')})"
        for name in state.selected
        if name in state.rejected or name in state.excluded
    ]
    return (
        f"round {round_} cannot reach its quorum: it needs {state.min_clients} updates "
        f"(strategy.minClients), {len(state.folded)} were folded, {len(state.pending)} are "
        f"still due, and these selected clients are out: {', '.join(lost) or 'none'}. "
        "Fix the failing clients (see their logs) and rerun, or lower strategy.minClients."
    )


@dataclass(frozen=True)
class SpecDiff:
    """Training-relevant differences between the spec a run started with and a new one."""

    fields: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fields)


def _training_view(spec: FederatedJobSpec) -> dict[str, Any]:
    return {
        "rounds": spec.rounds,
        "seed": spec.seed,
        "task": spec.task.model_dump(mode="json"),
        "strategy": spec.strategy.model_dump(mode="json"),
        "clients": [
            {name: getattr(client, name) for name in TRAINING_CLIENT_FIELDS}
            for client in spec.clients
        ],
    }


def training_differences(started: FederatedJobSpec, now: FederatedJobSpec) -> SpecDiff:
    """Fields whose change would make a resumed run compute something else.

    Images, storage credentials, resources and run policy may change between restarts; the
    rounds, seed, task, strategy and the clients' training fields may not.
    """
    before, after = _training_view(started), _training_view(now)
    diffs: list[str] = []
    for key in ("rounds", "seed"):
        if before[key] != after[key]:
            diffs.append(f"spec.{key} ({before[key]} -> {after[key]})")
    for section in ("task", "strategy"):
        for name in sorted(set(before[section]) | set(after[section])):
            if before[section].get(name) != after[section].get(name):
                diffs.append(f"spec.{section}.{name}")
    old_clients, new_clients = before["clients"], after["clients"]
    if [c["name"] for c in old_clients] != [c["name"] for c in new_clients]:
        diffs.append("spec.clients (names or order)")
    else:
        for index, (old, new) in enumerate(zip(old_clients, new_clients, strict=True)):
            diffs.extend(
                f"spec.clients[{index}].{name}"
                for name in TRAINING_CLIENT_FIELDS
                if old[name] != new[name]
            )
    return SpecDiff(diffs)


def first_unseen(keys: Iterable[str], seen: Collection[str]) -> list[str]:
    """Manifest keys of a listing not handled yet, sorted by name (the fold order)."""
    return sorted(k for k in keys if k.endswith(".json") and k not in seen)
