"""What a person sees of a run: one line per committed round, a summary, a plot.

``fedkube run`` and ``fedkube status`` read round records from the store and print them
with these functions, so a live run and a finished one read the same. The plot is a PNG of
loss and accuracy per round written next to the run: a curve says more than ten lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcore.layout import FinalRecord, RoundRecord


def _metric(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f}"


def round_line(record: RoundRecord, total_rounds: int, selected: int | None) -> str:
    """``round  3/10  clients 3/3  loss 0.412  acc 0.918  2.1s`` (+ epsilon with
    differential privacy, rejected/late notes).

    ``selected`` is how many clients the round asked for (from the previous record's
    ``next``); None when unknown.
    """
    width = len(str(total_rounds))
    asked = "?" if selected is None else str(selected)
    if record.closed_by == "initial":
        head = f"round {record.round:>{width}}/{total_rounds}  initial model"
    else:
        head = (
            f"round {record.round:>{width}}/{total_rounds}  "
            f"clients {len(record.participants)}/{asked}"
        )
    line = (
        f"{head}  loss {_metric(record.metrics, 'loss')}  "
        f"acc {_metric(record.metrics, 'accuracy')}  {record.duration_seconds:.1f}s"
    )
    if record.privacy is not None:
        line += f"  epsilon {record.privacy.epsilon:.3g}"
    if record.closed_by == "deadline":
        line += "  (closed at deadline)"
    if record.rejected:
        shown = ", ".join(f"{r.client} ({r.reason})" for r in record.rejected)
        line += f"  rejected: {shown}"
    if record.late:
        shown = ", ".join(f"{u.client} (round {u.round})" for u in record.late)
        line += f"  late: {shown}"
    return line


def header_lines(
    job_name: str, rounds: int, clients: Sequence[str], store_uri: str, logs: Path | None
) -> list[str]:
    lines = [
        f"fedkube: job {job_name!r}, {rounds} rounds, {len(clients)} clients "
        f"({', '.join(clients)})",
        f"  store: {store_uri}",
    ]
    if logs is not None:
        lines.append(f"  logs:  {logs}{'/' if not str(logs).endswith('/') else ''}")
    return lines


def summary_lines(
    final: FinalRecord,
    model_uri: str,
    plot: Path | None,
    elapsed: float | None,
    total_rounds: int | None = None,
) -> list[str]:
    """The last words of a run: final metrics, where the model is, where the plot is."""
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(final.metrics.items()))
    took = f" in {elapsed:.1f}s" if elapsed is not None else ""
    lines = [
        f"finished {final.rounds} rounds{took}",
        f"  final metrics: {metrics or '(none)'}",
        f"  model: {model_uri}",
        f"  model sha256: {final.model_sha256}",
    ]
    privacy = final.privacy
    if privacy is not None:
        budget = "" if privacy.target_epsilon is None else f" of {privacy.target_epsilon:g}"
        lines.insert(
            2,
            f"  privacy: epsilon {privacy.epsilon:.4g}{budget} at delta {privacy.delta:g} "
            f"({privacy.rounds_accounted} rounds accounted, {privacy.accountant})",
        )
        if privacy.budget_reached:
            stop = privacy.stop_message(final.rounds, total_rounds or final.rounds)
            lines.insert(1, f"  {stop}")
    if plot is not None:
        lines.append(f"  plot:  {plot}")
    return lines


def draw_round_metrics(axes: Sequence[Any], records: Sequence[RoundRecord]) -> None:
    """Test loss on ``axes[0]`` and test accuracy on ``axes[1]``, one point per round with
    metrics (a metric a record dropped as non-finite is a gap in its line)."""
    points = [r for r in records if r.metrics]
    rounds = [r.round for r in points]
    for ax, name, colour in ((axes[0], "loss", "tab:red"), (axes[1], "accuracy", "tab:blue")):
        values = [r.metrics.get(name, math.nan) for r in points]
        ax.plot(rounds, values, marker="o", color=colour, label=f"test {name}")
        ax.set_xlabel("round")
        ax.set_ylabel(f"test {name}")
        ax.grid(True, alpha=0.3)


def save_figure(fig: Any, path: Path, fmt: str = "png") -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a file) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{fmt}")
    fig.savefig(tmp, dpi=100, format=fmt)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_plot(records: Sequence[RoundRecord], path: Path, title: str) -> Path | None:
    """Draw loss and accuracy per round into ``path`` (PNG); None when matplotlib is absent
    or there is nothing to draw."""
    if not any(r.metrics for r in records):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    draw_round_metrics(axes, records)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
