"""The operator's decisions, as one pure function: what was observed in, what to do out.

``plan`` takes a FederatedJob's spec and status, its children as listed and its store as read,
and returns the new status, the API actions that move the world towards the spec, and the
Events to announce. It does no I/O, so every policy (group restarts, drops, suspend, deadline,
clean-up, TTL) is tested with hand-written observations; ``apply`` executes the plan.

The pass is level-based: it never relies on having seen an earlier event, only on what is
there now plus the status (the operator's memory, written before any action is taken). Two
passes over the same observations decide the same thing, which is what makes an operator
restart harmless. Announcements are made once: a round is announced when it is folded into
the status, a restart when the status' restart count grows, a phase when it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from fedcore import spec as fs
from fedcore.exitcodes import EXIT_CONFIG
from fedop import catalogue, events, refused, rotation, sites, status
from fedop.builders import configmap, credentials, jobs, names, network, services
from fedop.events import Announcement
from fedop.observed import ChildJob, Children, StoreSnapshot
from fedop.settings import OperatorSettings

INVALID_SPEC: Final = "InvalidSpec"
STORE_WITHOUT_STS: Final = "StoreWithoutSTS"
REFUSED_FOR_SPEC: frozenset[catalogue.Reason] = frozenset({INVALID_SPEC, STORE_WITHOUT_STS})
"""Failure reasons a spec change can cure: the job starts again when the spec changes."""
SHARED_CREDENTIALS: Final = "SharedCredentials"
HISTORY_PARTICIPANTS = 16
"""History entries name their participants only up to this many: 50 rounds x 256 names would
make the status half a megabyte, rewritten at every commit. ``lastRound`` always names them."""

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ClientPhase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Dropped"]


# ---- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """Create the object, or adopt it if this job already owns one of that name."""

    obj: dict[str, Any]


@dataclass(frozen=True)
class CreateKeySecret:
    """Create a client's signing-key Secret with a fresh key (made by the executor: keys are
    random, and a plan must be the same for the same observations)."""

    client: str


@dataclass(frozen=True)
class CreateCommitKey:
    """Create the job's ``<job>-commit-key`` Secret with a fresh Ed25519 pair (made by the
    executor, like ``CreateKeySecret``). Never rewritten: records signed with the old key
    would stop verifying."""


@dataclass(frozen=True)
class Replace:
    """Overwrite an existing object's content (the job file, after a spec change)."""

    obj: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    name: str
    propagation: Literal["Foreground", "Background"]
    """Foreground: the Job stays (terminating) until its pods are gone, so a group restart
    never overlaps the old group."""


@dataclass(frozen=True)
class SetSuspend:
    name: str
    suspend: bool


@dataclass(frozen=True)
class WriteExcluded:
    """Write ``control/excluded.json``: the aggregator stops waiting for these clients."""

    clients: Mapping[str, str]


@dataclass(frozen=True)
class DeleteFederatedJob:
    """Delete the FederatedJob itself (its TTL after finishing ran out)."""


Action = (
    Create
    | CreateKeySecret
    | rotation.MintStoreCredentials
    | sites.WriteJoinBundle
    | CreateCommitKey
    | Replace
    | DeleteJob
    | SetSuspend
    | WriteExcluded
    | (DeleteFederatedJob)
)


@dataclass(frozen=True)
class Plan:
    status: fs.FederatedJobStatus
    actions: tuple[Action, ...] = ()
    """In order: store control file, then API writes; ``apply`` runs them in that order."""
    announcements: tuple[Announcement, ...] = ()


@dataclass(frozen=True)
class Observation:
    """Everything one pass knows about one FederatedJob."""

    job: names.JobRef
    generation: int | None
    spec: fs.FederatedJobSpec
    status: fs.FederatedJobStatus
    children: Children
    store: StoreSnapshot
    now: datetime
    settings: OperatorSettings = field(default_factory=OperatorSettings)


# ---- the pass ---------------------------------------------------------------------------------


