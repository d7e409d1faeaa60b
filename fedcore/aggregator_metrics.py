"""The aggregator's Prometheus metrics, served on ``$FEDKUBE_METRICS_PORT`` (off when unset).

Everything a round tells is counted when the round commits, from the record it commits (so a
round counts once, with what the record says); fold and commit times are measured around the
aggregator's own calls. Labels are bounded: ``reason`` takes one of
``fedcore.validation.REJECT_REASONS`` (anything else counts as ``other``), and ``metric``
takes the evaluation metric names the job's task reports, at most ``MAX_METRIC_NAMES`` of
them (further names are left out and logged once). No label carries a job, client or uid:
one aggregator serves one job, and the pod's own labels say which.

=============================================================  =========  ====================
name                                                           type       what
=============================================================  =========  ====================
``fedkube_aggregator_round``                                   gauge      newest committed round
``fedkube_aggregator_round_duration_seconds``                  histogram  round open to commit
``fedkube_aggregator_straggler_wait_seconds``                  histogram  first to last update
                                                                          handled in a round
``fedkube_aggregator_fold_seconds``                            histogram  validating and folding
                                                                          one update
``fedkube_aggregator_commit_seconds``                          histogram  writing a round's
                                                                          model, state, record
``fedkube_aggregator_updates_folded_total``                    counter    updates folded
``fedkube_aggregator_updates_rejected_total{reason}``          counter    updates rejected
``fedkube_aggregator_updates_late_total``                      counter    updates for a closed
                                                                          round
``fedkube_aggregator_update_bytes_total``                      counter    bytes of folded
                                                                          updates (as signed)
``fedkube_aggregator_evaluation{metric}``                      gauge      newest round's
                                                                          evaluation
=============================================================  =========  ====================
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedcore import layout
from fedcore.errors import SpecError
from fedcore.validation import REJECT_REASONS

log = logging.getLogger(__name__)

PORT_ENV = "FEDKUBE_METRICS_PORT"
LINGER_ENV = "FEDKUBE_METRICS_LINGER_SECONDS"
MAX_LINGER_SECONDS = 3600
MAX_METRIC_NAMES = 16
OTHER_REASON = "other"
_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class AggregatorMetrics:
    """The aggregator's metrics in their own registry (one per aggregator)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        p = "fedkube_aggregator_"
        r = self.registry
        self.round = Gauge(f"{p}round", "Newest committed round.", registry=r)
        self.round_duration = Histogram(
            f"{p}round_duration_seconds",
            "Seconds from a round's opening to its commit.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.straggler_wait = Histogram(
            f"{p}straggler_wait_seconds",
            "Seconds from the first update a round handled to its last (waiting for the slowest).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.fold = Histogram(
            f"{p}fold_seconds",
            "Seconds validating and folding one update.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.commit = Histogram(
            f"{p}commit_seconds",
            "Seconds writing a round's global model, strategy state and record.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.folded = Counter(f"{p}updates_folded", "Updates folded.", registry=r)
        self.rejected = Counter(
            f"{p}updates_rejected", "Updates rejected, by reason.", ["reason"], registry=r
        )
        for reason in (*REJECT_REASONS, OTHER_REASON):
            self.rejected.labels(reason=reason)
        self.late = Counter(f"{p}updates_late", "Updates for an already closed round.", registry=r)
        self.update_bytes = Counter(
            f"{p}update_bytes", "Bytes of folded updates, as their manifests sign them.", registry=r
        )
        self.evaluation = Gauge(
            f"{p}evaluation", "The newest round's evaluation metrics.", ["metric"], registry=r
        )
        self._metric_names: set[str] = set()
        self._fold_times: list[float] = []

    @contextmanager
    def folding(self) -> Iterator[None]:
        """Time one update's validation and fold."""
        start = time.monotonic()
        try:
            yield
        finally:
            end = time.monotonic()
            self.fold.observe(end - start)
            self._fold_times.append(end)

    @contextmanager
    def committing(self) -> Iterator[None]:
        with self.commit.time():
            yield

    def committed(
        self, record: layout.RoundRecord, folded: Mapping[str, layout.UpdateManifest]
    ) -> None:
        """Count what round ``record`` tells (once, when it commits)."""
        self.round.set(record.round)
        self.round_duration.observe((record.committed_at - record.started_at).total_seconds())
        if len(self._fold_times) >= 2:
            self.straggler_wait.observe(self._fold_times[-1] - self._fold_times[0])
        self._fold_times.clear()
        self.folded.inc(len(record.participants))
        for client in record.participants:
            if client in folded:
                self.update_bytes.inc(folded[client].update_bytes)
        for rejected in record.rejected:
            reason = rejected.reason if rejected.reason in REJECT_REASONS else OTHER_REASON
            self.rejected.labels(reason=reason).inc()
        self.late.inc(len(record.late))
        self.evaluated(record.metrics)

    def resumed(self, record: layout.RoundRecord) -> None:
        """The round the aggregator starts from (the initial one, or the newest on resume):
        the current round and its evaluation, counting nothing."""
        self.round.set(record.round)
        self.evaluated(record.metrics)

    def evaluated(self, metrics: Mapping[str, float]) -> None:
        for name, value in sorted(metrics.items()):
            if name not in self._metric_names:
                if len(self._metric_names) >= MAX_METRIC_NAMES:
                    log.warning(
                        "evaluation metric %r not exported: the first %d names are",
                        name,
                        MAX_METRIC_NAMES,
                    )
                    continue
                self._metric_names.add(name)
            self.evaluation.labels(metric=name).set(value)


def metrics_port(env: Mapping[str, str] | None = None) -> int | None:
    """The port ``$FEDKUBE_METRICS_PORT`` names; None when unset or empty (metrics off)."""
    raw = (os.environ if env is None else env).get(PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise SpecError(
            [(PORT_ENV, f"{raw!r} is not a TCP port; set 0-65535, or unset it for no metrics")]
        )
    return port


def linger_seconds(env: Mapping[str, str] | None = None) -> float:
    """Seconds ``$FEDKUBE_METRICS_LINGER_SECONDS`` asks a finished aggregator to keep serving
    its metrics (so that a scrape sees the last round); 0 when unset."""
    raw = (os.environ if env is None else env).get(LINGER_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_LINGER_SECONDS:
        raise SpecError(
            [(LINGER_ENV, f"{raw!r} is not a number of seconds in [0, {MAX_LINGER_SECONDS}]")]
        )
    return seconds


def serve(metrics: AggregatorMetrics, port: int, addr: str = "0.0.0.0") -> Any:
    """Serve ``metrics`` over HTTP on ``port`` (0: any free port) in a daemon thread; the
    server (``server.server_port`` is the port; ``shutdown()`` then ``server_close()`` stop it)."""
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server
