"""Where each object of a job lives in the store, and the JSON records of the round protocol.

The store is the only channel between the aggregator, the clients and the operator, so its
layout is the protocol (see DESIGN.md, "The round protocol")::

    job.json                                    spec snapshot the run was started with
    rounds/000000/global.safetensors            initial model
    rounds/000000/round.json                    commit record of round 0
    rounds/000001/updates/<client>.safetensors  a client's delta from round 0's global
    rounds/000001/updates/<client>.json         its manifest (written after the weights)
    rounds/000001/updates/<client>.shard-00000-of-00004.safetensors
                                                one rank's part of a sharded (FSDP) update,
                                                instead of <client>.safetensors
    rounds/000001/global.safetensors
    rounds/000001/round.json                    written last: round 1 is committed
    final/model.safetensors, final/round.json
    control/excluded.json                       clients dropped by the operator (or runner)
    clients/<client>/scaffold.safetensors       a SCAFFOLD client's own control variate


A round is committed exactly when its ``round.json`` exists. Records are immutable once
written, which lets readers (the operator) cache them forever. What a record may hold (finite
metrics, encodable text, bounded manifests) is ``fedcore.records``' business: whatever one
part writes, every other part reads back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcore.records import (
    MAX_DETAIL_CHARS,
    Int64,
    ManifestMetrics,
    encodable,
    move_non_finite,
    safe_text,
)

JOB_KEY = "job.json"
FINAL_MODEL_KEY = "final/model.safetensors"
FINAL_RECORD_KEY = "final/round.json"
EXCLUDED_KEY = "control/excluded.json"
ROUNDS_PREFIX = "rounds/"
STRATEGY_STATE = "strategy.safetensors"
"""Per-round server-optimizer state (FedAvgM momentum, SCAFFOLD's server variate), next to
that round's global; the round's record names its sha256 (``strategy_sha256``)."""
CLIENTS_PREFIX = "clients/"
"""Per-client objects that outlive a round, each written only by its client."""
CLIENT_VARIATE = "scaffold.safetensors"
"""A SCAFFOLD client's own control variate (``fedcore.variates``)."""


class _Located(Protocol):
    def uri(self, key: str) -> str: ...


def store_location(store: _Located) -> str:
    """The URI of the job's folder in the store (``file:///.../`` or ``s3://bucket/prefix/``)."""
    return store.uri(JOB_KEY).removesuffix(JOB_KEY)


_ROUND_RECORD = re.compile(r"^rounds/(\d{6})/round\.json$")


def round_dir(r: int) -> str:
    if r < 0:
        raise ValueError(f"round must be >= 0, got {r}")
    return f"{ROUNDS_PREFIX}{r:06d}/"


def global_key(r: int) -> str:
    return f"{round_dir(r)}global.safetensors"


def strategy_state_key(r: int) -> str:
    return f"{round_dir(r)}{STRATEGY_STATE}"


def client_variate_key(client: str) -> str:
    """Where ``client`` keeps its SCAFFOLD control variate; only its own role may read or
    write it (``fedcore.credentials``)."""
    if not client or "/" in client:
        raise ValueError(f"client name must be non-empty without '/', got {client!r}")
    return f"{CLIENTS_PREFIX}{client}/{CLIENT_VARIATE}"


def round_record_key(r: int) -> str:
    return f"{round_dir(r)}round.json"


def updates_prefix(r: int) -> str:
    return f"{round_dir(r)}updates/"


def update_key(r: int, client: str) -> str:
    return f"{updates_prefix(r)}{client}.safetensors"


def manifest_key(r: int, client: str) -> str:
    return f"{updates_prefix(r)}{client}.json"


MAX_SHARDS = 256
"""Most shards (ranks) one update may be cut into: their entries must fit the manifest."""


def shard_key(r: int, client: str, index: int, count: int) -> str:
    """Where rank ``index`` of a ``count``-rank client puts its part of a sharded update."""
    if not 0 <= index < count <= MAX_SHARDS:
        raise ValueError(f"shard {index} of {count}: need 0 <= index < count <= {MAX_SHARDS}")
    return f"{updates_prefix(r)}{client}.shard-{index:05d}-of-{count:05d}.safetensors"


def committed_rounds(keys: list[str]) -> list[int]:
    """Round numbers whose commit record is among ``keys`` (a store listing), ascending."""
    rounds = (_ROUND_RECORD.match(k) for k in keys)
    return sorted(int(m.group(1)) for m in rounds if m)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    OMITTED_WHEN_EMPTY: ClassVar[tuple[str, ...]] = ()
    """Fields left out of the JSON while empty: added after records were first written, so
    the common record stays byte-identical and readable by an older fedkube."""

    @model_validator(mode="before")
    @classmethod
    def _encodable_text(cls, data: Any) -> Any:
        return encodable(data)

    def to_json(self) -> bytes:
        empty = {name for name in self.OMITTED_WHEN_EMPTY if not getattr(self, name)}
        return self.model_dump_json(indent=2, exclude=empty or None).encode()


class UpdateShard(_Record):
    """One shard of a sharded update, as its manifest (and so its signature) lists it."""

    sha256: str
    bytes: Int64 = Field(ge=0)


class UpdateManifest(_Record):
    """A client's statement about its update; its signature covers every other field.

    Untrusted input: numbers must be finite and integers within int64, metrics at most
    ``fedcore.records.MAX_METRICS`` under short names (a manifest breaking these does not
    parse, and the aggregator rejects it as ``bad-manifest``).
    """

    client: str
    round: Int64 = Field(ge=1)
    """The round this update is for."""
    base_round: Int64 = Field(ge=0)
    """Round of the global model the client trained from (``round - 1``)."""
    base_sha256: str
    num_samples: Int64
    """Samples the whole DDP group trained on (all ranks), the FedAvg weight."""
    metrics: ManifestMetrics = Field(default_factory=dict)
    update_sha256: str
    update_bytes: Int64
    dtype: str
    """Wire dtype of the floating-point tensors (e.g. ``float32``, ``bfloat16``)."""
    created_at: datetime = Field(default_factory=utcnow)
    signature: str = ""
    """Hex HMAC-SHA256 of the canonical JSON of all other fields, with the client's key."""
    shards: list[UpdateShard] = Field(default_factory=list, max_length=MAX_SHARDS)
    """Empty: the update is one file, ``<client>.safetensors``. Else a sharded update
    (``fedcore.sharded_update``): shard ``i`` is ``shard_key(round, client, i, len(shards))``
    with this sha256 and size, ``update_sha256`` is ``shards_digest`` of the list and
    ``update_bytes`` the sum of the sizes."""

    OMITTED_WHEN_EMPTY: ClassVar[tuple[str, ...]] = ("shards",)


class RejectedUpdate(_Record):
    client: str
    reason: str
    """Stable short code (``fedcore.validation.REJECT_REASONS``): bad-signature, ..."""
    detail: str
    """What exactly was wrong, one paragraph (at most ``MAX_DETAIL_CHARS``)."""
    writer: str = ""
    """Whose store credential wrote the update's slot, as far as the store's access rules
    tell (``fedcore.credentials.slot_writer``); empty in records of earlier versions."""

    @field_validator("detail", "writer", mode="before")
    @classmethod
    def _short_detail(cls, value: Any) -> Any:
        return safe_text(value, MAX_DETAIL_CHARS) if isinstance(value, str) else value


class LateUpdate(_Record):
    client: str
    round: int
    """The already-closed round the update was meant for."""


class NextRound(_Record):
    """What the commit of round r announces about round r + 1."""

    round: int
    selected: list[str]
    deadline: datetime
    """Past it the round closes as soon as ``minClients`` updates are in."""


class PrivacyRecord(BaseModel):
    """What a ``dpfedavg`` round record says about privacy (``fedcore.privacy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(ge=0.0, allow_inf_nan=False)
    """Client-level epsilon of everything released up to and including this round, at
    ``delta``."""
    delta: float = Field(gt=0.0, lt=1.0)
    noise_multiplier: float = Field(gt=0.0, allow_inf_nan=False)
    """``z`` charged per round (update sum and, with adaptive clipping, the count together)."""
    accountant: str
    """Which accountant computed ``epsilon`` (method and library version)."""
    clip_norm: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    """The bound this round clipped updates at (None in round 0)."""
    rounds_accounted: int = Field(ge=0)
    """Most rounds any one client was selected for so far: the count ``epsilon`` composes."""
    selections: dict[str, int] = Field(default_factory=dict)
    """Rounds each client was selected for so far (the next record adds to it)."""
    target_epsilon: float | None = None
    budget_reached: bool = False
    """The next round would take epsilon past ``target_epsilon``: the job ends after this
    round (its model is the final one) and ``next`` is None."""
    next_epsilon: float | None = None
    """Epsilon the job would reach with the next round (None after the last round)."""

    def stop_message(self, round_: int, rounds: int) -> str:
        """What a person is told when the budget ended the job after ``round_`` of ``rounds``."""
        upcoming = "" if self.next_epsilon is None else f" to {self.next_epsilon:.3g}"
        return (
            f"privacy budget reached: stopped after round {round_} of {rounds} at epsilon "
            f"{self.epsilon:.3g} (delta {self.delta:g}); round {round_ + 1} would take it"
            f"{upcoming}, past strategy.dp.targetEpsilon {self.target_epsilon:g}"
        )


class RoundRecord(_Record):
    """``rounds/NNNNNN/round.json``: written last, it commits the round."""

    OMITTED_WHEN_EMPTY = ("dropped_metrics", "privacy", "strategy_sha256")

    round: int
    participants: list[str] = Field(default_factory=list)
    """Clients whose update was folded into this round's global model."""
    num_samples: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    """Evaluation of this round's global model (loss, accuracy, ...); finite values only."""
    client_metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    dropped_metrics: dict[str, str] = Field(default_factory=dict)
    """Metrics left out because JSON cannot hold them: name (``<client>/<name>`` for a
    client's) -> ``"nan"``, ``"inf"``, ``"-inf"`` or ``"null"`` (see ``fedcore.records``)."""
    rejected: list[RejectedUpdate] = Field(default_factory=list)
    late: list[LateUpdate] = Field(default_factory=list)
    model_key: str
    model_sha256: str
    strategy_sha256: str = ""
    """sha256 of ``rounds/NNNNNN/strategy.safetensors`` when the round wrote strategy state
    (empty: none). Clients that read the state (SCAFFOLD's server variate) check it."""
    started_at: datetime
    committed_at: datetime = Field(default_factory=utcnow)
    next: NextRound | None = None
    """None on the last round."""
    closed_by: Literal["initial", "all-reported", "deadline"] = "all-reported"
    privacy: PrivacyRecord | None = None
    """``dpfedavg`` only: epsilon so far, and whether the privacy budget ends the job here.
    Such records leave ``num_samples`` and ``client_metrics`` empty: they are what clients
    declare about their data, unclipped and unnoised (``fedcore.privacy``)."""
    signature: str = ""
    """Hex Ed25519 signature of every other field by the job's aggregator key
    (``fedcore.commit_signing``); readers refuse a record without a valid one."""

    @model_validator(mode="before")
    @classmethod
    def _finite_metrics(cls, data: Any) -> Any:
        return move_non_finite(data, client_field="client_metrics")

    @property
    def duration_seconds(self) -> float:
        return (self.committed_at - self.started_at).total_seconds()


class FinalRecord(_Record):
    """``final/round.json``: the job is done."""

    OMITTED_WHEN_EMPTY = ("dropped_metrics", "privacy")

    rounds: int
    model_key: str = FINAL_MODEL_KEY
    model_sha256: str
    metrics: dict[str, float] = Field(default_factory=dict)
    """The last round's metrics; finite values only."""
    dropped_metrics: dict[str, str] = Field(default_factory=dict)
    """As ``RoundRecord.dropped_metrics``."""
    privacy: PrivacyRecord | None = None
    """The last round's (``dpfedavg`` only); ``budget_reached``: the privacy budget, not
    ``spec.rounds``, ended the job."""
    committed_at: datetime = Field(default_factory=utcnow)
    signature: str = ""
    """Hex Ed25519 signature by the job's aggregator key, as on ``RoundRecord``."""

    @model_validator(mode="before")
    @classmethod
    def _finite_metrics(cls, data: Any) -> Any:
        return move_non_finite(data)


class ExcludedClients(_Record):
    """``control/excluded.json``: clients given up after their restart budget."""

    clients: dict[str, str] = Field(default_factory=dict)
    """Client name -> why it was dropped."""
