"""The validate half of the parity corpus: every invalid job file fails, naming its field;
every valid one passes (the e2e parity test holds the API server to the same files)."""

from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel

from fedcore import spec
from fedcore.cli import main
from fedcore.exitcodes import EXIT_CONFIG
from tests.corpus import CorpusFile, invalid_files, valid_files

INVALID = invalid_files()
VALID = valid_files()
MODEL_NAMES = [  # the kind, FederatedJob, is a word of the user's too
    n
    for n, c in inspect.getmembers(spec, inspect.isclass)
    if issubclass(c, BaseModel) and n != spec.KIND
]
PYDANTIC_WORDS = ["Input should", "instance of", "entries)", "<unicode string>", "Value error"]


def test_corpus_covers_every_group_of_rules() -> None:
    groups = {f.rule.split(":")[0] for f in INVALID}

    assert len(INVALID) >= 60
    assert {"types", "ranges", "names", "unknown fields", "enums", "cross-field", "storage",
            "env", "resources", "documents", "task"} <= groups  # fmt: skip
    assert all(f.field for f in INVALID)


@pytest.mark.parametrize("job", INVALID, ids=[f.path.stem for f in INVALID])
def test_validate_refuses_invalid_job_naming_the_field(
    job: CorpusFile, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["validate", str(job.path)])

    err = capsys.readouterr().err
    assert code == EXIT_CONFIG, err
    assert f"  - {job.field}" in err, err
    assert str(job.path) in err
    assert "line " in err, err
    assert not [w for w in MODEL_NAMES + PYDANTIC_WORDS if w in err], err


@pytest.mark.parametrize("job", VALID, ids=[f.path.stem for f in VALID])
def test_validate_accepts_valid_job(job: CorpusFile, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(job.path)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert ": ok: FederatedJob" in out
