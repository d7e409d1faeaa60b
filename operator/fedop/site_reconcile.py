"""The site operator's decisions for one FederatedSite, as one pure function.

``plan`` takes the FederatedSite's spec and status, its join bundle as read from the Secret
it names, its children as listed and the rounds read from the bucket, and returns the new
status, the API actions and the Events. Like ``fedop.reconcile`` it does no I/O and is
level-based: the status (written first by the executor) holds the restart count, so an
operator restart neither forgets a restart nor makes one twice.

The group is restarted the way the coordinator restarts an in-cluster client: a DDP world
cannot lose a member, so a failed pod fails the whole Job (``backoffLimit: 0``), which is
deleted (foreground, so groups never overlap) and made again, up to ``spec.backoffLimit``
times; a pod exiting with ``EXIT_CONFIG`` stops the site at once (no restart can help).
A Failed site starts again from scratch when its spec changes (``metadata.generation``).

Every Event and condition reason is one of ``catalogue.SiteReason``: each message says what
happened (pod failure text cleaned and cut to fit) and ends with what the site's admin does,
from ``catalogue.SITE_CATALOGUE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fedcore import join_bundle as jb
from fedcore import site_spec as ss
from fedcore import spec as fs
from fedcore.exitcodes import EXIT_CONFIG
from fedop import catalogue, events, status
from fedop.builders import names
from fedop.builders import site as builders
from fedop.events import Announcement
from fedop.observed import Children
from fedop.reconcile import Create, DeleteJob, Replace
from fedop.settings import OperatorSettings
from fedop.site_store import SiteProgress

SiteAction = Create | Replace | DeleteJob
TERMINAL = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class SiteObservation:
    """Everything one pass knows about one FederatedSite."""

    site: names.JobRef
    generation: int | None
    spec: ss.FederatedSiteSpec
    status: ss.FederatedSiteStatus
    bundle: jb.JoinBundle | None
    """None when the bundle Secret is missing or invalid (``bundle_problem`` says why)."""
    bundle_problem: str
    digest: str
    """sha256 of the bundle's bytes (empty without a bundle)."""
    children: Children
    progress: SiteProgress
    now: datetime
    settings: OperatorSettings = field(default_factory=OperatorSettings)


@dataclass(frozen=True)
class SitePlan:
    status: ss.FederatedSiteStatus
    actions: tuple[SiteAction, ...] = ()
    """In order: what the pods mount, then the Service and NetworkPolicy, then the Job."""
    announcements: tuple[Announcement, ...] = ()


@dataclass
class _Draft:
    values: dict[str, Any]
    conditions: list[fs.Condition]
    actions: list[SiteAction] = field(default_factory=list)
    announcements: list[Announcement] = field(default_factory=list)

    def condition(
        self,
        obs: SiteObservation,
        kind: status.ConditionType,
        value: bool,
        reason: catalogue.SiteReason,
        what: str = "",
        *,
        cause: str | None = None,
        group: str = "",
    ) -> None:
        """Set condition ``kind``; its message is ``what`` happened and the site's action
        (``group``: the group's Job, where the action names it)."""
        text = catalogue.site_message(reason, what, cause=cause, site=obs.site.name, group=group)
        self.conditions = status.set_site_condition(
            self.conditions,
            kind,
            "True" if value else "False",
            reason,
            text,
            now=obs.now,
            generation=obs.generation,
        )


