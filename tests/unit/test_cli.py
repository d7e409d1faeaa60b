"""The ``fedkube`` command line: clear messages and exit codes, no traceback for user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcore import layout
from fedcore.cli import main
from fedcore.commit_signing import CommitSigner, load_signer
from fedcore.errors import FedcoreError, ObjectNotFound, RoundProtocolError, SpecError, TaskError
from fedcore.exitcodes import EXIT_BROKEN_PIPE, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, exit_code_for
from fedcore.runner import RunDir, write_commit_key
from fedcore.spec import job_prefix, load_job
from fedcore.store import LocalStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD_JOB = """\
apiVersion: fedkube.io/v1alpha1
kind: FederatedJob
metadata: {name: tiny}
spec:
  rounds: 2
  task: {entrypoint: "fedcore.tasks.digits:task", config: {hidden: 8}}
  clients: [{name: a}, {name: b, procsPerReplica: 2}]
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_accepts_the_example_job(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(EXAMPLES / "digits.yaml")])

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "ok" in out
    assert "3 clients" in out
    assert "10 rounds" in out
    assert "fedcore.tasks.digits:task (loads)" in out


def test_validate_accepts_the_differential_privacy_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["validate", str(EXAMPLES / "digits-dp.yaml")])

    assert code == EXIT_OK
    assert "strategy dpfedavg" in capsys.readouterr().out


def test_validate_names_every_bad_field_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = GOOD_JOB.replace("rounds: 2", "rounds: 0").replace("name: b", "name: B_b")

    code = main(["validate", str(write(tmp_path, bad))])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "spec.rounds" in err
    assert "spec.clients[1].name" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("entrypoint", "words"),
    [
        pytest.param(
            "fedcore.tasks.digits:tsak",
            "'fedcore.tasks.digits' has no attribute 'tsak'",
            id="a misspelt attribute",
        ),
        pytest.param(
            "fedcore.tasks.digits:NUM_CLASSES",
            "not a task",
            id="an object that is no task",
        ),
        pytest.param("sys:exit", "names a function that is not a task", id="sys.exit"),
        pytest.param("os:abort", "names a function that is not a task", id="os.abort"),
        pytest.param(
            "fedcore.tasks.digits:DigitsTask.evaluate",
            "names a function that is not a task",
            id="a method",
        ),
    ],
)
def test_validate_loads_the_task_and_names_what_is_wrong_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entrypoint: str, words: str
) -> None:
    job = GOOD_JOB.replace("fedcore.tasks.digits:task", entrypoint)

    code = main(["validate", str(write(tmp_path, job))])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "spec.task.entrypoint" in err
    assert words in err


@pytest.mark.parametrize(
    ("module_code", "words"),
    [
        pytest.param("import sys\nsys.exit(3)\n", "it called sys.exit(3)", id="SystemExit"),
        pytest.param("raise RuntimeError('no GPU')\n", "RuntimeError: no GPU", id="error"),
        pytest.param("import nonexistent_dependency\n", "ModuleNotFoundError", id="missing import"),
        pytest.param("class Evil(BaseException):\n    pass\nraise Evil('x')\n", "Evil: x",
                     id="a BaseException of its own"),
    ],
)  # fmt: skip
def test_anything_a_task_module_raises_at_import_becomes_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    module_code: str,
    words: str,
) -> None:
    module = f"broken_{tmp_path.name.replace('-', '_')}"  # a fresh module for each case
    (tmp_path / f"{module}.py").write_text(module_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = GOOD_JOB.replace("fedcore.tasks.digits:task", f"{module}:task")

    code = main(["validate", str(write(tmp_path, job))])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert f"spec.task.entrypoint (line 6): '{module}:task': importing module" in err
    assert words in err


def test_validate_accepts_a_task_that_needs_torch_where_torch_is_not_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"needs_torch_{tmp_path.name.replace('-', '_')}"
    missing = "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    (tmp_path / f"{module}.py").write_text(missing)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = GOOD_JOB.replace("fedcore.tasks.digits:task", f"{module}:task")

    code = main(["validate", str(write(tmp_path, job))])

    assert code == EXIT_OK
    assert "not loaded: the runtime (torch) is not installed here" in capsys.readouterr().out


def test_validate_accepts_a_task_whose_module_only_the_runtime_image_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = GOOD_JOB.replace("fedcore.tasks.digits:task", "hospital_models.xray:task")

    code = main(["validate", str(write(tmp_path, job))])

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "not loaded: module 'hospital_models.xray' is not importable here" in out


def test_validate_of_a_missing_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["validate", str(tmp_path / "nope.yaml")])

    assert code == EXIT_CONFIG
    assert "cannot read" in capsys.readouterr().err


