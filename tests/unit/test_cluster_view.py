"""Reading a cluster job for ``fedkube watch NAME`` / ``fedkube plot NAME``: the status
summary, restarts, and the command line's choice between a cluster job and a local run."""

from __future__ import annotations

from typing import Any

import pytest

from fedcore.cli import main
from fedcore.cluster_view import ClusterTarget, ClusterUnreachable, restarts, status_line


@pytest.mark.parametrize(
    ("status", "line"),
    [
        pytest.param({}, "Pending", id="no status yet"),
        pytest.param({"phase": "Running"}, "Running", id="a phase without conditions"),
        pytest.param(
            {
                "phase": "Succeeded",
                "conditions": [
                    {
                        "type": "Created",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "message": "created",
                    },
                    {
                        "type": "Succeeded",
                        "lastTransitionTime": "2026-01-01T00:05:00Z",
                        "message": "10 rounds committed",
                    },
                ],
            },
            "Succeeded: 10 rounds committed",
            id="the newest condition's message follows the phase",
        ),
    ],
)
def test_status_line_leads_with_the_phase(status: dict[str, Any], line: str) -> None:
    assert status_line(status) == line


def test_restarts_come_from_the_clients_status() -> None:
    status = {"clients": {"a": {"restarts": 2}, "b": {}, "c": "garbage", "d": {"restarts": "x"}}}

    assert restarts(status) == {"a": 2, "b": 0, "d": 0}
    assert restarts({"clients": []}) == {}


def test_a_missing_kubectl_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("KUBECTL", raising=False)

    with pytest.raises(ClusterUnreachable, match=r"kubectl is not on PATH \(set \$KUBECTL"):
        ClusterTarget("digits").kubectl("get", "fj")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["watch"], "give exactly one of NAME", id="no job named"),
        pytest.param(
            ["plot", "digits", "--store", "runs/x"], "got NAME and --store", id="two sources"
        ),
        pytest.param(
            ["watch", "--store", "runs/x", "-n", "ns"],
            "--namespace: applies to a cluster job",
            id="cluster flags on a local run",
        ),
    ],
)
def test_the_command_line_names_what_is_wrong_with_the_job_source(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)

    assert code != 0
    assert words in capsys.readouterr().err
