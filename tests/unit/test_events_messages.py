"""What each Event and condition tells a person: what happened, then what to do.

Each case runs a real pass (``reconcile.plan``) over a hand-written observation and reads
the message a person would see in ``kubectl describe fj``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest

from fedcore import layout
from fedcore import spec as fs
from fedop import catalogue, events, reconcile, status
from fedop.observed import RefusedRecord, StoreSnapshot
from tests.fixtures.fedjobs import (
    COMMIT_KEY,
    JOB,
    T0,
    child,
    make_spec,
    messages,
    observe,
    record,
    running_jobs,
    status_of,
    store,
)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[], reconcile.Plan]
    reason: str
    expected: str


def rejected(reason: str, detail: str = "HMAC mismatch", client: str = "b") -> reconcile.Plan:
    bad = layout.RejectedUpdate(client=client, reason=reason, detail=detail)
    snapshot = store([record(0), record(1, ["a"], rejected=[bad])])
    return reconcile.plan(observe(status=status_of("Running"), snapshot=snapshot))


def failed_group(**state: object) -> Callable[[], reconcile.Plan]:
    def run() -> reconcile.Plan:
        spec = make_spec(strategy={"minClients": 2}, runPolicy={"backoffLimit": 1})
        a = child("a", failed=True, failure="BackoffLimitExceeded: pod exited 137", **state)
        return reconcile.plan(
            observe(spec, status=status_of("Running"), jobs=running_jobs(spec, a=a))
        )

    return run


def silent_site() -> reconcile.Plan:
    spec = make_spec(
        clients=[{"name": "a"}, {"name": "b"}, {"name": "s", "site": {"timeoutSeconds": 600}}],
        strategy={"minClients": 2},
    )
    earlier = status_of(start_time=T0, current_round=0, last_round=fs.RoundSummary(round=0))
    jobs = [child(n, active=1, ready=1) for n in ("a", "b", "aggregator")]
    return reconcile.plan(
        observe(
            spec,
            status=earlier,
            jobs=jobs,
            snapshot=store([record(0, [])], excluded={}),
            now=T0 + timedelta(seconds=600),
        )
    )


def aggregator(**state: object) -> Callable[[], reconcile.Plan]:
    def run() -> reconcile.Plan:
        spec = make_spec()
        jobs = running_jobs(spec, aggregator=child("aggregator", **state))
        return reconcile.plan(observe(spec, status=status_of("Running"), jobs=jobs))

    return run


def too_few() -> reconcile.Plan:
    spec = make_spec(runPolicy={"backoffLimit": 0})
    a = child("a", failed=True, failure="BackoffLimitExceeded: pod exited 137")
    return reconcile.plan(observe(spec, status=status_of("Running"), jobs=running_jobs(spec, a=a)))


def past_deadline() -> reconcile.Plan:
    spec = make_spec(runPolicy={"activeDeadlineSeconds": 60})
    running = status_of("Running", start_time=T0)
    return reconcile.plan(observe(spec, status=running, now=T0 + timedelta(seconds=60)))


def shared() -> reconcile.Plan:
    spec = make_spec(storage={"endpoint": "http://minio:9000", "credentials": "shared"})
    return reconcile.plan(observe(spec, status=status_of("Running")))


FORGED = RefusedRecord(
    key="fedkube/team-a/digits/rounds/000002/round.json",
    reason="bad-signature",
    fingerprint=COMMIT_KEY.fingerprint,
    message="",
)


def forged_record() -> reconcile.Plan:
    snapshot = replace(store([record(0), record(1)]), refused=(FORGED,))
    return reconcile.plan(observe(status=status_of("Running"), snapshot=snapshot))


def suspended() -> reconcile.Plan:
    spec = make_spec(runPolicy={"suspend": True})
    return reconcile.plan(observe(spec, status=status_of("Running", current_round=2)))


def late() -> reconcile.Plan:
    snapshot = store([record(0), record(1, late=[layout.LateUpdate(client="c", round=0)])])
    return reconcile.plan(observe(status=status_of("Running"), snapshot=snapshot))


def invalid_spec() -> reconcile.Plan:
    error = "invalid FederatedJob (1 problem):\n  - spec.rounds: must be at least 1"
    return reconcile.refuse(fs.FederatedJobStatus(), 1, error, T0)


def no_sts() -> reconcile.Plan:
    return reconcile.refuse(
        fs.FederatedJobStatus(),
        1,
        "the store http://s3:9000 answered AssumeRole with NotImplemented",
        T0,
        reconcile.STORE_WITHOUT_STS,
    )


CASES = [
    Case(
        "a client past its restart budget is dropped and told the job goes on without it",
        failed_group(restarts=1),
        "ClientDropped",
        "client a dropped: its group failed 2 times (restart budget "
        "spec.runPolicy.backoffLimit=1); last failure: BackoffLimitExceeded: pod exited 137. "
        "The job goes on without it (a dropped client does not rejoin this job); "
        "`kubectl logs job/digits-a` shows why its pods failed: fix that, or raise "
        "spec.runPolicy.backoffLimit, for the next job.",
    ),
    Case(
        "a restarted group says where its logs are and how many failures are left",
        failed_group(),
        "ClientRestarted",
        "client a: its group failed (BackoffLimitExceeded: pod exited 137); restarting the "
        "whole group (restart 1/1). Nothing to do if the new group trains; `kubectl logs "
        "job/digits-a` shows the failure. It is dropped after 1 more failure(s) "
        "(spec.runPolicy.backoffLimit).",
    ),
    Case(
        "a client stopped by a configuration error is told which fields to fix",
        failed_group(config_error=True),
        "ClientDropped",
        "client a dropped: its group stopped on a configuration error (exit code 2), so it "
        "was not restarted; BackoffLimitExceeded: pod exited 137. Fix spec.task or this "
        "client's taskConfig, env or volumes (`kubectl logs job/digits-a` says what is wrong; "
        "`fedkube validate` checks a job file before you apply it). The job goes on without "
        "it (a dropped client does not rejoin this job).",
    ),
    Case(
        "a silent site is dropped and told to check its client and the bucket",
        silent_site,
        "ClientDropped",
        "client s dropped: no update from the site for 600 s "
        "(spec.clients[2].site.timeoutSeconds); it sent no update yet. The job goes on "
        "without it (a dropped client does not rejoin this job); check that the site runs "
        "`fedkube client --bundle` and reaches the bucket, or raise site.timeoutSeconds for "
        "the next job.",
    ),
    Case(
        "too few clients names the dropped ones and the quorum, and how to run again",
        too_few,
        "TooFewClients",
        "client a was dropped; 2 remain but the job needs at least 3 "
        "(spec.strategy.minClients). Each dropped client's message in status.clients says "
        "why: fix that (or lower spec.strategy.minClients), then create the job again (a "
        "new job starts from round 0).",
    ),
    Case(
        "an aggregator past its retries points at its logs",
        aggregator(failed=True, failure="BackoffLimitExceeded: Job has reached the limit"),
        "AggregatorFailed",
        "the aggregator failed past its retry budget (spec.runPolicy.backoffLimit=3): "
        "BackoffLimitExceeded: Job has reached the limit. `kubectl logs job/digits-aggregator` "
        "says why; fix it, then create the job again (a new job starts from round 0).",
    ),
    Case(
        "an aggregator that wrote no final record points at its logs and the store",
        aggregator(complete=True),
        "AggregatorFailed",
        "the aggregator exited successfully but wrote no final/round.json. The aggregator or "
        "the store lost the final write: read `kubectl logs job/digits-aggregator` and the "
        "store's final/ prefix, then create the job again (a new job starts from round 0).",
    ),
    Case(
        "an aggregator with a configuration error is told to fix spec.task",
        aggregator(failed=True, config_error=True, failure="PodFailurePolicy: exit code 2"),
        "ConfigurationError",
        "the aggregator stopped on a configuration error (exit code 2), so it was not "
        "retried: PodFailurePolicy: exit code 2. Fix spec.task (`kubectl logs "
        "job/digits-aggregator` says what is wrong; `fedkube validate` checks a job file "
        "before you apply it), then create the job again (a new job starts from round 0).",
    ),
    Case(
        "a job past its deadline names the field to raise",
        past_deadline,
        "DeadlineExceeded",
        "the job ran longer than spec.runPolicy.activeDeadlineSeconds=60 (round 0/3 "
        "committed). Raise or unset spec.runPolicy.activeDeadlineSeconds, then create the "
        "job again (a new job starts from round 0).",
    ),
    Case(
        "a rejected update names the writer and advises by its code",
        lambda: rejected("bad-signature"),
        "UpdateRejected",
        "round 1: update from client b rejected (bad-signature): HMAC mismatch (written with "
        "client b's own store credential: only it may write rounds/000001/updates/b.*). The "
        "round went on without it. It is not signed with client b's key (Secret "
        "digits-b-key). If client b did not send it, revoke the credential that wrote it "
        "(named above; with shared credentials every participant holds it).",
    ),
    Case(
        "a rejected update with a code this operator does not know points at the logs",
        lambda: rejected("from-the-future"),
        "UpdateRejected",
        "round 1: update from client b rejected (from-the-future): HMAC mismatch (written "
        "with client b's own store credential: only it may write rounds/000001/updates/b.*). "
        "The round went on without it. `kubectl logs job/digits-aggregator` says more.",
    ),
    Case(
        "a diverged client is told to lower its learning rate",
        lambda: rejected("non-finite", "tensor 'fc.weight' holds NaN"),
        "UpdateRejected",
        "round 1: update from client b rejected (non-finite): tensor 'fc.weight' holds NaN "
        "(written with client b's own store credential: only it may write "
        "rounds/000001/updates/b.*). The round went on without it. Client b's training "
        "diverged (NaN or inf): lower its learning rate or check its data (`kubectl logs "
        "job/digits-b`).",
    ),
    Case(
        "a late update says nothing is needed unless it repeats",
        late,
        "LateUpdate",
        "update from client c for round 0 arrived after the round closed; ignored. Nothing "
        "to do unless it repeats: then client c is slower than "
        "spec.strategy.roundTimeoutSeconds allows; raise it or give the client more "
        "resources.",
    ),
    Case(
        "shared credentials say what is exposed and how to scope them",
        shared,
        "SharedCredentials",
        "spec.storage.credentials is shared: every pod holds the job's own store credential, "
        "so any participant can read the others' updates, overwrite their slots and write "
        "global models. Set spec.storage.credentials: scoped (the default; needs a store "
        "with STS) so each role gets its own credential.",
    ),
    Case(
        "a forged commit record names the key and says to revoke and rerun",
        forged_record,
        "CommitRecordRefused",
        "commit record fedkube/team-a/digits/rounds/000002/round.json refused "
        "(bad-signature): it does not verify with the job's commit key "
        f"{COMMIT_KEY.fingerprint}. Clients do not train on it and the status leaves it out. "
        "Revoke the store credential that wrote it (with scoped credentials only the job's "
        "own, spec.storage.secretRef, may), then rerun the job under a new storage prefix: "
        "the aggregator cannot replace the record.",
    ),
    Case(
        "a suspended job says how to resume",
        suspended,
        "Suspended",
        "suspended at round 2/3: pods stopped; training resumes from the newest committed "
        "round. To resume, set spec.runPolicy.suspend to false.",
    ),
    Case(
        "an invalid spec lists the field on one line and says how to check before applying",
        invalid_spec,
        "InvalidSpec",
        "invalid FederatedJob (1 problem): - spec.rounds: must be at least 1. Fix the fields "
        "named above (`fedkube validate FILE` lists the same problems) and apply the job "
        "again: a changed spec starts it again.",
    ),
    Case(
        "a store without STS names both ways out",
        no_sts,
        "StoreWithoutSTS",
        "the store http://s3:9000 answered AssumeRole with NotImplemented. Use a store with "
        "STS, or set spec.storage.credentials: shared (every pod then holds the job's own "
        "credential: participants can read and overwrite each other's updates); a changed "
        "spec starts the job again.",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_event_says_what_happened_and_what_to_do(case: Case) -> None:
    result = case.run()

    assert messages(result, case.reason) == [case.expected]


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.reason not in ("UpdateRejected", "LateUpdate")], ids=str
)
def test_every_warning_and_failure_ends_with_its_catalogue_action(case: Case) -> None:
    (announced,) = [a for a in case.run().announcements if a.reason == case.reason]
    entry = catalogue.CATALOGUE[announced.reason]

    assert announced.type == entry.event
    if entry.event == "Warning":
        actions = [entry.action, *entry.causes.values()]
        endings = [
            a.format(child="digits-a", aggregator="digits-aggregator", left=1) for a in actions
        ]
        assert any(announced.message.endswith(e) for e in endings), announced.message


@pytest.mark.parametrize(
    ("name", "run", "condition"),
    [
        pytest.param("too few", too_few, "Failed", id="a failed job's condition carries the fix"),
        pytest.param(
            "forged", forged_record, "CommitsVerified", id="a refused record's condition says so"
        ),
        pytest.param(
            "shared", shared, "SharedCredentials", id="the shared-credentials condition says so"
        ),
    ],
)
def test_the_condition_carries_the_same_text_as_its_event(
    name: str, run: Callable[[], reconcile.Plan], condition: status.ConditionType
) -> None:
    result = run()
    found = status.condition(result.status, condition)

    assert found is not None
    assert [found.message] == messages(result, found.reason)


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        pytest.param(
            "Pending",
            "waiting for the aggregator's and the clients' pods to run. Nothing to do unless "
            "it stays Pending: `kubectl get pods -l fedkube.io/job=digits` and `kubectl "
            "describe pod` say why a pod does not start (for example no node with the "
            "requested GPUs).",
            id="a pending job says how to find the pod that does not start",
        ),
        pytest.param(
            "Suspended",
            "spec.runPolicy.suspend is true: no pods run. To resume, set "
            "spec.runPolicy.suspend to false.",
            id="a suspended job says how to resume",
        ),
    ],
)
def test_the_running_condition_says_what_the_job_waits_for(phase: str, expected: str) -> None:
    spec = make_spec(runPolicy={"suspend": phase == "Suspended"})
    jobs = [child(c.name) for c in spec.clients] + [child("aggregator")]

    result = reconcile.plan(observe(spec, status=status_of(phase), jobs=jobs))

    running = status.condition(result.status, "Running")
    assert running is not None
    assert (running.reason, running.message) == (phase, expected)


def test_an_unreachable_store_is_named_with_what_to_fix() -> None:
    problem = "credentials Secret team-a/s3-creds (spec.storage.secretRef) does not exist"

    result = reconcile.plan(
        observe(
            status=status_of("Pending"),
            snapshot=StoreSnapshot(available=False, problem=problem),
            jobs=[],
        )
    )

    assert result.status.message == (
        f"object store unavailable: {problem}. Fix what is named (the Secret in "
        "spec.storage.secretRef, spec.storage.endpoint, the bucket); the operator retries on "
        "its own."
    )


# ---- text from the store: one printable line, within 1 KiB, the advice kept -----------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param("a\nb\r\n\tc", "a b c", id="line breaks and tabs become one space"),
        pytest.param("red \x1b[31mtext", "red \\x1b[31mtext", id="a terminal escape is shown"),
        pytest.param("x\x00y\x7f", "x\\x00y\\x7f", id="nul and delete are shown"),
        pytest.param("abc\u202edcba", "abc\\u202edcba", id="a bidi override is shown, not obeyed"),
        pytest.param("zero\u200bwidth", "zero\\u200bwidth", id="a zero-width space is shown"),
        pytest.param("Grüße, 東京", "Grüße, 東京", id="printable text of any script is kept"),
    ],
)
def test_clean_makes_one_printable_line(raw: str, shown: str) -> None:
    assert catalogue.clean(raw) == shown
    assert catalogue.clean(shown) == shown  # idempotent: compared with what status holds


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("short", 10, "short", id="text within the limit is unchanged"),
        pytest.param("abcdefghij", 8, "abcde...", id="ascii is cut with an ellipsis"),
        pytest.param("ééééé", 8, "éé...", id="a two-byte character is never split"),
    ],
)
def test_clip_counts_bytes_and_never_splits_a_character(
    text: str, limit: int, expected: str
) -> None:
    assert catalogue.clip(text, limit) == expected
    assert len(catalogue.clip(text, limit).encode()) <= limit


def test_a_hostile_rejection_detail_is_one_line_within_1_kib_and_keeps_the_advice() -> None:
    detail = ("\x1b[2J\n東京" * 200)[: layout.MAX_DETAIL_CHARS]

    (message,) = messages(rejected("bad-signature", detail), "UpdateRejected")

    assert len(message.encode()) <= catalogue.EVENT_NOTE_BYTES
    assert "\x1b" not in message
    assert "\n" not in message
    assert message.startswith("round 1: update from client b rejected (bad-signature): ")
    assert message.endswith("(named above; with shared credentials every participant holds it).")


def test_a_hostile_client_name_cannot_break_the_line() -> None:
    (message,) = messages(rejected("not-selected", client="x\nFAKE: all good"), "UpdateRejected")

    assert "\n" not in message
    assert "client x FAKE: all good rejected" in message


def test_a_huge_client_name_and_code_leave_the_advice_in_a_1_kib_event() -> None:
    (message,) = messages(rejected("bad-signature", client="m" * 253), "UpdateRejected")

    assert len(message.encode()) <= catalogue.EVENT_NOTE_BYTES
    assert f"client {'m' * 61}... rejected (bad-signature)" in message
    assert message.endswith("(named above; with shared credentials every participant holds it).")


def test_a_refused_record_key_with_a_bidi_override_is_shown_escaped() -> None:
    key = "rounds/000002/\u202enosj.dnuor"
    snapshot = replace(store([record(0)]), refused=(replace(FORGED, key=key),))

    result = reconcile.plan(observe(status=status_of("Running"), snapshot=snapshot))

    (message,) = messages(result, "CommitRecordRefused")
    assert "rounds/000002/\\u202enosj.dnuor" in message
    condition = status.condition(result.status, "CommitsVerified")
    assert condition is not None
    assert condition.message.startswith(message[:60])


def test_many_refused_records_keep_the_event_within_1_kib_and_the_action() -> None:
    many = tuple(replace(FORGED, key=f"rounds/{r:06d}/round.json") for r in range(40))
    snapshot = replace(store([record(0)]), refused=many)

    (message,) = messages(
        reconcile.plan(observe(status=status_of("Running"), snapshot=snapshot)),
        "CommitRecordRefused",
    )

    assert len(message.encode()) <= catalogue.EVENT_NOTE_BYTES
    assert "rounds/000000/round.json" in message
    assert message.endswith("the aggregator cannot replace the record.")


def test_the_event_object_never_exceeds_the_note_limit() -> None:
    long = events.Announcement("Warning", "UpdateRejected", "é" * 2000)

    obj = events.event_object(JOB, long, T0)

    assert len(obj["message"].encode()) <= catalogue.EVENT_NOTE_BYTES
    assert obj["involvedObject"]["name"] == JOB.name


def test_a_restated_refusal_is_not_announced_twice() -> None:
    first = invalid_spec()

    again = reconcile.refuse(
        first.status,
        1,
        "invalid FederatedJob (1 problem):\n  - spec.rounds: must be at least 1",
        T0 + timedelta(seconds=5),
    )

    assert again.announcements == ()
