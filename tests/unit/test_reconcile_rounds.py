"""Committed rounds flow from the store into status and Events, each exactly once."""

from __future__ import annotations

from fedcore import layout
from fedcore import spec as fs
from fedcore.validation import REJECT_REASONS
from fedop.reconcile import plan
from fedop.rejections import ADVICE
from tests.fixtures.fedjobs import (
    make_spec,
    messages,
    observe,
    reasons,
    record,
    status_of,
    store,
)


def test_new_rounds_fill_status_and_are_announced_with_their_accuracy() -> None:
    result = plan(
        observe(
            status=status_of("Running"),
            snapshot=store([record(0, accuracy=0.1), record(1, accuracy=0.91)]),
        )
    )

    s = result.status
    assert s.current_round == 1
    assert [h.round for h in s.history] == [0, 1]
    assert s.last_round is not None
    assert s.last_round.metrics["accuracy"] == 0.91
    assert s.last_round.duration_seconds == 5.0
    assert messages(result, "RoundCommitted") == [
        "round 1/3 committed: 3 participants, accuracy 0.91, loss 0.09"
    ]


def test_every_rejection_reason_code_reaches_an_event_as_is() -> None:
    rejected = [
        layout.RejectedUpdate(client=f"c{i}", reason=reason, detail=f"why {reason}")
        for i, reason in enumerate(REJECT_REASONS)
    ]

    result = plan(
        observe(
            status=status_of("Running"),
            snapshot=store([record(0), record(1, ["a"], rejected=rejected)]),
        )
    )

    assert messages(result, "UpdateRejected") == [
        f"round 1: update from client c{i} rejected ({reason}): why {reason} "
        f"(written with client c{i}'s own store credential: only it may write "
        f"rounds/000001/updates/c{i}.*). The round went on without it. "
        + ADVICE[reason].format(
            client=f"c{i}", child=f"digits-c{i}", aggregator="digits-aggregator"
        )
        for i, reason in enumerate(REJECT_REASONS)
    ]


def test_clients_show_their_last_round_and_samples() -> None:
    result = plan(
        observe(status=status_of("Running"), snapshot=store([record(0, []), record(1, ["a", "c"])]))
    )

    clients = result.status.clients
    assert (clients["a"].last_round, clients["a"].num_samples) == (1, 100)
    assert (clients["c"].last_round, clients["c"].num_samples) == (1, 101)
    assert clients["b"].last_round is None


def test_rounds_already_in_status_are_not_announced_again() -> None:
    first = plan(observe(status=status_of("Running"), snapshot=store([record(0), record(1)])))

    # A restarted operator's cache is empty: it reads from the status' next round, but even
    # records handed in again must not count twice.
    again = plan(observe(status=first.status, snapshot=store([record(0), record(1), record(2)])))

    assert again.status.current_round == 2
    assert messages(again, "RoundCommitted") == [
        "round 2/3 committed: 3 participants, accuracy 0.5, loss 0.5"
    ]
    assert [h.round for h in again.status.history] == [0, 1, 2]


def test_rejected_and_late_updates_are_announced_with_the_round() -> None:
    bad = layout.RejectedUpdate(client="b", reason="bad-signature", detail="HMAC mismatch")
    late = layout.LateUpdate(client="c", round=1)

    result = plan(
        observe(
            status=status_of("Running"),
            snapshot=store([record(0), record(1, ["a"], rejected=[bad], late=[late])]),
        )
    )

    assert messages(result, "UpdateRejected") == [
        "round 1: update from client b rejected (bad-signature): HMAC mismatch (written "
        "with client b's own store credential: only it may write rounds/000001/updates/b.*). "
        "The round went on without it. It is not signed with client b's key (Secret "
        "digits-b-key). If client b did not send it, revoke the credential that wrote it "
        "(named above; with shared credentials every participant holds it)."
    ]
    assert reasons(result).count("LateUpdate") == 1
    assert result.status.last_round is not None
    assert result.status.last_round.rejected == 1


def test_history_is_bounded() -> None:
    rounds = [record(r) for r in range(fs.MAX_HISTORY + 10)]
    spec = make_spec(rounds=fs.MAX_HISTORY + 20)

    result = plan(observe(spec, status=status_of("Running"), snapshot=store(rounds)))

    assert len(result.status.history) == fs.MAX_HISTORY
    assert result.status.history[-1].round == fs.MAX_HISTORY + 9
    assert result.status.current_round == fs.MAX_HISTORY + 9


def test_a_gap_in_the_records_stops_folding_until_it_fills() -> None:
    result = plan(observe(status=status_of("Running"), snapshot=store([record(0), record(2)])))

    assert result.status.current_round == 0
    assert [h.round for h in result.status.history] == [0]


def test_history_of_a_large_job_stays_small_but_the_last_round_names_everyone() -> None:
    names = [f"c{i:03d}" for i in range(40)]
    spec = make_spec(clients=[{"name": n} for n in names])

    result = plan(
        observe(
            spec, status=status_of("Running"), snapshot=store([record(0, []), record(1, names)])
        )
    )

    assert result.status.history[-1].participants == []
    assert result.status.last_round is not None
    assert result.status.last_round.participants == names
    assert result.status.clients["c039"].last_round == 1


def test_status_metrics_are_short_enough_for_the_accuracy_column() -> None:
    result = plan(
        observe(status=status_of("Running"), snapshot=store([record(0, accuracy=0.947222222222)]))
    )

    assert result.status.last_round is not None
    assert result.status.last_round.metrics["accuracy"] == 0.9472
