"""Failures mid-job: a client pod killed and the operator killed, and the job still succeeds,
with no duplicate Jobs, no round committed (or announced) twice, and the restart counted."""

from __future__ import annotations

import json
import signal
from collections import Counter
from typing import Any

import pytest

from fedcore import layout
from tests.fixtures.operator import FedJobs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

NAME = "resilient"
ROUNDS = 8
KILLED_CLIENT = "hospital-b"


def jobs_by_name(fedjobs: FedJobs) -> dict[str, str]:
    """Job name -> uid of the job's Jobs."""
    items = json.loads(
        fedjobs.kubectl("get", "jobs", "-l", f"fedkube.io/job={NAME}", "-o", "json")
    )["items"]
    return {j["metadata"]["name"]: j["metadata"]["uid"] for j in items}


def operator_pods(fedjobs: FedJobs) -> list[dict[str, Any]]:
    out = fedjobs.cluster.run_kubectl(
        "get", "pods", "-n", fedjobs.operator.namespace, "-o", "json",
        "-l", "app.kubernetes.io/name=fedkube").stdout  # fmt: skip
    return list(json.loads(out)["items"])


def test_killing_a_client_pod_and_the_operator_mid_job_still_succeeds(fedjobs: FedJobs) -> None:
    fedjobs.apply(fedjobs.example(name=NAME, rounds=ROUNDS))
    fedjobs.wait_for_commit(NAME, 1)
    # Hold the killed client's group in place (SIGSTOP) so that the job cannot finish while
    # the test acts, however fast its rounds are: the round in progress waits for that client
    # (its deadline is minutes away), so at most the round it already sent its update for
    # can still be committed.
    assert fedjobs.signal_client(NAME, KILLED_CLIENT, signal.SIGSTOP) >= 2
    held = fedjobs.committed_rounds(NAME)
    assert held[-1] < ROUNDS, f"the job got to round {held[-1]} before the client was held"
    before = jobs_by_name(fedjobs)
    assert sorted(before) == sorted(
        [f"{NAME}-aggregator", *(f"{NAME}-hospital-{c}" for c in "abc")]
    )

    # The operator dies (no graceful shutdown) and, before its Deployment has brought up a
    # fresh one, a member of the held group is deleted; then the group goes on (SIGCONT).
    # DDP cannot go on without the member, so the job can only finish once an operator
    # restarts the whole group: whichever one sees the failure first, the restart must
    # happen and be counted exactly once.
    (old_operator,) = operator_pods(fedjobs)
    fedjobs.cluster.run_kubectl(
        "delete", "pod", old_operator["metadata"]["name"], "-n", fedjobs.operator.namespace,
        "--grace-period=0", "--force")  # fmt: skip
    victim = json.loads(fedjobs.kubectl(
        "get", "pods", "-o", "json",
        "-l", f"fedkube.io/job={NAME},fedkube.io/client={KILLED_CLIENT}"))["items"][0]  # fmt: skip
    fedjobs.kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")
    fedjobs.signal_client(NAME, KILLED_CLIENT, signal.SIGCONT)

    status = fedjobs.wait_for_phase(NAME, "Succeeded", "Failed", timeout=600)

    assert status["phase"] == "Succeeded", fedjobs.explain(NAME)
    new_operators = [p["metadata"]["name"] for p in operator_pods(fedjobs)]
    assert old_operator["metadata"]["name"] not in new_operators
    # No duplicate Jobs: the same four; only the killed client's group was made anew, once.
    after = jobs_by_name(fedjobs)
    assert sorted(after) == sorted(before)
    restarted = f"{NAME}-{KILLED_CLIENT}"
    assert {n: u for n, u in after.items() if n != restarted} == {
        n: u for n, u in before.items() if n != restarted
    }
    assert after[restarted] != before[restarted]
    annotations = json.loads(fedjobs.kubectl("get", "job", restarted, "-o", "json"))["metadata"][
        "annotations"
    ]
    assert annotations["fedkube.io/restarts"] == "1"
    # The restarted group trained again: it took part in the last round.
    assert KILLED_CLIENT in status["history"][-1]["participants"]
    # Every round committed once, announced once.
    assert [h["round"] for h in status["history"]] == list(range(ROUNDS + 1))
    events = fedjobs.events(NAME)
    announced = Counter(int(m.split()[1].split("/")[0]) for r, m in events if r == "RoundCommitted")
    assert announced == Counter(range(1, ROUNDS + 1))
    # The restart was counted once, for the killed client only.
    assert [m for r, m in events if r == "ClientRestarted"] == [
        m for r, m in events if r == "ClientRestarted" and KILLED_CLIENT in m
    ]
    assert len([r for r, _ in events if r == "ClientRestarted"]) == 1
    assert {n: c["restarts"] for n, c in status["clients"].items()} == {
        "hospital-a": 0, "hospital-b": 1, "hospital-c": 0}  # fmt: skip
    # The store holds exactly one commit record per round, and the final one.
    prefix = status["model"]["uri"].removeprefix(f"s3://{fedjobs.minio.bucket}/")
    prefix = prefix.removesuffix(layout.FINAL_MODEL_KEY)
    records = [k for k in fedjobs.store_keys(prefix) if k.endswith("/round.json")]
    assert sorted(records) == sorted(
        [prefix + layout.round_record_key(r) for r in range(ROUNDS + 1)]
        + [prefix + layout.FINAL_RECORD_KEY]
    )