@dataclass
class _Draft:
    """The status being built, mutable for the pass (the models are frozen)."""

    phase: Phase
    clients: dict[str, fs.ClientStatus]
    conditions: list[fs.Condition]
    current_round: int
    last_round: fs.RoundSummary | None
    history: list[fs.RoundSummary]
    model: fs.ModelRef | None
    start_time: datetime | None
    completion_time: datetime | None
    message: str = ""
    actions: list[Action] = field(default_factory=list)
    announcements: list[Announcement] = field(default_factory=list)

    @classmethod
    def of(cls, s: fs.FederatedJobStatus) -> _Draft:
        return cls(
            phase=s.phase,
            clients=dict(s.clients),
            conditions=list(s.conditions),
            current_round=s.current_round,
            last_round=s.last_round,
            history=list(s.history),
            model=s.model,
            start_time=s.start_time,
            completion_time=s.completion_time,
            message=s.message,
        )

    def client(self, name: str) -> fs.ClientStatus:
        return self.clients.get(name) or fs.ClientStatus()

    def set_client(self, name: str, **changes: Any) -> None:
        self.clients[name] = self.client(name).model_copy(update=changes)

    def condition(
        self,
        obs: Observation,
        kind: status.ConditionType,
        value: Literal["True", "False"],
        reason: catalogue.Reason,
        message: str = "",
    ) -> None:
        self.conditions = status.set_condition(
            self.conditions,
            kind,
            value,
            reason,
            message,
            now=obs.now,
            generation=obs.generation,
        )

    def build(self, obs: Observation) -> fs.FederatedJobStatus:
        active = sum(
            1 for c in obs.spec.clients if self.client(c.name).phase not in ("Dropped", "Failed")
        )
        return fs.FederatedJobStatus(
            phase=self.phase,
            observed_generation=obs.generation,
            current_round=self.current_round,
            total_rounds=obs.spec.rounds,
            conditions=self.conditions,
            clients={c.name: self.client(c.name) for c in obs.spec.clients},
            last_round=self.last_round,
            history=self.history[-fs.MAX_HISTORY :],
            model=self.model,
            start_time=self.start_time,
            completion_time=self.completion_time,
            message=status.truncate(self.message),
            progress=f"{self.current_round}/{obs.spec.rounds}",
            active_clients=active,
        )


def plan(obs: Observation) -> Plan:
    """Decide one pass for one FederatedJob (see the module docstring)."""
    draft = _Draft.of(obs.status)
    if _spec_fixed(obs):
        # Refused for its spec, and the spec has changed since: try again from the start.
        draft.phase = "Pending"
        draft.conditions = [c for c in draft.conditions if c.type != "Failed"]
        draft.completion_time = None
        draft.message = ""
    if draft.phase in status.TERMINAL_PHASES:
        _finish(obs, draft)
    else:
        _fold_rounds(obs, draft)
        _report_refused(obs, draft)
        _run(obs, draft)
    return Plan(
        status=draft.build(obs),
        actions=tuple(draft.actions),
        announcements=tuple(draft.announcements),
    )


def refuse(
    old: fs.FederatedJobStatus,
    generation: int | None,
    message: str,
    now: datetime,
    reason: Literal["InvalidSpec", "StoreWithoutSTS"] = INVALID_SPEC,
) -> Plan:
    """The plan for a FederatedJob whose spec cannot be run: Failed with ``reason`` (one of
    ``REFUSED_FOR_SPEC``; announced once per distinct message). ``message`` says what is
    wrong; the catalogue adds what to do. Changing the spec lets the job start again."""
    text = catalogue.message(reason, message)
    failed = status.condition(old, "Failed")
    announce = failed is None or failed.reason != reason or failed.message != text
    conditions = status.set_condition(
        old.conditions, "Failed", "True", reason, text, now=now, generation=generation
    )
    conditions = status.set_condition(
        conditions, "Running", "False", "Failed", text, now=now, generation=generation
    )
    new = old.model_copy(
        update={
            "phase": "Failed",
            "observed_generation": generation,
            "conditions": conditions,
            "message": text,
            "completion_time": old.completion_time or status.second(now),
        }
    )
    notes = (events.announce(reason, message),) if announce else ()
    return Plan(status=new, announcements=notes)


def _spec_fixed(obs: Observation) -> bool:
    failed = status.condition(obs.status, "Failed")
    return (
        obs.status.phase == "Failed"
        and failed is not None
        and failed.reason in REFUSED_FOR_SPEC
        and obs.status.observed_generation != obs.generation
    )


