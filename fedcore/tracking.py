"""Experiment tracking: the aggregator logs a job's run to an MLflow tracking server.

``spec.tracking.mlflow: {uri, experiment}`` turns it on (off by default). One MLflow run per
job, found again after a restart by its ``fedkube.job`` tag (the job's store location), so a
resumed aggregator goes on logging into the same run. What it logs:

* parameters, once: the rounds, seed, strategy options, the task's entrypoint and config, the
  client names (``fedkube_params``);
* every committed round, at ``step = round``: the global model's evaluation metrics (the
  task's names), each participant's training metrics as ``client.<name>.<metric>``, the
  round's duration and its participant and rejection counts;
* at the end: the final model's store URI and sha256 as tags, and the run set FINISHED.

A tracking server must never fail or slow the job. Calls go to MLflow's REST API (``/api/2.0
/mlflow/...``) from one background thread; the round loop only puts events on a bounded queue
(``QUEUE_EVENTS``; when full, the oldest event is dropped and counted). While the server
cannot be reached, the thread retries with backoff (``RETRY_SECONDS``) and logs one warning
per outage; an answer the server will never accept (a 4xx other than 429) drops that event
with a warning instead of retrying it. At the end the aggregator waits at most
``CLOSE_SECONDS`` for the queue to drain and says what could not be logged.

Why the REST API and not the ``mlflow`` package: the aggregator needs five calls, and the
client package pulls in dozens of dependencies (and retries synchronously, for minutes, when
the server is down) into an image that should hold PyTorch and little else. The REST API is
MLflow's stable, documented interface; the integration tests run it against a real
``mlflow server``.

Credentials come from the aggregator's environment, with MLflow's own variable names:
``MLFLOW_TRACKING_TOKEN`` (bearer), or ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` (basic); on a cluster the operator maps them from
``spec.tracking.mlflow.secretRef``. They never appear in logs.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedcore import layout
from fedcore.spec import FederatedJob, MlflowSpec

log = logging.getLogger(__name__)

QUEUE_EVENTS = 10_000
"""Events buffered while the server is away: at ~50 metrics per round, 200 rounds' worth."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Backoff between attempts while the server cannot be reached (the last repeats)."""
REQUEST_SECONDS = 10.0
"""Timeout of one HTTP request."""
CLOSE_SECONDS = 15.0
"""How long the end of a job waits for buffered events to reach the server."""
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
"""MLflow's limits on one ``log-batch`` call and on a parameter's value."""
JOB_TAG = "fedkube.job"

ENV_TOKEN = "MLFLOW_TRACKING_TOKEN"
ENV_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
CREDENTIAL_ENV = (ENV_TOKEN, ENV_USERNAME, ENV_PASSWORD)
"""The variables a tracking credential travels in (the operator maps them from the Secret)."""

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


class Tracker(Protocol):
    """What the aggregator tells a tracker; every call returns at once."""

    def resumed(self, record: layout.RoundRecord) -> None: ...
    def committed(self, record: layout.RoundRecord) -> None: ...
    def finished(self, final: layout.FinalRecord, model_uri: str) -> None: ...
    def close(self) -> None: ...


class NoTracking:
    """``spec.tracking`` unset."""

    def resumed(self, record: layout.RoundRecord) -> None:
        pass

    def committed(self, record: layout.RoundRecord) -> None:
        pass

    def finished(self, final: layout.FinalRecord, model_uri: str) -> None:
        pass

    def close(self) -> None:
        pass


class ServerRefused(Exception):
    """The server answered with a status it will answer again (a 4xx other than 429)."""


@dataclass(frozen=True)
class _Event:
    what: str
    call: Callable[[MlflowTracker], None]


@dataclass
class _Outage:
    since: float | None = None
    error: str = ""
    warned: bool = False


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in a key replaced by ``_``."""
    return _KEY_CHARS.sub("_", name)[:250] or "_"


def fedkube_params(job: FederatedJob) -> dict[str, str]:
    """The job's parameters as MLflow params: flat keys, string values within its limit."""
    spec = job.spec
    strategy = spec.strategy.model_dump(by_alias=True, exclude_none=True, mode="json")
    params: dict[str, Any] = {
        "rounds": spec.rounds,
        "seed": spec.seed,
        "task.entrypoint": spec.task.entrypoint,
        "clients": ",".join(c.name for c in spec.clients),
        **{f"strategy.{k}": v for k, v in strategy.items()},
        **{f"task.config.{k}": v for k, v in sorted(spec.task.config.items())},
    }
    out: dict[str, str] = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[metric_key(key)] = text[:MAX_PARAM_VALUE]
    return out


