"""``fedkube plot`` and ``fedkube watch`` on the store of a real small ``fedkube run``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcore import layout
from fedcore.history import UPDATE_TIMES_SOURCE, History, read_history
from fedcore.run_plot import build_figure
from fedcore.runner import RunDir, commit_verifier, open_run_store
from fedcore.spec import job_prefix, load_job
from fedcore.store import LocalStore
from tests.fixtures.minio import MinioServer
from tests.integration.test_run_local import REPO, Run, start_run, write_job

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("observed")
    run = start_run(write_job(root / "job.yaml", rounds=3), root / "run")
    code = run.wait()
    assert code == 0, run.stderr()
    return run


def history_of(run: Run) -> History:
    job = load_job(run.run_dir / "job.json")
    rundir = RunDir(run.run_dir)
    return read_history(open_run_store(job, rundir), job, commit_verifier(rundir))


def fedkube(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcore.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines_by_label(ax: Any) -> dict[str, Any]:
    return {line.get_label(): line for line in ax.get_lines()}


# ---- plot ----------------------------------------------------------------------------------------


def test_history_of_a_finished_run_holds_every_verified_round_and_update_times(
    finished: Run,
) -> None:
    history = history_of(finished)

    assert [r.round for r in history.records] == [0, 1, 2, 3]
    assert history.finished
    assert history.refused is None
    assert sorted(history.arrivals) == [1, 2, 3]
    assert all(set(seconds) == {"a", "b"} for seconds in history.arrivals.values())


def test_plot_of_a_run_draws_metrics_client_loss_durations_and_stragglers(finished: Run) -> None:
    fig = build_figure(history_of(finished))

    ax_loss, ax_acc, ax_clients, ax_durations, ax_stragglers, ax_notes = fig.axes
    assert ax_loss.get_ylabel() == "test loss"
    assert list(ax_loss.get_lines()[0].get_xdata()) == [0, 1, 2, 3]
    assert ax_acc.get_ylabel() == "test accuracy"
    assert all(0.0 <= y <= 1.0 for y in ax_acc.get_lines()[0].get_ydata())
    clients = lines_by_label(ax_clients)
    assert set(clients) == {"a", "b"}
    assert list(clients["a"].get_xdata()) == [1, 2, 3]
    assert all(0.0 < y < 10.0 for c in ("a", "b") for y in clients[c].get_ydata())
    assert [bar.get_x() + bar.get_width() / 2 for bar in ax_durations.patches] == [1, 2, 3]
    assert all(bar.get_height() > 0 for bar in ax_durations.patches)
    stragglers = lines_by_label(ax_stragglers)
    assert set(stragglers) == {"a", "b"}
    assert list(stragglers["b"].get_xdata()) == [1, 2, 3]
    notes = ax_notes.texts[0].get_text()
    assert UPDATE_TIMES_SOURCE in notes
    assert "final record: yes" in notes


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_plot_command_writes_the_figure_in_the_asked_format(
    finished: Run, tmp_path: Path, fmt: str, magic: bytes
) -> None:
    out = tmp_path / f"rounds.{fmt}"

    result = fedkube("plot", "--store", str(finished.run_dir), "--out", str(out), "--format", fmt)

    assert result.returncode == 0, result.stderr
    assert f"plot: {out}" in result.stdout
    assert out.read_bytes().startswith(magic)
    assert not list(tmp_path.glob("*.tmp.*"))


def test_plot_command_of_a_folder_that_is_no_run_names_the_flag(tmp_path: Path) -> None:
    result = fedkube("plot", "--store", str(tmp_path))

    assert result.returncode == 2
    assert "--store" in result.stderr
    assert "no job.json" in result.stderr


# ---- watch ---------------------------------------------------------------------------------------


def test_watch_once_shows_a_finished_run_its_rounds_clients_and_curve(finished: Run) -> None:
    result = fedkube("watch", "--once", "--store", str(finished.run_dir))

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "job tiny" in out
    assert "finished 3 rounds" in out
    assert "round 3/3  clients 2/2" in out
    assert "participated in round 3" in out
    assert "test accuracy" in out
    assert "restarts: not recorded in the store" in out


def test_watch_of_a_finished_run_shows_it_and_ends_at_once(finished: Run) -> None:
    result = fedkube("watch", "--store", str(finished.run_dir), "--interval", "0.1")

    assert result.returncode == 0, result.stderr
    assert "finished 3 rounds" in result.stdout


@pytest.mark.parametrize("interval", ["0", "-1", "soon", "nan"])
def test_watch_refuses_an_interval_that_is_no_positive_number(finished: Run, interval: str) -> None:
    result = fedkube("watch", "--store", str(finished.run_dir), "--interval", interval)

    assert result.returncode == 2
    assert "--interval" in result.stderr
    assert "not a positive number of seconds" in result.stderr


def test_watch_once_of_a_run_with_a_forged_record_says_refused_and_fails(
    finished: Run, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished.run_dir, copy)
    store = LocalStore(copy / "store", job_prefix(finished.job))
    record = json.loads(store.get_bytes(layout.round_record_key(2)))
    record["participants"] = ["a"]
    store.put_bytes(layout.round_record_key(2), json.dumps(record).encode())

    result = fedkube("watch", "--once", "--store", str(copy))

    assert result.returncode == 1
    assert "REFUSED round 2" in result.stdout
    assert "1 of 3 rounds committed" in result.stdout


def test_plot_of_a_run_with_a_forged_record_plots_the_rounds_before_it_and_fails(
    finished: Run, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished.run_dir, copy)
    store = LocalStore(copy / "store", job_prefix(finished.job))
    record = json.loads(store.get_bytes(layout.round_record_key(3)))
    record["metrics"]["accuracy"] = 1.0
    store.put_bytes(layout.round_record_key(3), json.dumps(record).encode())
    out = tmp_path / "p.png"

    result = fedkube("plot", "--store", str(copy), "--out", str(out))

    assert result.returncode == 1
    assert "REFUSED round 3" in result.stdout
    assert out.read_bytes().startswith(b"\x89PNG")


# ---- a job on S3 ---------------------------------------------------------------------------------


def test_plot_and_watch_read_a_job_whose_store_is_s3(minio: MinioServer, tmp_path: Path) -> None:
    storage = {"endpoint": minio.endpoint, "bucket": minio.bucket, "prefix": "runs/observed/"}
    job_file = write_job(tmp_path / "job.yaml", rounds=2, storage=storage)
    (tmp_path / "runs").mkdir()
    run = start_run(job_file, tmp_path / "runs" / "tiny", env=minio.env())
    assert run.wait() == 0, run.stderr()
    out = tmp_path / "s3.svg"

    plotted = fedkube(
        "plot", "--store", str(run.run_dir), "--out", str(out), "--format", "svg", env=minio.env()
    )
    watched = fedkube("watch", "--once", "--job", str(job_file), cwd=tmp_path, env=minio.env())

    assert not (run.run_dir / "store").exists()
    assert plotted.returncode == 0, plotted.stderr
    assert out.read_text().startswith("<?xml")
    assert watched.returncode == 0, watched.stderr
    assert "finished 2 rounds" in watched.stdout
