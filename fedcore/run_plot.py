"""``fedkube plot``: one figure of a job from its store's verified records.

Six panels: test loss and test accuracy per round (the same drawing as the plot
``fedkube run`` writes), each client's training loss per round, round durations (opening to
commit), stragglers (seconds from a round's opening to each participant's update, from the
update manifests: see ``fedcore.history``) and a text panel saying what the records held.
A metric a record dropped as non-finite is a gap in its line, not an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, TextIO

from fedcore.cluster_view import ClusterTarget, open_cluster_job
from fedcore.errors import SpecError
from fedcore.history import NO_UPDATE_TIMES, UPDATE_TIMES_SOURCE, History, read_history
from fedcore.progress import draw_round_metrics, save_figure

PlotFormat = Literal["png", "svg"]

CLIENT_LOSS_NAMES = ("train_loss", "loss")
"""The client metric drawn per client: the client's ``train_loss`` (what fedkube's client
reports for every task), else a ``loss`` the task reported itself."""


def _client_loss_of(metrics: dict[str, float]) -> float:
    for name in CLIENT_LOSS_NAMES:
        if name in metrics:
            return metrics[name]
    return math.nan


def build_figure(history: History) -> Any:
    """The matplotlib figure of ``history`` (not yet saved)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SpecError(
            [("plot", f"matplotlib is not installed ({e}); install fedkube[plot]")]
        ) from e
    fig, grid = plt.subplots(2, 3, figsize=(14, 7))
    ax_loss, ax_acc, ax_clients = grid[0]
    ax_durations, ax_stragglers, ax_notes = grid[1]
    records = history.records
    draw_round_metrics((ax_loss, ax_acc), records)
    ax_loss.set_title("evaluation loss")
    ax_acc.set_title("evaluation accuracy")
    _client_loss(ax_clients, history)
    _durations(ax_durations, history)
    _stragglers(ax_stragglers, history)
    _notes(ax_notes, history)
    state = "finished" if history.finished else f"{len(records)} records, running or stopped"
    fig.suptitle(f"{history.job.name}: {state}")
    fig.tight_layout()
    return fig


def _clients(history: History) -> list[str]:
    return [c.name for c in history.job.spec.clients]


def _client_loss(ax: Any, history: History) -> None:
    for client in _clients(history):
        points = [
            (r.round, _client_loss_of(r.client_metrics[client]))
            for r in history.records
            if client in r.client_metrics
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", label=client)
    ax.set_title("client training loss")
    ax.set_xlabel("round")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")


def _durations(ax: Any, history: History) -> None:
    trained = [r for r in history.records if r.closed_by != "initial"]
    rounds = [r.round for r in trained]
    seconds = [(r.committed_at - r.started_at).total_seconds() for r in trained]
    colours = ["tab:orange" if r.closed_by == "deadline" else "tab:green" for r in trained]
    ax.bar(rounds, seconds, color=colours)
    ax.set_title("round duration (orange: closed at deadline)")
    ax.set_xlabel("round")
    ax.set_ylabel("seconds, open to commit")
    ax.grid(True, axis="y", alpha=0.3)


def _stragglers(ax: Any, history: History) -> None:
    for client in _clients(history):
        points = [
            (r, seconds[client])
            for r, seconds in sorted(history.arrivals.items())
            if client in seconds
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", linestyle="none", label=client)
    ax.set_title("stragglers: update time after round opened")
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")


def _notes(ax: Any, history: History) -> None:
    ax.axis("off")
    ax.set_title("records")
    rejected = sum(len(r.rejected) for r in history.records)
    late = sum(len(r.late) for r in history.records)
    dropped = sum(len(r.dropped_metrics) for r in history.records)
    lines = [
        f"rounds committed: {len(history.records)} of {history.job.spec.rounds + 1}",
        f"final record: {'yes' if history.finished else 'not yet'}",
        f"updates rejected: {rejected}, late: {late}",
        f"non-finite metrics dropped: {dropped}",
        UPDATE_TIMES_SOURCE if any(history.arrivals.values()) else NO_UPDATE_TIMES,
    ]
    if history.refused:
        lines.append(f"REFUSED {history.refused[:80]}")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9)


def plot_job(
    run_dir: Path | None,
    job_path: Path | None,
    out_path: Path | None,
    fmt: PlotFormat,
    out: TextIO,
    *,
    cluster: ClusterTarget | None = None,
    endpoint: str | None = None,
) -> int:
    """``fedkube plot``: write the figure of a job's records; 1 when a record was refused.
    ``cluster``: a FederatedJob read through kubectl (the figure goes to the current folder
    unless ``out_path`` says otherwise)."""
    from fedcore.exitcodes import EXIT_FAILED, EXIT_OK
    from fedcore.runner import commit_verifier, open_for_reading

    if cluster is not None:
        remote = open_cluster_job(cluster, endpoint)
        job, store, verifier, folder = remote.job, remote.store, remote.verifier, Path.cwd()
    else:
        job, run, store = open_for_reading(run_dir, job_path)
        verifier, folder = commit_verifier(run), run.root
    history = read_history(store, job, verifier)
    if not history.records:
        print(f"{job.name}: no round committed yet, nothing to plot", file=out)
        return EXIT_FAILED if history.refused else EXIT_OK
    path = out_path if out_path is not None else folder / f"{job.name}-rounds.{fmt}"
    save_figure(build_figure(history), path, fmt)
    if history.refused:
        print(f"REFUSED {history.refused}; plotted the rounds before it", file=out)
    print(f"plot: {path}", file=out)
    return EXIT_FAILED if history.refused else EXIT_OK
