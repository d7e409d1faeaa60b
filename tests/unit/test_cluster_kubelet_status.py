"""Pod phases and container states follow the kubelet's rules."""

from __future__ import annotations

import pytest

from tests.cluster.kubelet import status as st


def rec(kind: str, exit_code: int = 0, *, pending: bool = False, started: bool = True
        ) -> st.ContainerRecord:  # fmt: skip
    r = st.ContainerRecord("c", "img")
    r.state = st.State(kind, exit_code=exit_code)  # type: ignore[arg-type]
    if kind == "waiting" and started:
        r.last_state = st.State("terminated", exit_code=exit_code)
    r.restart_pending = pending
    return r


@pytest.mark.parametrize(
    ("init", "containers", "policy", "phase"),
    [
        ([], [rec("waiting", started=False)], "Never", "Pending"),
        ([], [rec("running")], "Never", "Running"),
        ([], [rec("terminated", 0)], "Never", "Succeeded"),
        ([], [rec("terminated", 1)], "Never", "Failed"),
        ([], [rec("terminated", 0), rec("running")], "Never", "Running"),
        ([], [rec("terminated", 0), rec("terminated", 2)], "Never", "Failed"),
        ([], [rec("waiting", 1, pending=True)], "OnFailure", "Running"),
        ([], [rec("waiting", 0, pending=True)], "Always", "Running"),
        ([rec("running")], [rec("waiting", started=False)], "Never", "Pending"),
        ([rec("terminated", 1)], [rec("waiting", started=False)], "Never", "Failed"),
        ([rec("waiting", 1, pending=True)], [rec("waiting", started=False)], "OnFailure",
         "Pending"),
        ([rec("terminated", 0)], [rec("running")], "Never", "Running"),
    ],
)  # fmt: skip
def test_pod_phase_follows_the_kubelet(
    init: list[st.ContainerRecord], containers: list[st.ContainerRecord], policy: str, phase: str
) -> None:
    assert st.pod_phase(init, containers, policy) == phase


def test_a_process_killed_by_a_signal_reports_128_plus_the_signal() -> None:
    done = st.terminated(-15, "2026-01-01T00:00:00Z", "fedkube-process://42")

    assert (done.exit_code, done.signal, done.reason) == (143, 15, "Error")
    assert done.to_dict()["terminated"]["containerID"] == "fedkube-process://42"


def test_a_restarting_container_shows_its_last_termination() -> None:
    r = rec("waiting", 3, pending=True)
    r.restart_count = 1

    out = r.to_dict()

    assert out["restartCount"] == 1
    assert out["lastState"]["terminated"]["exitCode"] == 3
    assert out["ready"] is False


def test_conditions_keep_their_transition_time_until_the_status_changes() -> None:
    cond = st.Conditions()
    cond.set("Ready", False, "ContainersNotReady")
    first = cond.to_list()[0]["lastTransitionTime"]
    cond._state["Ready"] = ("False", "earlier", "ContainersNotReady")

    cond.set("Ready", False, "ContainersNotReady")
    assert cond.to_list()[0]["lastTransitionTime"] == "earlier"
    cond.set("Ready", True)
    assert cond.to_list()[0]["status"] == "True"
    assert cond.to_list()[0]["lastTransitionTime"] not in ("earlier", "")
    assert first
