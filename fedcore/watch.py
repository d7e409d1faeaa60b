"""``fedkube watch``: a live terminal view of a job, read from its store's verified records.

One frame: the job and its progress, the metric curve (a sparkline of test accuracy and
loss per round), the latest rounds, each client's state and the rejections. A client's
state comes from the newest record and the round now open: ``participated`` (folded into
the newest round), ``rejected`` (with the reason), ``late``, ``excluded`` (with why, from
``control/excluded.json``), ``uploaded`` (its update for the open round is in the store),
``waiting`` (selected for the open round, nothing uploaded yet) or ``not selected``.
Restarts are not recorded in the store: for a cluster job (``fedkube watch NAME``,
``fedcore.cluster_view``) the view adds the FederatedJob's phase, newest condition and each
client's restarts from its status; a local store's view says they are not known. The view
refreshes until the final record appears or Ctrl-C; ``--once`` prints one frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fedcore import layout
from fedcore.cluster_view import ClusterTarget, open_cluster_job, restarts, status_line
from fedcore.history import History, extend_history
from fedcore.progress import round_line
from fedcore.store import ObjectStore

SHOWN_ROUNDS = 8
"""Latest rounds in the rounds table (the sparkline covers all)."""
SPARKS = "▁▂▃▄▅▆▇█"
FINISHED_PHASES = ("Succeeded", "Failed")
"""FederatedJob phases after which a cluster job's view stops refreshing."""
RESTARTS_UNKNOWN = "restarts: not recorded in the store (fedkube watch NAME shows a cluster job's)"


def sparkline(values: Sequence[float]) -> str:
    """One block per value scaled between the finite minimum and maximum; a space for a
    value the record dropped as non-finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return " " * len(values)
    low, high = min(finite), max(finite)
    span = high - low
    marks = []
    for v in values:
        if not math.isfinite(v):
            marks.append(" ")
        else:
            step = 0 if span == 0 else round((v - low) / span * (len(SPARKS) - 1))
            marks.append(SPARKS[step])
    return "".join(marks)


def client_states(history: History, store: ObjectStore | None) -> dict[str, str]:
    """Each client's state as the newest record and the open round tell it."""
    last = history.records[-1] if history.records else None
    states: dict[str, str] = {}
    rejected = {u.client: u.reason for u in last.rejected} if last else {}
    late = {u.client: u.round for u in last.late} if last else {}
    open_round = last.next if last is not None and history.final is None else None
    for client in (c.name for c in history.job.spec.clients):
        if client in history.excluded:
            states[client] = f"excluded: {history.excluded[client]}"
        elif client in rejected:
            states[client] = f"rejected in round {last.round if last else '?'}: {rejected[client]}"
        elif client in late:
            states[client] = f"late (update for round {late[client]})"
        elif open_round is not None and client in open_round.selected:
            key = layout.manifest_key(open_round.round, client)
            uploaded = store is not None and store.exists(key)
            states[client] = (
                f"uploaded for round {open_round.round}"
                if uploaded
                else f"waiting (round {open_round.round})"
            )
        elif last is not None and client in last.participants:
            states[client] = f"participated in round {last.round}"
        elif open_round is not None:
            states[client] = f"not selected for round {open_round.round}"
        else:
            states[client] = "-"
    return states


def frame(
    history: History, store: ObjectStore | None, status: dict[str, Any] | None = None
) -> RenderableType:
    """One frame of the view; ``status``: a cluster job's FederatedJob status."""
    job = history.job
    total = job.spec.rounds
    records = history.records
    trained = max((r.round for r in records), default=-1)
    if history.final is not None:
        progress = f"finished {history.final.rounds} rounds"
    elif records:
        progress = f"{trained} of {total} rounds committed"
    else:
        progress = "no round committed yet"
    if status is None:
        head = Text.assemble((f"job {job.name}", "bold"), f"  {progress}  ({RESTARTS_UNKNOWN})")
    else:
        head = Text.assemble((f"job {job.name}", "bold"), f"  {progress}  {status_line(status)}")
    parts: list[RenderableType] = [head]
    if history.refused:
        parts.append(Text(f"REFUSED {history.refused}", style="bold red"))
    with_metrics = [r for r in records if r.metrics]
    for name in ("accuracy", "loss"):
        values = [r.metrics.get(name, math.nan) for r in with_metrics]
        latest = next((v for v in reversed(values) if math.isfinite(v)), None)
        shown = "-" if latest is None else f"{latest:.4f}"
        parts.append(Text(f"test {name:<8} {sparkline(values)}  {shown}"))
    rounds = Table(title="rounds", show_edge=False)
    rounds.add_column("round")
    for r in records[-SHOWN_ROUNDS:]:
        previous = records[r.round - 1] if r.round > 0 else None
        selected = len(previous.next.selected) if previous and previous.next else None
        rounds.add_row(round_line(r, total, selected))
    parts.append(rounds)
    clients = Table(title="clients", show_edge=False)
    clients.add_column("client")
    clients.add_column("state")
    restarted = restarts(status) if status is not None else None
    if restarted is not None:
        clients.add_column("restarts")
    for client, state in client_states(history, store).items():
        style = "red" if state.startswith(("rejected", "excluded")) else None
        cells = [client, state]
        if restarted is not None:
            cells.append(str(restarted.get(client, 0)))
        clients.add_row(*cells, style=style)
    parts.append(clients)
    rejections = [(r.round, u) for r in records for u in r.rejected]
    if rejections:
        table = Table(title="rejected updates", show_edge=False)
        for column in ("round", "client", "reason", "detail"):
            table.add_column(column)
        for round_, u in rejections[-SHOWN_ROUNDS:]:
            table.add_row(str(round_), u.client, u.reason, u.detail[:120])
        parts.append(table)
    return Group(*parts)


def watch_job(
    run_dir: Path | None,
    job_path: Path | None,
    *,
    once: bool,
    interval: float,
    out: TextIO,
    cluster: ClusterTarget | None = None,
    endpoint: str | None = None,
) -> int:
    """``fedkube watch``: refresh until the final record appears (0), Ctrl-C (130) or a
    record that does not verify (1). ``cluster``: a FederatedJob read through kubectl."""
    from fedcore.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
    from fedcore.runner import commit_verifier, open_for_reading

    if cluster is not None:
        remote = open_cluster_job(cluster, endpoint)
        job, store, verifier = remote.job, remote.store, remote.verifier
        status_now = remote.status
    else:
        job, run, store = open_for_reading(run_dir, job_path)
        verifier = commit_verifier(run)
        status_now = None

    status: dict[str, Any] | None = None

    def draw() -> RenderableType:
        nonlocal status
        status = status_now() if status_now is not None else None
        return frame(history, store, status)

    def ended() -> bool:
        """A local run ends with its final record; a cluster job when its phase says so
        (the operator sees the final record a resync later, or fails the job without one)."""
        if history.refused is not None:
            return True
        if status is None:
            return history.final is not None
        return status.get("phase") in FINISHED_PHASES

    history = extend_history(History(job), store, verifier, arrivals=False)
    console = Console(file=out)
    if once:
        console.print(draw())
        return EXIT_FAILED if history.refused else EXIT_OK
    try:
        with Live(draw(), console=console, auto_refresh=False) as live:
            while not ended():
                time.sleep(interval)
                extend_history(history, store, verifier, arrivals=False)
                live.update(draw(), refresh=True)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    failed = history.refused is not None or (status or {}).get("phase") == "Failed"
    return EXIT_FAILED if failed else EXIT_OK
