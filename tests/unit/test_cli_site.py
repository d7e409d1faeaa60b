"""The site commands' command lines: a pod's and a site's ``fedkube client`` do not mix, and
``fedkube site policy`` prints a site's store policy from a job file, refusing a non-site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedcore.cli import main
from fedcore.credentials import Role, session_policy
from fedcore.exitcodes import EXIT_CONFIG, EXIT_OK

JOB = {
    "apiVersion": "fedkube.io/v1alpha1",
    "kind": "FederatedJob",
    "metadata": {"name": "tiny"},
    "spec": {
        "rounds": 1,
        "task": {"entrypoint": "fedcore.tasks.digits:task"},
        "storage": {"endpoint": "http://s3:9000", "bucket": "fl-runs", "prefix": "runs/tiny/"},
        "clients": [{"name": "a"}, {"name": "site-b", "site": {}}],
    },
}


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["client", "--bundle", "b.json", "--job", "j.yaml"],
        ["client", "--job", "j.yaml"],
        ["client", "--job", "j.yaml", "--client", "a", "--nproc-per-node", "2"],
    ],
)
def test_client_command_lines_that_mix_a_pod_and_a_site_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)

    assert code == EXIT_CONFIG
    assert "--bundle" in capsys.readouterr().err


def test_a_missing_bundle_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["client", "--bundle", str(tmp_path / "none.json"), "--nproc-per-node", "1"])

    assert code == EXIT_CONFIG
    assert f"cannot read the join bundle {tmp_path / 'none.json'}" in capsys.readouterr().err


def test_site_policy_prints_the_sites_client_policy(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["site", "policy", "tiny", "site-b", "--job-file", str(job_file)])

    assert code == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed == session_policy("fl-runs", "runs/tiny/", Role.for_client("site-b"))


@pytest.mark.parametrize(
    ("job", "client", "words"),
    [
        ("tiny", "a", "client 'a' of job 'tiny' is not a site"),
        ("other", "site-b", "holds job 'tiny', not 'other'"),
        ("tiny", "nobody", "no client named 'nobody'"),
    ],
)
def test_site_policy_refuses_what_has_no_site_policy(
    job_file: Path, job: str, client: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["site", "policy", job, client, "--job-file", str(job_file)])

    assert code == EXIT_CONFIG
    assert words in capsys.readouterr().err
