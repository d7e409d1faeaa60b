"""``fedkube run`` of a dpfedavg digits job: epsilon on every round line and in
``fedkube status``, and ``targetEpsilon`` ending the run, successfully, before it is spent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedcore import layout
from fedcore.privacy import epsilon
from tests.integration.test_run_local import REPO, start_run, tmp, write_job

__all__ = ["tmp"]  # the fixture, shared with test_run_local

pytestmark = pytest.mark.timeout(300)


def test_a_dp_run_reports_epsilon_and_stops_at_its_privacy_budget(tmp: Path) -> None:
    target = (epsilon(1.0, 2, 1e-5) + epsilon(1.0, 3, 1e-5)) / 2
    dp = {"noiseMultiplier": 1.0, "clipNorm": 1.0, "delta": 1e-5, "targetEpsilon": target}
    job = write_job(tmp / "job.yaml", rounds=5, strategy={"name": "dpfedavg", "dp": dp})

    run = start_run(job, tmp / "run")
    code = run.wait()

    out = run.stdout()
    assert code == 0, run.stderr()
    assert "round 1/5  clients 2/2" in out
    assert f"epsilon {epsilon(1.0, 1, 1e-5):.3g}" in out
    assert f"epsilon {epsilon(1.0, 2, 1e-5):.3g}" in out
    assert "round 3/5  clients" not in out
    assert "privacy budget reached: stopped after round 2 of 5" in out
    assert "finished 2 rounds" in out
    assert not run.store.exists(layout.round_record_key(3))
    status = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "status", "--store", str(run.run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert (
        f"privacy: epsilon {epsilon(1.0, 2, 1e-5):.4g} of {target:g} at delta 1e-05"
        in status.stdout
    )
