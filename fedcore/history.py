"""A job's history as its store tells it, for ``fedkube plot`` and ``fedkube watch``.

Every round record and the final record pass the commit verifier first, like
``fedkube status`` (a record that does not verify ends the history there and is named in
``refused``). The only unsigned-by-the-aggregator input read here is each participant's
update manifest, and only for its ``created_at``: the time the client stamped on its update,
by the client's clock. It is what the records offer about stragglers (they hold when a round
opened and when it committed, not when each update arrived), and it is shown as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcore import layout
from fedcore.commit_signing import CommitVerifier, UnverifiedRecord, read_round_record
from fedcore.errors import ObjectNotFound
from fedcore.spec import FederatedJob
from fedcore.store import ObjectStore

UPDATE_TIMES_SOURCE = "client-stamped update times (client clocks, not verified)"
NO_UPDATE_TIMES = "no update times in the store: round durations only"


@dataclass
class History:
    """The verified records of one job, in round order."""

    job: FederatedJob
    records: list[layout.RoundRecord] = field(default_factory=list)
    final: layout.FinalRecord | None = None
    refused: str | None = None
    """Why the record after the last in ``records`` was refused; None when none was."""
    arrivals: dict[int, dict[str, float]] = field(default_factory=dict)
    """Round -> participant -> seconds from the round's opening to its update's timestamp."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Clients given up (``control/excluded.json``): name -> why."""

    @property
    def finished(self) -> bool:
        return self.final is not None


def read_history(
    store: ObjectStore, job: FederatedJob, verifier: CommitVerifier, *, arrivals: bool = True
) -> History:
    """Every committed round's verified record, the final record and (``arrivals``) when
    each participant's update was stamped."""
    return extend_history(History(job), store, verifier, arrivals=arrivals)


def extend_history(
    history: History, store: ObjectStore, verifier: CommitVerifier, *, arrivals: bool = True
) -> History:
    """``history`` with the rounds committed since it was read (a live view re-reads only
    those) and the store's current final record and excluded clients."""
    from fedcore.runner import read_final

    history.refused = None
    for r in range(len(history.records), history.job.spec.rounds + 1):
        try:
            data = store.get_bytes(layout.round_record_key(r))
        except ObjectNotFound:
            break
        try:
            record = read_round_record(data, r, verifier)
        except UnverifiedRecord as e:
            history.refused = f"round {r}: {e}"
            return history
        history.records.append(record)
        if arrivals and record.participants:
            history.arrivals[r] = _arrivals(store, record)
    history.excluded = _excluded(store)
    try:
        history.final = read_final(store, verifier)
    except UnverifiedRecord as e:
        history.refused = f"final: {e}"
    return history


def _excluded(store: ObjectStore) -> dict[str, str]:
    try:
        data = store.get_bytes(layout.EXCLUDED_KEY)
    except ObjectNotFound:
        return {}
    try:
        return dict(layout.ExcludedClients.model_validate_json(data).clients)
    except ValueError:
        return {"?": "control/excluded.json does not parse"}


def _arrivals(store: ObjectStore, record: layout.RoundRecord) -> dict[str, float]:
    found: dict[str, float] = {}
    for client in record.participants:
        try:
            manifest = layout.UpdateManifest.model_validate_json(
                store.get_bytes(layout.manifest_key(record.round, client))
            )
        except (ObjectNotFound, ValueError):
            continue  # gone or unreadable: the plot shows what is there
        if manifest.client != client or manifest.round != record.round:
            continue
        found[client] = (manifest.created_at - record.started_at).total_seconds()
    return found