def _run(obs: Observation, draft: _Draft) -> None:
    old_phase = draft.phase
    spec = obs.spec
    suspend = spec.run_policy.suspend
    if obs.children.foreign:
        # A deleted namesake's children are still being garbage-collected: wait for them.
        draft.message = catalogue.message(
            "Pending",
            "waiting for objects of a previous FederatedJob of the same name to be deleted: "
            + ", ".join(obs.children.foreign[:5]),
            cause="foreign",
        )
        return
    draft.message = (
        ""
        if obs.store.available
        else catalogue.message(
            "Pending", f"object store unavailable: {obs.store.problem}", cause="store"
        )
    )

    creating = _ensure_shared_objects(obs, draft)
    _credentials_condition(obs, draft)
    if _commit_public_key(obs) is None:
        # Every pod mounts the public key with the job file: the ConfigMap and the Jobs are
        # made once the key Secret is listed with it (the next pass).
        draft.message = catalogue.message(
            "Pending",
            f"waiting for Secret {names.commit_key_secret(obs.job)} (the job's commit signing "
            f"key) to be listed with its {names.ANNOTATION_COMMIT_PUBLIC_KEY} annotation",
            cause="commit-key",
        )
        _set_phase_conditions(obs, draft, old_phase, True)
        return
    _sync_clients(obs, draft, suspend)
    aggregator = _sync_aggregator(obs, draft, suspend)
    creating = creating or any(isinstance(a, Create) for a in draft.actions)
    _sync_excluded(obs, draft)

    if suspend:
        draft.start_time = None  # Kueue semantics: the deadline clock restarts on resume
    elif draft.start_time is None:
        draft.start_time = status.second(obs.now)

    failure = _failure(obs, draft, aggregator)
    if failure is not None:
        where = names.aggregator_job(obs.job)
        draft.phase = "Failed"
        draft.message = catalogue.message(
            failure.reason, failure.what, cause=failure.cause, aggregator=where
        )
        draft.condition(obs, "Failed", "True", failure.reason, draft.message)
        draft.announcements.append(
            events.announce(failure.reason, failure.what, cause=failure.cause, aggregator=where)
        )
    elif aggregator is not None and aggregator.complete and obs.store.final is not None:
        draft.phase = "Succeeded"
        final = obs.store.final
        if obs.store.final_model_uri:
            draft.model = fs.ModelRef(uri=obs.store.final_model_uri, sha256=final.model_sha256)
        shown = events.metrics_text(final.metrics or _last_metrics(draft))
        message = f"finished {final.rounds} rounds" + (f": {shown}" if shown else "")
        reason: catalogue.Reason = "RoundsCompleted"
        if final.privacy is not None:
            message += f"; epsilon {final.privacy.epsilon:.4g} at delta {final.privacy.delta:g}"
            if final.privacy.budget_reached:
                reason = "PrivacyBudgetReached"
                message += f"; {final.privacy.stop_message(final.rounds, spec.rounds)}"
        if draft.model is not None:
            message += f"; model {draft.model.uri}"
        draft.message = catalogue.message(reason, message)
        draft.condition(obs, "Succeeded", "True", reason, draft.message)
        draft.announcements.append(events.announce("Succeeded", message))
    elif suspend:
        draft.phase = "Suspended"
    elif draft.current_round >= 1 or old_phase == "Running" or _anything_running(obs):
        # Once running, a job stays Running between a group's restarts.
        draft.phase = "Running"
    else:
        draft.phase = "Pending"

    if draft.phase in status.TERMINAL_PHASES:
        draft.completion_time = status.second(obs.now)
        # Nothing more to start or restart; only the drop record still matters.
        draft.actions = [a for a in draft.actions if isinstance(a, WriteExcluded)]
        _clean_pods(obs, draft)
        _settle_clients(obs, draft)
    _set_phase_conditions(obs, draft, old_phase, creating)


def _finish(obs: Observation, draft: _Draft) -> None:
    """A finished job: keep its pods cleaned up and honour its TTL; nothing else changes."""
    _clean_pods(obs, draft)
    ttl = obs.spec.run_policy.ttl_seconds_after_finished
    done = draft.completion_time
    if ttl is not None and done is not None and obs.now >= done + timedelta(seconds=ttl):
        draft.actions.append(DeleteFederatedJob())


# ---- store: committed rounds ------------------------------------------------------------------


def _shown(value: float) -> float:
    """A metric as status shows it: 4 significant digits, so `kubectl get fj` prints 0.9472
    rather than 0.9472222222222222 (round.json in the store keeps the full value)."""
    return float(f"{value:.4g}")


