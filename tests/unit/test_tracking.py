"""What the aggregator sends to MLflow, and that a tracking server that cannot be reached
never holds the round loop up (the tracker is pointed at a closed port: a real refusal)."""

from __future__ import annotations

import base64
import logging
import time
from datetime import timedelta
from typing import Any

import pytest

from fedcore import layout
from fedcore.spec import FederatedJob, parse_job
from fedcore.tracking import (
    MAX_PARAM_VALUE,
    MlflowTracker,
    NoTracking,
    auth_header,
    fedkube_params,
    metric_key,
    round_metrics,
    tracker_for,
)
from fedop.builders import pods
from tests.cluster.processes import free_port


def make_job(**spec: Any) -> FederatedJob:
    return parse_job(
        {
            "apiVersion": "fedkube.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "digits"},
            "spec": {
                "rounds": 5,
                "task": {"entrypoint": "fedcore.tasks.digits:task", "config": {"hidden": 32}},
                "clients": [{"name": "hospital-a"}, {"name": "hospital-b"}],
                **spec,
            },
        }
    )


def make_record(round_: int = 2) -> layout.RoundRecord:
    start = layout.utcnow()
    return layout.RoundRecord(
        round=round_,
        participants=["hospital-a"],
        num_samples={"hospital-a": 10},
        metrics={"accuracy": 0.5, "loss/test": 1.25},
        client_metrics={"hospital-a": {"train_loss": 0.75}},
        model_key=layout.global_key(round_),
        model_sha256="0" * 64,
        started_at=start,
        committed_at=start + timedelta(seconds=3),
    )


def test_params_are_flat_strings_within_mlflows_limit() -> None:
    job = make_job(
        strategy={"name": "fedavgm", "serverMomentum": 0.9},
        task={"entrypoint": "fedcore.tasks.digits:task", "config": {"note": "x" * 9000}},
    )

    params = fedkube_params(job)

    assert params["strategy.name"] == "fedavgm"
    assert params["strategy.serverMomentum"] == "0.9"
    assert params["rounds"] == "5"
    assert params["clients"] == "hospital-a,hospital-b"
    assert len(params["task.config.note"]) == MAX_PARAM_VALUE
    assert all(isinstance(v, str) for v in params.values())


def test_a_round_logs_evaluation_client_metrics_and_its_shape() -> None:
    metrics = round_metrics(make_record())

    assert metrics == {
        "accuracy": 0.5,
        "loss/test": 1.25,
        "client.hospital-a.train_loss": 0.75,
        "round_duration_seconds": 3.0,
        "participants": 1.0,
        "rejected_updates": 0.0,
    }


@pytest.mark.parametrize(
    ("name", "key"),
    [("accuracy", "accuracy"), ("top-1 acc/test", "top-1 acc/test"), ("f1@k", "f1_k"), ("", "_")],
)
def test_metric_names_mlflow_refuses_are_made_safe(name: str, key: str) -> None:
    assert metric_key(name) == key


def test_credentials_come_from_mlflows_own_variables() -> None:
    basic = auth_header({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"})

    assert auth_header({"MLFLOW_TRACKING_TOKEN": "t"}) == "Bearer t"
    assert basic == "Basic " + base64.b64encode(b"u:p").decode()
    assert auth_header({}) is None


def test_tracking_is_off_unless_the_spec_asks() -> None:
    assert isinstance(tracker_for(make_job(), "s3://b/p/", {}), NoTracking)


def test_a_tracking_uri_without_a_scheme_is_refused_naming_the_field() -> None:
    with pytest.raises(Exception, match=r"tracking\.mlflow\.uri"):
        make_job(tracking={"mlflow": {"uri": "mlflow:5000"}})


def test_an_unreachable_server_never_blocks_the_round_loop_and_close_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = make_job(tracking={"mlflow": {"uri": f"http://127.0.0.1:{free_port()}"}})
    tracker = tracker_for(job, "file:///runs/digits/", {})
    assert isinstance(tracker, MlflowTracker)
    tracker.retry_seconds = (0.05,)

    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="fedcore.tracking"):
        tracker.resumed(make_record(0))
        for r in range(1, 50):
            tracker.committed(make_record(r))
        queued = time.monotonic() - start
        tracker.close(timeout=0.5)

    assert queued < 1.0  # 50 events with the server down: no call waited on the network
    assert "cannot reach MLflow" in caplog.text
    assert caplog.text.count("cannot reach MLflow") == 1  # one warning per outage
    assert "could not log" in caplog.text


def test_only_the_aggregator_pod_gets_the_tracking_secret() -> None:
    spec = make_job(
        tracking={"mlflow": {"uri": "http://mlflow:5000", "secretRef": {"name": "mlflow"}}}
    ).spec

    env = {e["name"]: e for e in pods.tracking_env(spec)}

    assert set(env) == {
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    for name, var in env.items():
        assert var["valueFrom"]["secretKeyRef"] == {"name": "mlflow", "key": name, "optional": True}
    assert pods.tracking_env(make_job().spec) == []
