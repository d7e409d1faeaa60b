"""The plot of ``fedkube plot`` from records held in memory (odd cases the real runs avoid)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from fedcore import layout
from fedcore.history import NO_UPDATE_TIMES, History
from fedcore.run_plot import build_figure
from fedcore.spec import FederatedJob, parse_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job() -> FederatedJob:
    return parse_job(
        {
            "apiVersion": "fedkube.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "odd"},
            "spec": {
                "rounds": 2,
                "task": {"entrypoint": "fedcore.tasks.synthetic:task"},
                "clients": [{"name": "a"}, {"name": "b"}],
            },
        }
    )


def record(
    r: int, metrics: dict[str, float], client_metrics: dict[str, dict[str, float]]
) -> layout.RoundRecord:
    return layout.RoundRecord(
        round=r,
        participants=sorted(client_metrics),
        metrics=metrics,
        client_metrics=client_metrics,
        model_key=layout.global_key(r),
        model_sha256="0" * 64,
        started_at=T0 + timedelta(seconds=10 * r),
        committed_at=T0 + timedelta(seconds=10 * r + 4),
        closed_by="initial" if r == 0 else "all-reported",
    )


def test_records_with_dropped_non_finite_metrics_plot_as_gaps_without_error() -> None:
    records = [
        record(0, {"loss": math.nan, "accuracy": 0.1}, {}),
        record(
            1, {"loss": 0.5, "accuracy": math.inf}, {"a": {"loss": math.nan}, "b": {"loss": 0.7}}
        ),
        record(2, {"loss": 0.4, "accuracy": 0.8}, {"a": {"loss": 0.3}, "b": {"loss": -math.inf}}),
    ]
    assert records[0].dropped_metrics == {"loss": "nan"}

    fig = build_figure(History(job(), records))

    ax_loss, ax_acc, ax_clients, ax_durations, ax_stragglers, ax_notes = fig.axes
    loss = list(ax_loss.get_lines()[0].get_ydata())
    assert math.isnan(loss[0])
    assert loss[1:] == [0.5, 0.4]
    assert math.isnan(list(ax_acc.get_lines()[0].get_ydata())[1])
    clients = {line.get_label(): list(line.get_ydata()) for line in ax_clients.get_lines()}
    assert math.isnan(clients["a"][0])
    assert clients["a"][1] == 0.3
    assert clients["b"][0] == 0.7
    assert math.isnan(clients["b"][1])
    assert [bar.get_height() for bar in ax_durations.patches] == [4.0, 4.0]
    assert ax_stragglers.get_lines() == []
    notes = ax_notes.texts[0].get_text()
    assert NO_UPDATE_TIMES in notes
    assert "non-finite metrics dropped: 4" in notes
    assert "final record: not yet" in notes