def plan(obs: SiteObservation) -> SitePlan:
    """Decide one pass for one FederatedSite (see the module docstring)."""
    old = obs.status
    draft = _Draft(values=old.model_dump(exclude={"conditions"}), conditions=list(old.conditions))
    values = draft.values
    restarted_by_spec = old.phase == "Failed" and old.observed_generation != obs.generation
    if restarted_by_spec:
        values.update(phase="Pending", restarts=0, completion_time=None, message="")
        draft.conditions = [c for c in draft.conditions if c.type != "Failed"]
        if obs.bundle is not None:
            old_group = names.client_job(obs.site, obs.bundle.client)
            if old_group in obs.children.jobs:
                # The failed group goes first; the next pass makes the new one.
                draft.actions.append(DeleteJob(old_group, "Foreground"))
                values["phase"] = "Restarting"
                _phase_news(obs, draft, old.phase)
                return _done(draft)
    values["observed_generation"] = obs.generation
    if obs.bundle is None:
        values["message"] = obs.bundle_problem
    elif values["phase"] not in TERMINAL:
        _run(obs, obs.bundle, draft)
    if obs.bundle is not None:
        _progress(obs, obs.bundle, draft)
    _phase_news(obs, draft, old.phase)
    return _done(draft)


def _done(draft: _Draft) -> SitePlan:
    values = draft.values
    values["message"] = catalogue.clip(catalogue.clean(values["message"]), fs.MAX_MESSAGE)
    new = ss.FederatedSiteStatus.model_validate({**values, "conditions": draft.conditions})
    return SitePlan(new, tuple(draft.actions), tuple(draft.announcements))


def _run(obs: SiteObservation, bundle: jb.JoinBundle, draft: _Draft) -> None:
    values = draft.values
    ref, client = obs.site, bundle.client
    values.update(job=bundle.job.name, client=client, total_rounds=bundle.job.spec.rounds)
    problems = builders.name_problems(ref, obs.spec, client)
    if problems:
        _fail(obs, draft, "InvalidSpec", "; ".join(problems), group=names.client_job(ref, client))
        return
    values["message"] = ""
    _ensure_mounted(obs, bundle, draft)
    service, policy, _ = builders.group_objects(
        ref, obs.spec, bundle, obs.settings, restarts=values["restarts"]
    )
    if service["metadata"]["name"] not in obs.children.services:
        draft.actions.append(Create(service))
    if policy["metadata"]["name"] not in obs.children.network_policies:
        draft.actions.append(Create(policy))
    _sync_group(obs, bundle, draft)


def _ensure_mounted(obs: SiteObservation, bundle: jb.JoinBundle, draft: _Draft) -> None:
    """The job file and the Secrets: made once, rewritten when the bundle changed."""
    kids = obs.children
    for obj in builders.derived_objects(obs.site, obs.spec, bundle, obs.digest):
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            current = kids.configmaps.get(name)
            if current is None:
                draft.actions.append(Create(obj))
            elif dict(current) != obj["data"]:
                draft.actions.append(Replace(obj))
        elif name not in kids.secrets:
            draft.actions.append(Create(obj))
        elif kids.secret_annotations.get(name, {}).get(builders.ANNOTATION_BUNDLE) != obs.digest:
            draft.actions.append(Replace(obj))


def _sync_group(obs: SiteObservation, bundle: jb.JoinBundle, draft: _Draft) -> None:
    values = draft.values
    ref, budget = obs.site, obs.spec.backoff_limit
    name = names.client_job(ref, bundle.client)
    child = obs.children.jobs.get(name)
    if child is None:
        *_, job = builders.group_objects(
            ref, obs.spec, bundle, obs.settings, restarts=values["restarts"]
        )
        draft.actions.append(Create(job))
        values["phase"] = "Restarting" if values["restarts"] else "Pending"
        values["start_time"] = values["start_time"] or status.second(obs.now)
    elif child.terminating:
        values["phase"] = "Restarting"
    elif child.failed and child.config_error:
        failure = f": {child.failure}" if child.failure else ""
        _fail(
            obs,
            draft,
            "ConfigurationError",
            f"the group {name} stopped on a configuration error (exit code {EXIT_CONFIG}), "
            f"so it was not restarted{failure}",
            group=name,
        )
    elif child.failed:
        why = child.failure or "a pod of the group failed"
        attempt = child.restarts + 1
        if attempt > budget:
            _fail(
                obs,
                draft,
                "BackoffLimitExceeded",
                f"the group failed {attempt} times (restart budget spec.backoffLimit="
                f"{budget}); last failure: {why}",
                group=name,
            )
            return
        draft.actions.append(DeleteJob(name, "Foreground"))
        if values["restarts"] < attempt:
            draft.announcements.append(
                events.announce_site(
                    "GroupRestarted",
                    f"the group failed ({why}); restarting the whole group "
                    f"(restart {attempt}/{budget})",
                    once=f"restart-{attempt}",
                    group=name,
                    left=budget - attempt + 1,
                )
            )
        values.update(
            phase="Restarting",
            restarts=max(values["restarts"], attempt),
            message=f"restarting after: {why}",
        )
    elif child.complete:
        values.update(phase="Succeeded", completion_time=status.second(obs.now))
    else:
        values["phase"] = "Running" if child.running else "Pending"