def round_metrics(record: layout.RoundRecord) -> dict[str, float]:
    """What one committed round logs (keys already MLflow-safe)."""
    out = {metric_key(k): v for k, v in record.metrics.items()}
    for client, metrics in record.client_metrics.items():
        for name, value in metrics.items():
            out[metric_key(f"client.{client}.{name}")] = value
    if record.round > 0:
        out["round_duration_seconds"] = record.duration_seconds
        out["participants"] = float(len(record.participants))
        out["rejected_updates"] = float(len(record.rejected))
    return out


def auth_header(env: Mapping[str, str]) -> str | None:
    """The ``Authorization`` header the credential variables ask for; None without any."""
    token = env.get(ENV_TOKEN, "")
    if token:
        return f"Bearer {token}"
    user, password = env.get(ENV_USERNAME, ""), env.get(ENV_PASSWORD, "")
    if user or password:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


@dataclass
class MlflowTracker:
    """Logs one job's run to ``uri`` from a background thread; see the module docstring."""

    uri: str
    experiment: str
    job_tag: str
    run_name: str
    params: dict[str, str]
    authorization: str | None = None
    retry_seconds: tuple[float, ...] = RETRY_SECONDS
    request_seconds: float = REQUEST_SECONDS
    dropped: int = 0
    """Events lost: the buffer overflowed, or the server refused them for good."""
    run_id: str | None = None
    _queue: queue.Queue[_Event | None] = field(default_factory=lambda: queue.Queue(QUEUE_EVENTS))
    _thread: threading.Thread | None = None
    _outage: _Outage = field(default_factory=_Outage)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_job(
        cls, job: FederatedJob, spec: MlflowSpec, location: str, env: Mapping[str, str]
    ) -> MlflowTracker:
        return cls(
            uri=spec.uri.rstrip("/"),
            experiment=spec.experiment,
            job_tag=location,
            run_name=job.metadata.name or "fedkube",
            params=fedkube_params(job),
            authorization=auth_header(env),
        )

    # -- what the aggregator calls (never blocks) -------------------------------------------

    def resumed(self, record: layout.RoundRecord) -> None:
        self._put(_Event("the run's parameters", lambda t: t._log_params()))
        if record.round == 0:
            self.committed(record)

    def committed(self, record: layout.RoundRecord) -> None:
        metrics = round_metrics(record)
        millis = int(record.committed_at.timestamp() * 1000)
        self._put(
            _Event(
                f"round {record.round}'s metrics",
                lambda t: t._log_metrics(metrics, step=record.round, millis=millis),
            )
        )

    def finished(self, final: layout.FinalRecord, model_uri: str) -> None:
        tags = {"fedkube.model_uri": model_uri, "fedkube.model_sha256": final.model_sha256}
        self._put(_Event("the final model and status", lambda t: t._finish(tags)))

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Wait up to ``timeout`` s for the buffer to drain; say what was not logged."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        left = self._queue.qsize()
        lost = self.dropped + (left - 1 if self._thread.is_alive() and left else 0)
        if self._thread.is_alive() or lost:
            log.warning(
                "could not log %d event(s) to MLflow at %s (%s); the job itself is unaffected",
                max(lost, 1),
                self.uri,
                self._outage.error or "events dropped",
            )

    # -- the background thread --------------------------------------------------------------

    def _put(self, event: _Event) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="mlflow-tracking", daemon=True
                )
                self._thread.start()
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _drain(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._deliver(event)

    def _deliver(self, event: _Event) -> None:
        attempt = 0
        while True:
            try:
                if self.run_id is None:
                    self._ensure_run()
                event.call(self)
            except ServerRefused as e:
                self.dropped += 1
                log.warning("MLflow at %s refused %s: %s; not retrying it", self.uri, event.what, e)
                return
            except (OSError, ValueError) as e:  # unreachable, timed out, 5xx, 429, bad JSON
                self._note_outage(e)
                delay = self.retry_seconds[min(attempt, len(self.retry_seconds) - 1)]
                attempt += 1
                time.sleep(delay)
                continue
            if self._outage.since is not None:
                log.info("MLflow at %s reachable again; logging what was buffered", self.uri)
                self._outage = _Outage()
            return

    def _note_outage(self, error: Exception) -> None:
        self._outage.error = f"{type(error).__name__}: {error}"
        if self._outage.since is None:
            self._outage.since = time.monotonic()
        if not self._outage.warned:
            self._outage.warned = True
            log.warning(
                "cannot reach MLflow at %s (%s); buffering and retrying, the job goes on",
                self.uri,
                self._outage.error,
            )

    # -- MLflow's REST API --------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.authorization:
            request.add_header("Authorization", self.authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.request_seconds) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            if 400 <= e.code < 500 and e.code != 429:
                raise ServerRefused(f"HTTP {e.code} on {path}: {detail}") from e
            raise OSError(f"HTTP {e.code} on {path}: {detail}") from e
        answer = json.loads(raw or b"{}")
        if not isinstance(answer, dict):
            raise ValueError(f"{path} answered {type(answer).__name__}, not a JSON object")
        return answer

    def _experiment_id(self) -> str:
        query = urllib.parse.urlencode({"experiment_name": self.experiment})
        try:
            found = self._call("GET", f"experiments/get-by-name?{query}")
            return str(found["experiment"]["experiment_id"])
        except ServerRefused as e:
            if "RESOURCE_DOES_NOT_EXIST" not in str(e):
                raise
        try:
            return str(self._call("POST", "experiments/create", {"name": self.experiment})[
                "experiment_id"
            ])  # fmt: skip
        except ServerRefused as e:  # created meanwhile by another job's aggregator
            if "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise
            found = self._call("GET", f"experiments/get-by-name?{query}")
            return str(found["experiment"]["experiment_id"])

    def _ensure_run(self) -> None:
        experiment_id = self._experiment_id()
        tag = self.job_tag.replace("\\", "\\\\").replace("'", "\\'")
        found = self._call(
            "POST",
            "runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": f"tags.`{JOB_TAG}` = '{tag}'",
                "max_results": 1,
            },
        )
        runs = found.get("runs") or []
        if runs:
            self.run_id = str(runs[0]["info"]["run_id"])
            return
        created = self._call(
            "POST",
            "runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": self.run_name,
                "start_time": int(time.time() * 1000),
                "tags": [
                    {"key": JOB_TAG, "value": self.job_tag},
                    {"key": "mlflow.runName", "value": self.run_name},
                ],
            },
        )
        self.run_id = str(created["run"]["info"]["run_id"])
        log.info("logging to MLflow run %s at %s", self.run_id, self.uri)

    def _log_params(self) -> None:
        items = [{"key": k, "value": v} for k, v in sorted(self.params.items())]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[start : start + MAX_PARAMS_PER_BATCH]
            self._call("POST", "runs/log-batch", {"run_id": self.run_id, "params": chunk})

    def _log_metrics(self, metrics: Mapping[str, float], *, step: int, millis: int) -> None:
        items = [
            {"key": k, "value": v, "timestamp": millis, "step": step}
            for k, v in sorted(metrics.items())
        ]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            chunk = items[start : start + MAX_METRICS_PER_BATCH]
            self._call("POST", "runs/log-batch", {"run_id": self.run_id, "metrics": chunk})

    def _finish(self, tags: Mapping[str, str]) -> None:
        self._call(
            "POST",
            "runs/log-batch",
            {"run_id": self.run_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]},
        )
        self._call(
            "POST",
            "runs/update",
            {"run_id": self.run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
        )


def tracker_for(job: FederatedJob, location: str, env: Mapping[str, str] | None = None) -> Tracker:
    """The tracker ``job.spec.tracking`` asks for (``NoTracking`` when unset)."""
    tracking = job.spec.tracking
    if tracking is None or tracking.mlflow is None:
        return NoTracking()
    return MlflowTracker.for_job(job, tracking.mlflow, location, os.environ if env is None else env)