def _fold_rounds(obs: Observation, draft: _Draft) -> None:
    expected = 0 if draft.last_round is None else draft.current_round + 1
    for record in obs.store.rounds:
        if record.round < expected:
            continue  # folded in by an earlier pass
        if record.round > expected:
            break  # a gap: read the rest next pass
        summary = fs.RoundSummary(
            round=record.round,
            participants=sorted(record.participants),
            metrics={k: _shown(v) for k, v in record.metrics.items()},
            duration_seconds=round(record.duration_seconds, 3),
            rejected=len(record.rejected),
            epsilon=None if record.privacy is None else _shown(record.privacy.epsilon),
        )
        kept = summary
        if len(summary.participants) > HISTORY_PARTICIPANTS:
            kept = summary.model_copy(update={"participants": []})
        draft.history = [*draft.history, kept][-fs.MAX_HISTORY :]
        draft.last_round = summary
        draft.current_round = record.round
        for name in record.participants:
            if name in draft.clients or _is_client(obs, name):
                draft.set_client(
                    name, last_round=record.round, num_samples=record.num_samples.get(name)
                )
                if _is_site(obs, name):
                    draft.set_client(name, last_seen=status.second(obs.now))
        if record.round >= 1:
            draft.announcements.append(events.round_committed(record, obs.spec.rounds))
        budget = events.privacy_budget_reached(record, obs.spec.rounds)
        if budget is not None:
            draft.announcements.append(budget)
        draft.announcements.extend(
            events.round_problems(obs.job, record, credentials.mode(obs.spec))
        )
        expected += 1


def _report_refused(obs: Observation, draft: _Draft) -> None:
    """Commit records that fail verification: a False condition and a Warning Event."""
    current = status.condition(
        fs.FederatedJobStatus(conditions=draft.conditions), refused.CONDITION
    )
    what = refused.news(obs.store.refused, current)
    if what is not None:
        draft.condition(obs, refused.CONDITION, "False", refused.REASON, refused.message(what))
        draft.announcements.append(events.announce(refused.REASON, what))


def _is_client(obs: Observation, name: str) -> bool:
    return any(c.name == name for c in obs.spec.clients)


def _is_site(obs: Observation, name: str) -> bool:
    return any(c.name == name and c.is_site for c in obs.spec.clients)


def _last_metrics(draft: _Draft) -> Mapping[str, float]:
    return draft.last_round.metrics if draft.last_round is not None else {}


# ---- children ---------------------------------------------------------------------------------


def _commit_public_key(obs: Observation) -> str | None:
    """The job's commit public key (PEM), as its key Secret announces it; None before the
    Secret exists."""
    return obs.children.commit_public_keys.get(names.commit_key_secret(obs.job))


def _ensure_shared_objects(obs: Observation, draft: _Draft) -> bool:
    """The commit key, the job file, the key and store-credential Secrets, the Services and
    the NetworkPolicies; True when something had to be made."""
    job, spec, kids = obs.job, obs.spec, obs.children
    dropped = [c.name for c in spec.clients if draft.client(c.name).phase == "Dropped"]
    mints = rotation.mint_actions(
        job, spec, kids.secret_annotations, obs.now, obs.settings, skip_clients=dropped
    )
    draft.actions.extend(mints)
    created = any(not m.replace for m in mints)
    if names.commit_key_secret(job) not in kids.secrets:
        draft.actions.append(CreateCommitKey())
        created = True
    public_key = _commit_public_key(obs)
    if public_key is not None:
        wanted_cm = configmap.spec_configmap(job, spec, public_key)
        current = kids.configmaps.get(names.spec_configmap(job))
        if current is None:
            draft.actions.append(Create(wanted_cm))
            created = True
        elif dict(current) != wanted_cm["data"]:
            draft.actions.append(Replace(wanted_cm))
    for policy in network.network_policies(job, spec, obs.settings.metrics_scrape_namespace):
        if policy["metadata"]["name"] not in kids.network_policies:
            draft.actions.append(Create(policy))
            created = True
    draft.actions.extend(
        sites.join_actions(
            job, spec, kids, commit_key_known=public_key is not None, skip_clients=dropped
        )
    )
    for client in spec.clients:
        if names.key_secret(job, client.name) not in kids.secrets:
            draft.actions.append(CreateKeySecret(client.name))
            created = True
        if client.is_site:
            continue  # the site runs its own group: no Service for a rendezvous here
        if names.client_service(job, client.name) not in kids.services:
            draft.actions.append(
                Create(services.client_service(job, client.name, obs.settings.master_port))
            )
            created = True
    return created


