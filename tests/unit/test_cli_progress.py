"""What ``fedkube run`` and ``fedkube status`` print: round lines, the summary, the plot, and the
log excerpt quoted when a process fails."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fedcore import layout
from fedcore.progress import round_line, summary_lines, write_plot
from fedcore.runner import describe_exit, log_tail

T0 = layout.utcnow()


def record(r: int, **kw: Any) -> layout.RoundRecord:
    values: dict[str, Any] = {
        "round": r,
        "participants": ["a", "b", "c"],
        "metrics": {"loss": 0.41234, "accuracy": 0.9181},
        "model_key": layout.global_key(r),
        "model_sha256": "ab" * 32,
        "started_at": T0,
        "committed_at": T0 + timedelta(seconds=2.1),
    }
    values.update(kw)
    return layout.RoundRecord(**values)


def test_round_line_shows_round_clients_loss_accuracy_and_duration() -> None:
    assert round_line(record(3), 10, 3) == "round  3/10  clients 3/3  loss 0.412  acc 0.918  2.1s"


def test_round_line_names_rejected_and_late_updates_and_a_deadline_close() -> None:
    line = round_line(
        record(
            4,
            participants=["a"],
            closed_by="deadline",
            rejected=[layout.RejectedUpdate(client="b", reason="non-finite", detail="NaN")],
            late=[layout.LateUpdate(client="c", round=3)],
        ),
        10,
        3,
    )

    assert "clients 1/3" in line
    assert "(closed at deadline)" in line
    assert "rejected: b (non-finite)" in line
    assert "late: c (round 3)" in line


def test_initial_round_line_says_so_and_missing_metrics_show_a_dash() -> None:
    line = round_line(record(0, participants=[], closed_by="initial", metrics={}), 5, None)

    assert line.startswith("round 0/5  initial model  loss -  acc -")


def test_summary_gives_metrics_model_and_plot(tmp_path: Path) -> None:
    final = layout.FinalRecord(rounds=10, model_sha256="cd" * 32, metrics={"accuracy": 0.97})

    lines = summary_lines(final, "file:///m.safetensors", tmp_path / "p.png", 41.5)

    assert lines[0] == "finished 10 rounds in 41.5s"
    assert "accuracy 0.9700" in lines[1]
    assert "model: file:///m.safetensors" in lines[2]
    assert any(line.endswith("p.png") for line in lines)


def test_plot_is_a_png_of_every_round(tmp_path: Path) -> None:
    records = [record(r, metrics={"loss": 1.0 / (r + 1), "accuracy": r / 10}) for r in range(4)]

    path = write_plot(records, tmp_path / "metrics.png", "test")

    assert path == tmp_path / "metrics.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_plot_without_metrics(tmp_path: Path) -> None:
    assert write_plot([record(0, metrics={})], tmp_path / "m.png", "t") is None


LAUNCHER_FAILURE = """\
2026-01-01 b rank 0 ERROR fedcore.client: client 'b' failed
Traceback (most recent call last):
  File "task.py", line 3, in train
RuntimeError: the real cause
E0101 failed (exitcode: 1) local_rank: 0 (pid: 1) of binary: python
2026-01-01 b pod ERROR fedcore.client: client 'b': a process of the group failed:

============================================================
fedcore.client FAILED
------------------------------------------------------------
Root Cause (first observed failure):
  exitcode  : 1 (pid: 1)
============================================================
"""


def test_log_tail_skips_the_launchers_summary_banner_to_show_the_cause(tmp_path: Path) -> None:
    log = tmp_path / "b-0.log"
    log.write_text(LAUNCHER_FAILURE)

    tail = log_tail(log, lines=4)

    assert "RuntimeError: the real cause" in tail
    assert "=====" not in tail
    assert all(line.startswith("    ") for line in tail.splitlines())


def test_log_tail_of_a_missing_log_says_so(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "none.log") == "    (no log)"


def test_exit_descriptions_name_signals() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "killed by SIGKILL"
