"""The frames of ``fedkube watch`` from records held in memory: client states and curves."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta

from rich.console import Console

from fedcore import layout
from fedcore.history import History
from fedcore.spec import FederatedJob, parse_job
from fedcore.watch import client_states, frame, sparkline

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(clients: list[str]) -> FederatedJob:
    return parse_job(
        {
            "apiVersion": "fedkube.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "seen"},
            "spec": {
                "rounds": 3,
                "task": {"entrypoint": "fedcore.tasks.synthetic:task"},
                "clients": [{"name": c} for c in clients],
            },
        }
    )


def record(r: int, participants: list[str], **extra: object) -> layout.RoundRecord:
    return layout.RoundRecord.model_validate(
        {
            "round": r,
            "participants": participants,
            "model_key": layout.global_key(r),
            "model_sha256": "0" * 64,
            "started_at": T0 + timedelta(seconds=10 * r),
            "committed_at": T0 + timedelta(seconds=10 * r + 3),
            "closed_by": "initial" if r == 0 else "all-reported",
            **extra,
        }
    )


def render(history: History) -> str:
    out = io.StringIO()
    Console(file=out, width=160).print(frame(history, None))
    return out.getvalue()


def test_sparkline_scales_between_finite_extremes_and_leaves_gaps_for_dropped_values() -> None:
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([0.2, math.nan, 0.2]) == "▁ ▁"
    assert sparkline([math.inf]) == " "
    assert sparkline([]) == ""


def test_client_states_name_participation_rejection_lateness_exclusion_and_waiting() -> None:
    nxt = {"round": 2, "selected": ["a", "b", "c"], "deadline": T0 + timedelta(minutes=5)}
    records = [
        record(0, [], next={**nxt, "round": 1}),
        record(
            1,
            ["a"],
            rejected=[{"client": "b", "reason": "bad-signature", "detail": "HMAC mismatch"}],
            late=[{"client": "c", "round": 0}],
            next=nxt,
        ),
    ]
    history = History(job(["a", "b", "c", "d", "e"]), records, excluded={"d": "failed 3 times"})

    states = client_states(history, None)

    assert states == {
        "a": "waiting (round 2)",
        "b": "rejected in round 1: bad-signature",
        "c": "late (update for round 0)",
        "d": "excluded: failed 3 times",
        "e": "not selected for round 2",
    }


def test_frame_shows_progress_rejections_and_a_curve_with_dropped_metrics() -> None:
    records = [
        record(0, [], metrics={"accuracy": 0.1, "loss": math.nan}),
        record(
            1,
            ["a"],
            metrics={"accuracy": 0.6, "loss": 1.0},
            rejected=[{"client": "b", "reason": "bad-signature", "detail": "HMAC mismatch"}],
        ),
    ]

    shown = render(History(job(["a", "b"]), records))

    assert "1 of 3 rounds committed" in shown
    assert "test accuracy ▁█  0.6000" in shown
    assert "test loss      ▁  1.0000" in shown
    assert "participated in round 1" in shown
    assert "HMAC mismatch" in shown
