"""dpfedavg jobs in status: epsilon per round (the Epsilon column of ``kubectl get fj``),
copied from the signed records, and the privacy budget ending the job as a success."""

from __future__ import annotations

from fedcore import layout
from fedop import status
from fedop.reconcile import plan
from tests.fixtures.fedjobs import (
    child,
    final,
    make_spec,
    messages,
    observe,
    reasons,
    record,
    running_jobs,
    status_of,
    store,
)


def privacy(eps: float, *, reached: bool = False, rounds: int = 1) -> layout.PrivacyRecord:
    return layout.PrivacyRecord(
        epsilon=eps,
        delta=1e-5,
        noise_multiplier=1.0,
        accountant="rdp (dp-accounting 0.6.0)",
        clip_norm=1.0,
        rounds_accounted=rounds,
        selections={"a": rounds, "b": rounds},
        target_epsilon=8.0 if reached else None,
        budget_reached=reached,
        next_epsilon=9.1234 if reached else None,
    )


def test_each_round_shows_its_epsilon_in_status_and_in_its_event() -> None:
    rounds = [record(0, [], privacy=privacy(0.0, rounds=0)), record(1, privacy=privacy(3.14159))]

    result = plan(observe(status=status_of("Running"), snapshot=store(rounds)))

    last = result.status.last_round
    assert last is not None
    assert last.epsilon == 3.142
    assert [h.epsilon for h in result.status.history] == [0.0, 3.142]
    assert status.to_wire(result.status)["lastRound"]["epsilon"] == 3.142  # the column's path
    assert messages(result, "RoundCommitted") == [
        "round 1/3 committed: 3 participants, accuracy 0.5, loss 0.5, epsilon 3.142"
    ]


def test_a_job_without_differential_privacy_shows_no_epsilon() -> None:
    result = plan(observe(status=status_of("Running"), snapshot=store([record(0), record(1)])))

    assert result.status.last_round is not None
    assert result.status.last_round.epsilon is None
    assert "epsilon" not in status.to_wire(result.status)["lastRound"]


def test_the_round_that_reaches_the_budget_is_announced() -> None:
    rounds = [record(0, []), record(1, privacy=privacy(7.5, reached=True))]

    result = plan(observe(status=status_of("Running"), snapshot=store(rounds)))

    [text] = messages(result, "PrivacyBudgetReached")
    assert "stopped after round 1 of 3 at epsilon 7.5" in text
    assert "strategy.dp.targetEpsilon 8" in text


def test_the_budget_ending_the_job_is_a_success_that_says_so() -> None:
    spec = make_spec()
    jobs = running_jobs(spec, aggregator=child("aggregator", complete=True))
    done = final(rounds=1, privacy=privacy(7.5, reached=True))

    result = plan(
        observe(spec, status=status_of("Running"), jobs=jobs, snapshot=store(final_record=done))
    )

    assert result.status.phase == "Succeeded"
    assert "Succeeded" in reasons(result)
    succeeded = status.condition(result.status, "Succeeded")
    assert succeeded is not None
    assert succeeded.reason == "PrivacyBudgetReached"
    assert "epsilon 7.5 at delta 1e-05" in succeeded.message
    assert "privacy budget reached: stopped after round 1 of 3" in succeeded.message
    assert "Failed" not in reasons(result)
