"""The operator's Prometheus metrics, served on ``$FEDKUBE_OPERATOR_METRICS_PORT`` (the
chart sets it; unset or empty: off).

Labels are bounded: ``phase`` takes the FederatedJob phases and ``outcome`` the few ways a
pass ends (``OUTCOMES``). No label names a job, namespace-less uid or client: a platform with
hundreds of jobs gets a handful of series, and ``kubectl get fj`` says which job is which.

=============================================  =========  ==========================================
name                                           type       what
=============================================  =========  ==========================================
``fedkube_operator_reconciles_total{outcome}`` counter    reconcile passes, by how they ended
``fedkube_operator_reconcile_duration_seconds`` histogram  one pass
``fedkube_operator_jobs{phase}``               gauge      FederatedJobs seen, by phase
``fedkube_operator_client_restarts_total``     counter    client restarts the operator made
``fedkube_operator_client_drops_total``        counter    clients dropped (restart budget spent)
=============================================  =========  ==========================================

kopf does not report its watch reconnects to handlers, so there is no metric for them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fedcore import spec as fs
from fedop.errors import SettingsError

log = logging.getLogger(__name__)

PORT_ENV = "FEDKUBE_OPERATOR_METRICS_PORT"
OUTCOMES = ("ok", "temporary-error", "permanent-error", "crash")
PHASES: tuple[str, ...] = get_args(fs.FederatedJobStatus.model_fields["phase"].annotation)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _JobsByPhase(Collector):
    def __init__(self, owner: OperatorMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "fedkube_operator_jobs", "FederatedJobs the operator saw, by phase.", labels=["phase"]
        )
        counts = self.owner.phase_counts()
        for phase in PHASES:
            family.add_metric([phase], counts.get(phase, 0))
        yield family


class OperatorMetrics:
    """The operator's metrics in their own registry; thread-safe (workers are threads)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "fedkube_operator_reconciles",
            "Reconcile passes, by how they ended.",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.reconciles.labels(outcome=outcome)
        self.duration = Histogram(
            "fedkube_operator_reconcile_duration_seconds",
            "Seconds of one reconcile pass.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "fedkube_operator_client_restarts", "Client restarts the operator made.", registry=r
        )
        self.drops = Counter(
            "fedkube_operator_client_drops",
            "Clients dropped after their restart budget.",
            registry=r,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        r.register(_JobsByPhase(self))

    @contextmanager
    def reconciling(self) -> Iterator[None]:
        """Count and time one pass; its outcome from how it ends."""
        import kopf

        start = time.monotonic()
        outcome = "crash"
        try:
            yield
            outcome = "ok"
        except kopf.TemporaryError:
            outcome = "temporary-error"
            raise
        except kopf.PermanentError:
            outcome = "permanent-error"
            raise
        finally:
            self.duration.observe(time.monotonic() - start)
            self.reconciles.labels(outcome=outcome).inc()

    def observed(
        self, namespace: str, name: str, old: fs.FederatedJobStatus, new: fs.FederatedJobStatus
    ) -> None:
        """A pass planned ``new`` from ``old``: the job's phase, restarts and drops it made."""
        with self._lock:
            self._phases[(namespace, name)] = new.phase
        for client, now in new.clients.items():
            before = old.clients.get(client)
            self.restarts.inc(max(0, now.restarts - (before.restarts if before else 0)))
            if now.phase == "Dropped" and (before is None or before.phase != "Dropped"):
                self.drops.inc()

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone."""
        with self._lock:
            self._phases.pop((namespace, name), None)

    def phase_counts(self) -> dict[str, int]:
        with self._lock:
            phases = list(self._phases.values())
        return {p: phases.count(p) for p in set(phases)}


def metrics_port(env: Mapping[str, str] | None = None) -> int | None:
    """The port ``$FEDKUBE_OPERATOR_METRICS_PORT`` names; None when unset or empty."""
    raw = (os.environ if env is None else env).get(PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise SettingsError(f"{PORT_ENV}={raw!r} is not a TCP port; set 0-65535 or unset it")
    return int(raw)


def serve(metrics: OperatorMetrics, port: int, addr: str = "0.0.0.0") -> Any:
    """Serve ``metrics`` on ``port`` in a daemon thread; the HTTP server."""
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server


METRICS = OperatorMetrics()
"""The operator process's metrics (served by the startup handler when the port is set)."""