def _credentials_condition(obs: Observation, draft: _Draft) -> None:
    """``shared`` runs without isolation between participants: say so once (a Warning Event)
    and keep saying it (a condition), naming the fix."""
    before = status.condition(obs.status, SHARED_CREDENTIALS)
    if credentials.mode(obs.spec) == "shared":
        what = (
            "spec.storage.credentials is shared: every pod holds the job's own store "
            "credential, so any participant can read the others' updates, overwrite their "
            "slots and write global models"
        )
        draft.condition(
            obs,
            SHARED_CREDENTIALS,
            "True",
            SHARED_CREDENTIALS,
            catalogue.message(SHARED_CREDENTIALS, what),
        )
        if before is None or before.status != "True":
            draft.announcements.append(events.announce(SHARED_CREDENTIALS, what))
    elif before is not None and before.status == "True":
        draft.condition(
            obs,
            SHARED_CREDENTIALS,
            "False",
            "ScopedCredentials",
            "spec.storage.credentials is scoped: each role has its own minted store credential",
        )


def _sync_clients(obs: Observation, draft: _Draft, suspend: bool) -> None:
    budget = obs.spec.run_policy.backoff_limit
    for index, client in enumerate(obs.spec.clients):
        name = client.name
        current = draft.client(name)
        child = obs.children.jobs.get(names.client_job(obs.job, name))
        if current.phase == "Dropped":
            continue
        if client.is_site:
            _judge_site(obs, draft, index, client, suspend)
            continue
        if child is None:
            draft.actions.append(
                Create(
                    jobs.client_job(
                        obs.job,
                        obs.spec,
                        client,
                        obs.settings,
                        restarts=current.restarts,
                        suspend=suspend,
                    )
                )
            )
            draft.set_client(
                name, phase="Restarting" if current.restarts else "Pending", message=""
            )
        elif child.terminating:
            draft.set_client(name, phase="Restarting")
        elif child.failed and (suspend or child.suspended):
            # Suspending stops the group's pods; that is not the group's fault. The Job may
            # be marked failed only after the job was resumed (a busy controller-manager), so
            # a Job that is itself still suspended failed because of the suspension too.
            draft.actions.append(DeleteJob(child.name, "Foreground"))
            draft.set_client(name, phase="Pending", message="suspended" if suspend else "")
        elif child.failed:
            _restart_or_drop(obs, draft, name, child, budget)
        elif child.complete:
            draft.set_client(name, phase="Succeeded", message="")
        else:
            if child.suspended != suspend:
                draft.actions.append(SetSuspend(child.name, suspend))
            running = child.running and not suspend
            draft.set_client(
                name,
                phase="Running" if running else "Pending",
                message="suspended" if suspend else "",
            )


def _judge_site(
    obs: Observation, draft: _Draft, index: int, client: fs.ClientSpec, suspend: bool
) -> None:
    started = None if suspend else draft.start_time
    verdict = sites.judge(
        obs.job, index, client, draft.client(client.name), started=started, now=obs.now
    )
    if verdict.phase != "Dropped":
        draft.set_client(client.name, phase=verdict.phase, message=status.truncate(verdict.message))
        return
    message = catalogue.message("ClientDropped", verdict.message, cause="site")
    draft.set_client(client.name, phase="Dropped", message=message)
    draft.announcements.append(
        events.announce("ClientDropped", f"client {client.name} {verdict.message}", cause="site")
    )


