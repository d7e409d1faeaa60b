"""A commit record that does not verify: reported once (Event, condition), never folded in."""

from __future__ import annotations

from dataclasses import replace

from fedcore import layout
from fedop import status
from fedop.observed import RefusedRecord
from fedop.reconcile import plan
from fedop.refused import REASON as REFUSED_RECORD
from tests.fixtures.fedjobs import COMMIT_KEY, messages, observe, record, status_of, store

FORGED = RefusedRecord(
    key=layout.round_record_key(2),
    reason="bad-signature",
    fingerprint=COMMIT_KEY.fingerprint,
    message="refused commit record rounds/000002/round.json (bad-signature): ...",
)


def test_a_refused_record_is_a_warning_event_and_a_false_condition_naming_round_and_key() -> None:
    snapshot = replace(store([record(0), record(1)]), refused=(FORGED,))

    result = plan(observe(status=status_of("Running"), snapshot=snapshot))

    (message,) = messages(result, REFUSED_RECORD)
    assert "rounds/000002/round.json" in message
    assert COMMIT_KEY.fingerprint in message
    assert "bad-signature" in message
    assert any(a.type == "Warning" for a in result.announcements if a.reason == REFUSED_RECORD)
    condition = status.condition(result.status, "CommitsVerified")
    assert condition is not None
    assert (condition.status, condition.reason, condition.message) == (
        "False",
        REFUSED_RECORD,
        message,
    )


def test_a_refused_record_is_not_folded_into_status() -> None:
    snapshot = replace(store([record(0), record(1)]), refused=(FORGED,))

    result = plan(observe(status=status_of("Running"), snapshot=snapshot))

    assert result.status.current_round == 1
    assert [h.round for h in result.status.history] == [0, 1]


def test_a_refused_record_is_announced_once_while_it_stays() -> None:
    snapshot = replace(store([record(0), record(1)]), refused=(FORGED,))
    first = plan(observe(status=status_of("Running"), snapshot=snapshot))

    again = plan(observe(status=first.status, snapshot=replace(store(), refused=(FORGED,))))

    assert messages(again, REFUSED_RECORD) == []
    assert status.condition(again.status, "CommitsVerified") == status.condition(
        first.status, "CommitsVerified"
    )


def test_verified_records_set_no_commit_condition() -> None:
    result = plan(observe(status=status_of("Running"), snapshot=store([record(0)])))

    assert status.condition(result.status, "CommitsVerified") is None
    assert messages(result, REFUSED_RECORD) == []