def test_validate_without_a_file_or_schema_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate"]) == EXIT_CONFIG
    assert "--schema" in capsys.readouterr().err


def test_schema_is_printed_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", "--schema"])

    schema = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert "spec" in schema["properties"]


def test_run_with_an_invalid_job_exits_2_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = GOOD_JOB.replace("entrypoint:", "entrypont:")

    code = main(["run", str(write(tmp_path, bad)), "--store", str(tmp_path / "run")])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "spec.task.entrypont" in err
    assert not (tmp_path / "run").exists()


def test_status_of_a_folder_that_is_no_run_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--store", str(tmp_path)])

    assert code == EXIT_CONFIG
    assert "not a run directory" in capsys.readouterr().err


def status_run(tmp_path: Path) -> tuple[Path, LocalStore, CommitSigner]:
    """A run directory as `fedkube run` leaves it: the job, its commit key pair, a store."""
    job_file = write(tmp_path, GOOD_JOB)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.job_file.write_text(job_file.read_text())
    write_commit_key(run)
    job = load_job(job_file)
    return run.root, LocalStore(run.store_root, job_prefix(job)), load_signer(run.commit_key)


def round_record(r: int, accuracy: float) -> layout.RoundRecord:
    return layout.RoundRecord(
        round=r,
        metrics={"loss": 2.3, "accuracy": accuracy},
        model_key=layout.global_key(r),
        model_sha256="0" * 64,
        started_at=layout.utcnow(),
        closed_by="initial" if r == 0 else "all-reported",
    )


def test_status_lists_committed_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, store, signer = status_run(tmp_path)
    store.put_bytes(
        layout.round_record_key(0), signer.sign("round", round_record(0, 0.1)).to_json()
    )

    code = main(["status", "--store", str(run_dir)])

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "round 0/2  initial model  loss 2.300  acc 0.100" in out
    assert "0 of 2 rounds committed" in out


def test_status_refuses_a_record_the_aggregator_did_not_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, store, signer = status_run(tmp_path)
    store.put_bytes(
        layout.round_record_key(0), signer.sign("round", round_record(0, 0.1)).to_json()
    )
    forger = CommitSigner(Ed25519PrivateKey.generate())
    store.put_bytes(
        layout.round_record_key(1), forger.sign("round", round_record(1, 0.99)).to_json()
    )

    code = main(["status", "--store", str(run_dir)])

    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert (
        "round 1/2  REFUSED: refused commit record rounds/000001/round.json (bad-signature)" in out
    )
    assert signer.fingerprint in out
    assert "acc 0.990" not in out
    assert "0 of 2 rounds committed" in out


def test_status_of_a_run_without_its_public_key_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _, _ = status_run(tmp_path)
    (run_dir / "commit-key" / "public.pem").unlink()

    code = main(["status", "--store", str(run_dir)])

    assert code == EXIT_CONFIG
    assert "no public.pem" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(SpecError([("spec.rounds", "bad")]), EXIT_CONFIG, id="spec error"),
        pytest.param(TaskError("no module"), EXIT_CONFIG, id="task error"),
        pytest.param(RoundProtocolError("two commits"), EXIT_FAILED, id="protocol error"),
        pytest.param(ObjectNotFound("gone"), EXIT_FAILED, id="store error"),
    ],
)
def test_user_errors_exit_2_and_runtime_failures_exit_1(error: FedcoreError, code: int) -> None:
    assert exit_code_for(error) == code


def test_validate_checks_every_document_naming_its_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = GOOD_JOB.replace("name: tiny", "name: tiny-b").replace("rounds: 2", "rounds: 0")

    code = main(["validate", str(write(tmp_path, GOOD_JOB + "---\n" + second))])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "  - spec.rounds (document 1, line 13): must be >= 1 (got 0)" in err


def test_validate_refuses_duplicate_keys_naming_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["validate", str(write(tmp_path, GOOD_JOB + "  rounds: 5\n"))])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "spec.rounds (line 8): duplicate key 'rounds' (lines 5 and 8)" in err


def test_yaml_errors_name_the_file_and_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD_JOB.replace("rounds: 2", "rounds: [2"))

    code = main(["validate", str(path)])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert f"{path}: invalid FederatedJob" in err
    assert "<file> (line 6): not valid YAML" in err
    assert "<unicode string>" not in err


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``fedkube status ... | head``: no traceback when the pipe closes under the output."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE

    done = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "validate", str(EXAMPLES / "digits.yaml")],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    os.close(write_end)

    assert done.returncode == EXIT_BROKEN_PIPE
    assert "Traceback" not in done.stderr