def _restart_or_drop(
    obs: Observation, draft: _Draft, name: str, child: ChildJob, budget: int
) -> None:
    current = draft.client(name)
    attempt = child.restarts + 1
    why = child.failure or "a pod of the group failed"
    dropped: tuple[str, str] | None = None
    if child.config_error:
        dropped = (
            "config",
            f"dropped: its group stopped on a configuration error (exit code {EXIT_CONFIG}), "
            f"so it was not restarted; {why}",
        )
    elif attempt > budget:
        dropped = (
            "budget",
            f"dropped: its group failed {attempt} times (restart budget "
            f"spec.runPolicy.backoffLimit={budget}); last failure: {why}",
        )
    if dropped is not None:
        cause, what = dropped
        message = catalogue.message("ClientDropped", what, cause=cause, child=child.name)
        draft.set_client(name, phase="Dropped", message=message)
        draft.announcements.append(
            events.announce("ClientDropped", f"client {name} {what}", cause=cause, child=child.name)
        )
        return
    draft.actions.append(DeleteJob(child.name, "Foreground"))
    if current.restarts < attempt:
        draft.announcements.append(
            events.announce(
                "ClientRestarted",
                f"client {name}: its group failed ({why}); restarting the whole group "
                f"(restart {attempt}/{budget})",
                once=f"client-{name}-restart-{attempt}",
                child=child.name,
                left=budget - attempt + 1,
            )
        )
    draft.set_client(
        name,
        phase="Restarting",
        restarts=max(current.restarts, attempt),
        message=status.truncate(f"restarting after: {why}"),
    )


def _sync_aggregator(obs: Observation, draft: _Draft, suspend: bool) -> ChildJob | None:
    child = obs.children.jobs.get(names.aggregator_job(obs.job))
    if child is None:
        draft.actions.append(
            Create(jobs.aggregator_job(obs.job, obs.spec, obs.settings, suspend=suspend))
        )
    elif not child.finished and not child.terminating and child.suspended != suspend:
        draft.actions.append(SetSuspend(child.name, suspend))
    return child


def _sync_excluded(obs: Observation, draft: _Draft) -> None:
    dropped = {
        c.name: draft.client(c.name).message
        for c in obs.spec.clients
        if draft.client(c.name).phase == "Dropped"
    }
    stored = obs.store.excluded
    if not dropped or stored is None or not obs.store.available:
        return
    if dropped.keys() - stored.keys():
        draft.actions.insert(0, WriteExcluded({**stored, **dropped}))


def _anything_running(obs: Observation) -> bool:
    return any(child.running for child in obs.children.jobs.values())


# ---- outcome ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    reason: catalogue.Reason
    what: str
    """What happened; the catalogue adds what to do."""
    cause: str | None = None


def _failure(obs: Observation, draft: _Draft, aggregator: ChildJob | None) -> _Failure | None:
    """Why the job has failed, or None."""
    spec = obs.spec
    if aggregator is not None and aggregator.config_error:
        return _Failure(
            "ConfigurationError",
            f"the aggregator stopped on a configuration error (exit code {EXIT_CONFIG}), so it "
            f"was not retried: {aggregator.failure or 'its pod failed'}",
        )
    if aggregator is not None and aggregator.failed:
        why = aggregator.failure or "its pod failed"
        return _Failure(
            "AggregatorFailed",
            f"the aggregator failed past its retry budget (spec.runPolicy.backoffLimit="
            f"{spec.run_policy.backoff_limit}): {why}",
        )
    if (
        aggregator is not None
        and aggregator.complete
        and obs.store.available
        and obs.store.final is None
    ):
        return _Failure(
            "AggregatorFailed",
            "the aggregator exited successfully but wrote no final/round.json",
            cause="no-final",
        )
    remaining = [c.name for c in spec.clients if draft.client(c.name).phase != "Dropped"]
    if len(remaining) < spec.min_clients:
        dropped = sorted(c.name for c in spec.clients if c.name not in remaining)
        return _Failure(
            "TooFewClients",
            f"{'clients' if len(dropped) > 1 else 'client'} {', '.join(dropped)} "
            f"{'were' if len(dropped) > 1 else 'was'} dropped; {len(remaining)} "
            f"{'remain' if len(remaining) != 1 else 'remains'} but the job needs at least "
            f"{spec.min_clients} (spec.strategy.minClients)",
        )
    deadline = spec.run_policy.active_deadline_seconds
    if (
        deadline is not None
        and draft.start_time is not None
        and not spec.run_policy.suspend
        and obs.now >= draft.start_time + timedelta(seconds=deadline)
    ):
        return _Failure(
            "DeadlineExceeded",
            f"the job ran longer than spec.runPolicy.activeDeadlineSeconds={deadline} "
            f"(round {draft.current_round}/{spec.rounds} committed)",
        )
    return None