def _fail(
    obs: SiteObservation,
    draft: _Draft,
    reason: Literal["InvalidSpec", "ConfigurationError", "BackoffLimitExceeded"],
    what: str,
    *,
    group: str,
) -> None:
    """Failed with ``reason``: the status, the Failed condition and a Warning, each ending
    with what the site's admin does (``group``: the group's Job)."""
    text = catalogue.site_message(reason, what, limit=fs.MAX_MESSAGE, group=group)
    draft.values.update(phase="Failed", message=text, completion_time=status.second(obs.now))
    draft.condition(obs, "Failed", True, reason, what, group=group)
    draft.announcements.append(events.announce_site(reason, what, group=group))


def _progress(obs: SiteObservation, bundle: jb.JoinBundle, draft: _Draft) -> None:
    """Rounds read from the bucket: the newest committed one (announced once), this site's
    newest, and records that failed verification (a False condition, announced once)."""
    values, seen = draft.values, obs.progress
    if not seen.available:
        if values["phase"] not in TERMINAL and not values["message"]:
            values["message"] = f"object store unavailable: {seen.problem}"
        return
    before = values["current_round"]
    if seen.current_round is not None and (before is None or seen.current_round > before):
        values.update(current_round=seen.current_round, last_update_time=status.second(obs.now))
        r, total = seen.current_round, bundle.job.spec.rounds
        mine = " with this site's update" if seen.last_round == r else ""
        draft.announcements.append(
            events.announce_site(
                "RoundCommitted",
                f"round {r}/{total} committed by the aggregator{mine}",
                once=f"round-{r}-committed",
            )
        )
    if seen.last_round is not None:
        values["last_round"] = seen.last_round
    verified = next((c for c in draft.conditions if c.type == "CommitsVerified"), None)
    if seen.refused:
        text = catalogue.site_message("CommitRefused", seen.refused)
        if verified is None or verified.message != text:
            draft.announcements.append(events.announce_site("CommitRefused", seen.refused))
        draft.condition(obs, "CommitsVerified", False, "CommitRefused", seen.refused)
    elif verified is not None and verified.status == "False":
        draft.condition(obs, "CommitsVerified", True, "Verified", "")


def _phase_news(obs: SiteObservation, draft: _Draft, old: str) -> None:
    phase: ss.SitePhase = draft.values["phase"]
    running = phase == "Running"
    # A Failed site's message is in the Failed condition; this one says to read it.
    what = "" if phase in ("Running", "Failed") else draft.values["message"]
    cause = "bundle" if phase == "Pending" and obs.bundle is None else None
    draft.condition(obs, "Running", running, phase, what, cause=cause)
    if phase == "Succeeded":
        draft.condition(obs, "Succeeded", True, "GroupCompleted", "the group finished the job")
    if phase == old:
        return
    if phase == "Running":
        n = obs.spec.replicas * obs.spec.procs_per_replica
        draft.announcements.append(
            events.announce_site(
                "Running", f"the group is training ({n} process{'es' if n != 1 else ''})"
            )
        )
    elif phase == "Succeeded":
        r = draft.values["current_round"]
        draft.announcements.append(
            events.announce_site("Succeeded", f"the group finished the job (round {r} committed)")
        )
