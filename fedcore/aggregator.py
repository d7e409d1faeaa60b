"""The aggregator: the round loop that turns client updates into the next global model.

One process, restartable at any instant. Everything it knows lives in the store, so on start
it reads the newest committed round and goes on from there (see DESIGN.md, "The round
protocol"). A round ``r``:

1. starts from round ``r-1``'s record: its global model, and ``next`` (the clients selected
   for ``r`` and the deadline);
2. folds each update as its manifest appears (sorted by name within one listing), after
   ``fedcore.intake`` read it (sizes first) and ``fedcore.validation`` accepted it; a
   rejected one is recorded with its reason (``fedcore.folding``);
3. closes when the pure rules of ``fedcore.rounds.decide`` say so;
4. checks that the new global model and the strategy's state are finite, recomputing the
   round without the updates that made them not (``fedcore.guard``);
5. writes the new global model (and the strategy's state), then ``round.json`` with a
   create-if-absent put: a round is committed exactly once, and the record is written last.
   Every record (and the final one) is signed with the job's Ed25519 key
   (``fedcore.commit_signing``); records read back (on resume, or a slot found taken) must
   verify with it.

With ``dpfedavg`` (differential privacy), ``fedcore.aggregator_privacy`` fixes each round's
denominator, hands the strategy its secret noise key before ``finalize`` and puts epsilon into
the record; a record whose next round would pass ``targetEpsilon`` announces none, and the job
ends there with that round's model as the final one.

A record slot taken by a record this key did not sign means someone else holding a store
credential that may write records got there first. Clients refuse that record, but the
aggregator cannot replace it (create-if-absent; it may not delete), and overwriting would
race the forger forever. So it stops with ``UnverifiedRecord``, naming the round and the
key: honest clients never trained on the forgery, and the operator reports it.

No bytes in the store end the process. What clients (or anyone with write access to their
slots) put there ends as a rejection with a reason code: an unexpected exception while one
update is handled rejects that update (``internal-error``) and the round goes on; trouble
reaching the store is retried at the next poll. The drop list (``control/excluded.json``) is
read the same way: garbage there is logged and the last good list kept. What only the
aggregator writes (round records, global models, strategy state) is checked on resume, and
a mismatch is a ``RoundProtocolError`` naming the object and the fix: no rejection can route
around a broken commit.

Updates for the previous round that show up after it closed are recorded as late in the
next record. Memory stays O(model): the strategy streams, and an update is held on disk,
never in memory as a whole; with ``spec.aggregator.accumulator: disk`` the new model is
written straight to its file (``Strategy.finalize_to_file``), the strategy's state too
(``Strategy.save_state``; a server optimizer's state is read back a slice at a time,
``Strategy.load_state_file``), and the model is evaluated by loading it into the task's
model a tensor at a time, so only that model grows with the model's size. Each fold,
rejection and commit is one log line.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import torch
from pydantic import ValidationError

from fedcore import layout
from fedcore.aggregator_metrics import (
    LINGER_ENV,
    AggregatorMetrics,
    linger_seconds,
    metrics_port,
    serve,
)
from fedcore.aggregator_privacy import RoundPrivacy
from fedcore.commit_signing import (
    CommitSigner,
    UnverifiedRecord,
    read_final_record,
    read_round_record,
    signer_from_env,
)
from fedcore.credentials import Role
from fedcore.errors import (
    FedcoreError,
    ObjectExists,
    ObjectNotFound,
    RoundProtocolError,
    StoreError,
    TaskError,
)
from fedcore.folding import OpenRound, RoundInputs, recordable
from fedcore.folding import fmt_metrics as _fmt_metrics
from fedcore.guard import non_finite_tensors
from fedcore.model_loading import load_into
from fedcore.rounds import (
    Decision,
    decide,
    explain_unreachable,
    round_deadline,
    select_clients,
    training_differences,
)
from fedcore.signing import SigningKey, keys_from_env
from fedcore.spec import FederatedJob, load_job, parse_job
from fedcore.store import ObjectStore, open_job_store
from fedcore.strategies import Scaffold, Strategy, build_strategy
from fedcore.strategies.spool import SpooledStrategy, clear_spools
from fedcore.tasks.base import Task, TaskContext, load_task
from fedcore.tracking import NoTracking, Tracker, tracker_for
from fedcore.weights import (
    Template,
    Tensors,
    open_weights,
    save_weights,
    sha256_file,
)

log = logging.getLogger("fedcore.aggregator")

"""Root folder of the local store (jobs without ``spec.storage.endpoint``)."""
POLL_SECONDS = 0.25
"""How often an open round lists its updates: a round closes at most this long after its
last update arrived. A listing is one cheap request, even on S3."""


class QuorumUnreachable(RoundProtocolError):
    """A round lost so many clients (rejected or excluded) that it can never close."""


class AggregatorStopped(FedcoreError):
    """``Aggregator.stop()`` was called while a round was open (nothing was committed)."""


def _now() -> datetime:
    return layout.utcnow()


def _client_of(manifest_key: str) -> str:
    return manifest_key.rsplit("/", 1)[-1].removesuffix(".json")


class Aggregator:
    def __init__(
        self,
        job: FederatedJob,
        store: ObjectStore,
        keys: Mapping[str, SigningKey],
        workdir: Path,
        *,
        commit_key: CommitSigner,
        poll_seconds: float = POLL_SECONDS,
        task: Task | None = None,
        metrics: AggregatorMetrics | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.job = job
        self.metrics = metrics if metrics is not None else AggregatorMetrics()
        self.tracker: Tracker = tracker if tracker is not None else NoTracking()
        self.commit_key = commit_key
        self.spec = job.spec
        self.store = store
        self.keys = dict(keys)
        self.workdir = workdir
        self.poll_seconds = poll_seconds
        self.task = task if task is not None else load_task(self.spec.task.entrypoint)
        self._stopping = threading.Event()
        self._last_excluded: dict[str, str] = {}
        self._excluded_problem: str | None = None
        self.privacy = RoundPrivacy(self.spec, commit_key)

    def stop(self) -> None:
        """Make the loop raise ``AggregatorStopped`` at its next wait (thread-safe)."""
        self._stopping.set()

    # -- helpers ---------------------------------------------------------------------------

    def _ctx(self, round_: int) -> TaskContext:
        return TaskContext.for_aggregator(self.spec, round_)

    def _evaluate(self, tensors: Tensors, round_: int) -> dict[str, float]:
        ctx = self._ctx(round_)
        model = self.task.build_model(ctx)
        model.load_state_dict(tensors)
        with torch.no_grad():
            metrics = self.task.evaluate(model, ctx)
        return {str(k): float(v) for k, v in metrics.items()}

    def _evaluate_file(self, path: Path, round_: int) -> dict[str, float]:
        """Evaluate the model saved at ``path``, copying it into the task's model one tensor
        at a time (the model itself is the only copy held in memory)."""
        ctx = self._ctx(round_)
        model = self.task.build_model(ctx)
        with open_weights(path) as saved, torch.no_grad():
            load_into(model, saved)
            metrics = self.task.evaluate(model, ctx)
        return {str(k): float(v) for k, v in metrics.items()}

    def _excluded(self) -> dict[str, str]:
        """The drop list; unreadable or invalid content keeps the last good one (logged)."""
        try:
            data = self.store.get_bytes(layout.EXCLUDED_KEY)
            clients = dict(layout.ExcludedClients.model_validate_json(data).clients)
        except ObjectNotFound:
            clients = {}
        except (StoreError, ValidationError, ValueError) as e:
            problem = f"{type(e).__name__}: {e}".splitlines()[0]
            if problem != self._excluded_problem:
                self._excluded_problem = problem
                log.warning(
                    "cannot read %s (%s); keeping the last list read (%s)",
                    layout.EXCLUDED_KEY,
                    problem,
                    ", ".join(sorted(self._last_excluded)) or "none",
                )
            return dict(self._last_excluded)
        self._excluded_problem = None
        self._last_excluded = clients
        return dict(clients)

    def _record(self, round_: int) -> layout.RoundRecord:
        """Round ``round_``'s record, verified with the job's key (``UnverifiedRecord``)."""
        data = self.store.get_bytes(layout.round_record_key(round_))
        return read_round_record(data, round_, self.commit_key.public)

    def _download(self, key: str, name: str) -> tuple[Path, str]:
        """The object in the work folder, and the sha256 of its bytes (``get_file``)."""
        path = self.workdir / name
        return path, self.store.get_file(key, path)

    # -- job record ------------------------------------------------------------------------

    def check_job_record(self) -> None:
        """Write ``job.json`` once; refuse to go on under a spec that trains differently."""
        data = json.dumps(self.job.to_object(), indent=2, sort_keys=True).encode()
        try:
            self.store.put_bytes(layout.JOB_KEY, data, if_absent=True)
            log.info("wrote %s", layout.JOB_KEY)
            return
        except ObjectExists:
            pass
        try:
            started = parse_job(
                json.loads(self.store.get_bytes(layout.JOB_KEY)),
                source=self.store.uri(layout.JOB_KEY),
            )
        except (ValueError, FedcoreError) as e:
            raise RoundProtocolError(
                f"{self.store.uri(layout.JOB_KEY)} does not hold the spec this run was started "
                f"with ({type(e).__name__}: {str(e).splitlines()[0]}); only the aggregator writes "
                "it, so the store was altered: restore it, or start the job under a new name or "
                "storage prefix"
            ) from e
        diff = training_differences(started.spec, self.spec)
        if diff:
            raise RoundProtocolError(
                f"the store at {layout.store_location(self.store)} holds a run started with "
                "another spec; "
                f"these fields differ: {', '.join(diff.fields)}. Restore them, or start the "
                "job under a new name or storage prefix"
            )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> layout.FinalRecord:
        self.check_job_record()
        try:
            final = read_final_record(
                self.store.get_bytes(layout.FINAL_RECORD_KEY), self.commit_key.public
            )
            log.info("job already finished (%s); nothing to do", layout.FINAL_RECORD_KEY)
            return final
        except ObjectNotFound:
            pass
        committed = layout.committed_rounds(self.store.list(layout.ROUNDS_PREFIX))
        # Verified first: a forged record further up is reported as what it is.
        record = self._record(committed[-1]) if committed else None
        if committed != list(range(len(committed))):
            raise RoundProtocolError(
                f"committed rounds in {self.store.uri(layout.ROUNDS_PREFIX)} are not "
                f"contiguous from 0: {committed}; the store was edited by hand"
            )
        if record is not None:
            log.info("resuming after committed round %d", record.round)
        else:
            record = self.commit_initial()
        self.metrics.resumed(record)
        self.tracker.resumed(record)
        # A record announcing no next round before spec.rounds: the privacy budget ended it.
        while record.round < self.spec.rounds and record.next is not None:
            record = self.run_round(record.round + 1, record)
        final = self.write_final(record)
        self.tracker.finished(final, self.store.uri(layout.FINAL_MODEL_KEY))
        return final

    def commit_initial(self) -> layout.RoundRecord:
        started_at = _now()
        ctx = self._ctx(0)
        model = self.task.build_model(ctx)
        tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        bad = non_finite_tensors(tensors)
        if bad:
            raise TaskError(
                f"the task's initial model holds NaN or inf in {', '.join(bad[:5])}; fix "
                "build_model (its initialization) in spec.task.entrypoint"
            )
        path = self.workdir / "global-0.safetensors"
        save_weights(path, tensors, {"kind": "global", "round": 0})
        metrics = self._evaluate(tensors, 0)
        selected = select_clients(self.spec, 1, self._excluded())
        next_round = self._next_round(1, selected)
        record = layout.RoundRecord(
            round=0,
            metrics=metrics,
            model_key=layout.global_key(0),
            model_sha256=sha256_file(path),
            started_at=started_at,
            next=next_round,
            closed_by="initial",
        )
        privacy = self.privacy.account(None, [], next_round, None)
        return self._commit(path, None, self.privacy.finish(record, privacy))

    def _next_round(self, round_: int, selected: list[str]) -> layout.NextRound | None:
        """What the record announces about ``round_`` (None past the last round); the
        deadline is set again from the commit time in ``_commit``."""
        if round_ > self.spec.rounds:
            return None
        return layout.NextRound(
            round=round_, selected=selected, deadline=round_deadline(_now(), self.spec)
        )

    def _commit(
        self, global_path: Path, state_path: Path | None, record: layout.RoundRecord
    ) -> layout.RoundRecord:
        """Write the round's global (and the strategy state file ``state_path``, removed
        here), then its record, exactly once."""
        r = record.round
        record_key = layout.round_record_key(r)
        try:
            if self.store.exists(record_key):
                return self._adopt(record)
            self.store.put_file(layout.global_key(r), global_path)
            if state_path is not None:
                self.store.put_file(layout.strategy_state_key(r), state_path)
                record = record.model_copy(update={"strategy_sha256": sha256_file(state_path)})
        finally:
            if state_path is not None:
                state_path.unlink(missing_ok=True)
        record = record.model_copy(update={"committed_at": _now()})
        if record.next is not None:
            record = record.model_copy(
                update={
                    "next": record.next.model_copy(
                        update={"deadline": round_deadline(record.committed_at, self.spec)}
                    )
                }
            )
        record = self.commit_key.sign("round", record)
        try:
            self.store.put_bytes(record_key, record.to_json(), if_absent=True)
        except ObjectExists:
            return self._adopt(record)
        log.info(
            "commit round %d: %d participants, metrics %s, sha256 %s, closed by %s",
            r,
            len(record.participants),
            _fmt_metrics(record.metrics),
            record.model_sha256[:12],
            record.closed_by,
        )
        return record

    def _adopt(self, ours: layout.RoundRecord) -> layout.RoundRecord:
        try:
            theirs = self._record(ours.round)
        except UnverifiedRecord:
            log.error(
                "cannot commit round %d: its record slot holds a record this job's key %s did "
                "not sign; stopping (see the module docstring of fedcore.aggregator)",
                ours.round,
                self.commit_key.fingerprint,
            )
            raise
        log.warning(
            "round %d was already committed (at %s) by another aggregator; not writing it "
            "again and going on from that record",
            ours.round,
            theirs.committed_at.isoformat(),
        )
        if theirs.model_sha256 != ours.model_sha256:
            raise RoundProtocolError(
                f"round {ours.round} was committed by another aggregator with model sha256 "
                f"{theirs.model_sha256[:12]}..., but this one computed "
                f"{ours.model_sha256[:12]}...; two aggregators ran at once on different data"
            )
        return theirs

    def _load_state(self, strategy: Strategy, round_: int, sha256: str) -> None:
        """Load round ``round_``'s state into ``strategy``; ``sha256``: what the round's
        record names (empty: a record of a version that did not name it)."""
        key = layout.strategy_state_key(round_)
        if not self.store.exists(key):
            strategy.load_state_dict({})
            return
        path, got = self._download(key, f"state-{round_}.safetensors")
        try:
            if sha256 and got != sha256:
                raise ValueError(f"its sha256 is not the {sha256[:12]}... its round record names")
            # With the disk accumulator a server optimizer keeps the file open and reads it
            # a slice at a time: unlinking it below leaves the open file readable.
            strategy.load_state_file(path)
        except (FedcoreError, ValueError) as e:
            raise RoundProtocolError(
                f"{self.store.uri(key)} is not a usable {strategy.name} state: {e}. Only the "
                "aggregator writes it, so the store was altered: restore it, or delete it to "
                "restart the server optimizer's state from zero"
            ) from e
        finally:
            path.unlink(missing_ok=True)

    def _fresh_strategy(
        self, r: int, template: Template, selected: list[str], state_sha256: str
    ) -> Strategy:
        """The job's strategy with the state round ``r - 1`` committed (``state_sha256``),
        ready for round ``r`` (whose selected clients are ``selected``)."""
        strategy = build_strategy(self.spec.strategy)
        self.privacy.begin(strategy, selected)
        if isinstance(strategy, SpooledStrategy):
            clear_spools(self.workdir)  # a crashed run's, or the strategy this one replaces
            strategy.spool_dir = self.workdir  # the round's updates are kept on local disk
        if strategy.disk_accumulator:
            strategy.accumulator = self.spec.aggregator.accumulator
            strategy.accumulator_dir = self.workdir  # the pod's scratch emptyDir
        if isinstance(strategy, Scaffold):
            strategy.num_clients = len(self.spec.clients)  # N of c += |S|/N mean(dc)
        self._load_state(strategy, r - 1, state_sha256)
        try:
            strategy.begin_round(template)
        except ValueError as e:
            raise RoundProtocolError(
                f"{self.store.uri(layout.strategy_state_key(r - 1))} does not fit the model: "
                f"{e}. Delete it to restart the server optimizer's state from zero"
            ) from e
        return strategy

    def run_round(self, r: int, previous: layout.RoundRecord) -> layout.RoundRecord:
        """Aggregate round ``r`` from ``previous``'s global model and commit it."""
        nxt = previous.next
        if nxt is None or nxt.round != r:
            raise RoundProtocolError(
                f"round {previous.round}'s record announces no round {r} (next={nxt}), but "
                f"spec.rounds is {self.spec.rounds}"
            )
        base_path, got = self._download(layout.global_key(r - 1), f"global-{r - 1}.safetensors")
        if got != previous.model_sha256:
            raise RoundProtocolError(
                f"{self.store.uri(layout.global_key(r - 1))} does not match the sha256 its "
                f"round record {previous.round} committed; the store was altered"
            )
        with open_weights(base_path) as base:
            template = base.template()
        inputs = RoundInputs(
            spec=self.spec,
            store=self.store,
            keys=self.keys,
            workdir=self.workdir,
            fresh_strategy=lambda: self._fresh_strategy(
                r, template, nxt.selected, previous.strategy_sha256
            ),
        )
        strategy = inputs.fresh_strategy()
        open_round = OpenRound(r, previous, nxt, template, base_path, inputs, strategy)
        log.info(
            "round %d open: selected %s, deadline %s", r, nxt.selected, nxt.deadline.isoformat()
        )
        path = self.workdir / f"global-{r}.safetensors"
        state_path = self.workdir / f"state-{r}.safetensors"
        while True:
            decision = self._collect(open_round)
            open_round.apply_weight_cap()
            self.privacy.seal(open_round.strategy, r, open_round.folded)
            # Written straight to a file: with the disk accumulator the new model is never
            # whole in memory (fedcore.strategies.disk_accumulator).
            with open_weights(base_path) as base:
                bad = open_round.strategy.finalize_to_file(
                    base, path, {"kind": "global", "round": r}
                )
            state_path.unlink(missing_ok=True)
            state_bad = open_round.strategy.save_state(state_path, {"kind": "state", "round": r})
            bad += state_bad or []
            if not bad:
                break
            open_round.guard(bad)
        metrics = self._evaluate_file(path, r)
        base_path.unlink()
        folded = open_round.folded
        participants = [c for c in nxt.selected if c in folded]
        next_round = self._next_round(r + 1, select_clients(self.spec, r + 1, self._excluded()))
        record = layout.RoundRecord(
            round=r,
            participants=participants,
            num_samples={c: folded[c].num_samples for c in participants},
            metrics=metrics,
            client_metrics={c: dict(folded[c].metrics) for c in participants},
            rejected=list(open_round.rejected.values()),
            late=list(open_round.late.values()),
            model_key=layout.global_key(r),
            model_sha256=sha256_file(path),
            started_at=previous.committed_at,
            next=next_round,
            closed_by="deadline" if decision is Decision.DEADLINE else "all-reported",
        )
        privacy = self.privacy.account(previous, nxt.selected, next_round, open_round.strategy)
        record = self.privacy.finish(record, privacy)
        with self.metrics.committing():
            committed = self._commit(path, state_path if state_bad is not None else None, record)
        self.metrics.committed(committed, folded)
        self.tracker.committed(committed)
        path.rename(self.workdir / "last-global.safetensors")
        return committed

    def _collect(self, open_round: OpenRound) -> Decision:
        """Fold updates as they arrive until the round may close; how it closed."""
        r = open_round.round
        while True:
            excluded = self._excluded()
            listed = self.store.list(layout.updates_prefix(r))
            for key in sorted(k for k in listed if k.endswith(".json")):
                if key in open_round.seen:
                    continue
                open_round.seen.add(key)
                client = _client_of(key)
                if key != layout.manifest_key(r, client) or not recordable(client):
                    log.warning("round %d: ignoring %r, not a manifest key", r, key)
                    continue
                with self.metrics.folding():
                    open_round.take(client)
                    open_round.settle()
            if r > 1:
                self._note_late(open_round)
            state = open_round.state(self.spec.min_clients, excluded)
            decision = decide(state, _now())
            if decision is Decision.UNREACHABLE:
                reasons = {c: f"{x.reason}: {x.detail}" for c, x in open_round.rejected.items()}
                reasons.update({c: f"excluded: {why}" for c, why in excluded.items()})
                raise QuorumUnreachable(explain_unreachable(r, state, reasons))
            if decision is not Decision.WAIT:
                return decision
            if self._stopping.wait(self.poll_seconds):
                raise AggregatorStopped(f"stopped while round {r} was open")

    def _note_late(self, open_round: OpenRound) -> None:
        """Record manifests for the previous (closed) round that its record does not name."""
        closed = open_round.previous
        answered = set(closed.participants) | {x.client for x in closed.rejected}
        clients = {c.name for c in self.spec.clients}
        for key in self.store.list(layout.updates_prefix(closed.round)):
            client = _client_of(key)
            if (
                key != layout.manifest_key(closed.round, client)
                or client not in clients
                or client in answered
                or client in open_round.late
            ):
                continue
            open_round.late[client] = layout.LateUpdate(client=client, round=closed.round)
            log.warning("late update for closed round %d from %s: ignored", closed.round, client)

    def write_final(self, last: layout.RoundRecord) -> layout.FinalRecord:
        path = self.workdir / "last-global.safetensors"
        if not path.exists() or sha256_file(path) != last.model_sha256:
            self.store.get_file(layout.global_key(last.round), path)
        self.store.put_file(layout.FINAL_MODEL_KEY, path)
        final = self.commit_key.sign(
            "final",
            layout.FinalRecord(
                rounds=last.round,
                model_sha256=last.model_sha256,
                metrics=last.metrics,
                privacy=last.privacy,
            ),
        )
        try:
            self.store.put_bytes(layout.FINAL_RECORD_KEY, final.to_json(), if_absent=True)
        except ObjectExists:
            theirs = read_final_record(
                self.store.get_bytes(layout.FINAL_RECORD_KEY), self.commit_key.public
            )
            log.warning(
                "the final record was already written (at %s); keeping it",
                theirs.committed_at.isoformat(),
            )
            return theirs
        log.info(
            "final model %s (sha256 %s), metrics %s",
            self.store.uri(layout.FINAL_MODEL_KEY),
            final.model_sha256[:12],
            _fmt_metrics(final.metrics),
        )
        return final


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_aggregator(job_path: Path) -> layout.FinalRecord:
    """``fedkube aggregator --job FILE``: run (or resume) the job's rounds to the end."""
    configure_logging()
    job = load_job(job_path)
    store = open_job_store(job, role=Role.aggregator())
    keys = keys_from_env()
    commit_key = signer_from_env()
    missing = [c.name for c in job.spec.clients if c.name not in keys]
    if missing:
        raise FedcoreError(
            f"no signing key for client(s) {', '.join(missing)} in $FEDKUBE_SIGNING_KEYS_DIR; "
            "their updates could never be verified"
        )
    metrics = AggregatorMetrics()
    port = metrics_port()
    linger = linger_seconds() if port is not None else 0.0
    if port is not None:
        serve(metrics, port)
    tracker = tracker_for(job, layout.store_location(store))
    try:
        with tempfile.TemporaryDirectory(prefix="fedkube-aggregator-") as tmp:
            aggregator = Aggregator(
                job, store, keys, Path(tmp), commit_key=commit_key, metrics=metrics,
                tracker=tracker,
            )  # fmt: skip
            final = aggregator.run()
    finally:
        tracker.close()
    if linger:
        log.info("job done; serving the final metrics for %.0f s more (%s)", linger, LINGER_ENV)
        time.sleep(linger)
    return final