def _clean_pods(obs: Observation, draft: _Draft) -> None:
    """cleanPodPolicy after the job ended: Running stops the pods still running (suspending
    their Jobs frees the GPUs and keeps the logs of finished pods), All deletes every child
    Job with its pods, None leaves them."""
    policy = obs.spec.run_policy.clean_pod_policy
    if policy == "None":
        return
    for child in sorted(obs.children.jobs.values(), key=lambda j: j.name):
        if child.terminating:
            continue
        if policy == "All":
            draft.actions.append(DeleteJob(child.name, "Background"))
        elif not child.finished and not child.suspended:
            draft.actions.append(SetSuspend(child.name, True))


def _settle_clients(obs: Observation, draft: _Draft) -> None:
    """Client phases once the job has ended: its pods are done or being stopped."""
    for client in obs.spec.clients:
        current = draft.client(client.name)
        if current.phase in ("Dropped", "Succeeded", "Failed"):
            continue
        if draft.phase == "Succeeded":
            draft.set_client(client.name, phase="Succeeded", message="")
        else:
            draft.set_client(
                client.name,
                phase="Failed",
                message="stopped: the job failed (its Failed condition says why)",
            )


def _set_phase_conditions(obs: Observation, draft: _Draft, old: Phase, creating: bool) -> None:
    created = status.condition(fs.FederatedJobStatus(conditions=draft.conditions), "Created")
    total = obs.spec.rounds
    if not creating and (created is None or created.status != "True"):
        n = sum(1 for c in obs.spec.clients if not c.is_site)  # sites run their own
        groups = f"{n} client group{'s' if n != 1 else ''}"
        draft.condition(
            obs, "Created", "True", "ChildrenCreated", f"created the aggregator and {groups}"
        )
        draft.announcements.append(events.announce("Created", _created(obs, n)))
    elif creating and created is None:
        draft.condition(
            obs,
            "Created",
            "False",
            "CreatingChildren",
            catalogue.message(
                "CreatingChildren",
                "creating the job's Secrets, ConfigMap, Services, NetworkPolicies and Jobs",
            ),
        )

    phase = draft.phase
    draft.condition(
        obs,
        "Running",
        "True" if phase == "Running" else "False",
        phase,
        _phase_message(obs, draft),
    )
    if phase == "Suspended":
        draft.condition(
            obs,
            "Suspended",
            "True",
            "Suspended",
            catalogue.message("Suspended", "spec.runPolicy.suspend is true: no pods run"),
        )
    elif status.condition(fs.FederatedJobStatus(conditions=draft.conditions), "Suspended"):
        draft.condition(
            obs,
            "Suspended",
            "False",
            "Resumed",
            "spec.runPolicy.suspend is false: the job's pods may run",
        )

    if phase == old:
        return
    at = f"round {draft.current_round}/{total}"
    if phase == "Running" and old == "Suspended":
        draft.announcements.append(
            events.announce(
                "Resumed", f"resumed: training goes on from {at}, the newest committed round"
            )
        )
    elif phase == "Running":
        draft.announcements.append(events.announce("Running", f"training: {at} committed so far"))
    elif phase == "Suspended":
        draft.announcements.append(
            events.announce(
                "Suspended",
                f"suspended at {at}: pods stopped; training resumes from the newest committed "
                "round",
            )
        )
    elif phase == "Pending" and old == "Suspended":
        draft.announcements.append(
            events.announce("Resumed", f"resumed at {at}; waiting for the pods to start")
        )


def _created(obs: Observation, groups: int) -> str:
    """The ``Created`` Event: what was made, and how the sites (which run no pods here) join."""
    text = (
        f"created the aggregator Job and {groups} client Job{'s' if groups != 1 else ''} "
        "with their Services and signing keys"
    )
    site_names = [c.name for c in obs.spec.clients if c.is_site]
    if site_names:
        text += (
            f"; site clients {', '.join(site_names)} join with their bundles "
            f"(`fedkube site bundle {obs.job.name} CLIENT`)"
        )
    return text


def _phase_message(obs: Observation, draft: _Draft) -> str:
    """The Running condition's message: what the job does now, and what to do about it."""
    if draft.phase == "Running":
        return (
            f"training: status.currentRound and `kubectl get fj {obs.job.name}` show the progress"
        )
    if draft.message:
        return draft.message
    if draft.phase == "Pending":
        return catalogue.message(
            "Pending", "waiting for the aggregator's and the clients' pods to run", job=obs.job.name
        )
    if draft.phase == "Suspended":
        return catalogue.message("Suspended", "spec.runPolicy.suspend is true: no pods run")
    return ""
