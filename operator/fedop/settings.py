"""The operator's settings: typed, with units and reasons, read from the environment here only.

The Helm chart sets these through the Deployment's environment (``values.yaml``: ``operator.env``);
``kopf run -m fedop`` against a kubeconfig reads the same variables, so a developer's run and
the in-cluster one behave alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from fedop.errors import SettingsError

_T = TypeVar("_T")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

STS_MIN_DURATION_SECONDS = 900
STS_MAX_DURATION_SECONDS = 43200
CREDENTIAL_MARGIN_SECONDS = 300
"""Least time between a rotation and the old credentials' expiry: a kubelet's sync period
plus its Secret cache, and the pods' own re-read of the file before expiry, fit in it."""


Mode = Literal["coordinator", "site"]
MODE_ENV = "FEDKUBE_OPERATOR_MODE"


def operator_mode(env: Mapping[str, str] | None = None) -> Mode:
    """``$FEDKUBE_OPERATOR_MODE``: ``coordinator`` (the default) runs FederatedJobs, ``site``
    runs a site's FederatedSites (the chart's ``mode`` value). One process runs one mode: a
    site's cluster needs no FederatedJob CRD and no right to mint store credentials."""
    env = os.environ if env is None else env
    raw = env.get(MODE_ENV, "").strip() or "coordinator"
    if raw == "coordinator":
        return "coordinator"
    if raw == "site":
        return "site"
    raise SettingsError(f"{MODE_ENV}={raw!r} must be coordinator or site")


@dataclass(frozen=True)
class OperatorSettings:
    resync_seconds: float = 3.0
    """Seconds between two reconcile passes of one FederatedJob. The object store has no
    watch, so a committed round shows up in ``status`` at most this late; a pass costs a few
    list calls and two store reads per job, so 3 s is cheap even for hundreds of jobs."""
    workers: int = 4
    """FederatedJobs reconciled at the same time (threads). Passes of one job never overlap."""
    api_concurrency: int = 8
    """API writes in flight at once inside one pass: creating 100 clients' Secrets, Services
    and Jobs one by one would take seconds of round trips; 8 keeps the API server unhurried."""
    retry_seconds: float = 5.0
    """Delay before retrying a pass that hit transient trouble (API 5xx/429, store down)."""
    request_timeout_seconds: float = 30.0
    """Timeout of one Kubernetes API request."""
    runtime_image: str = "fedkube/runtime:0.1.0"
    """Image of aggregator and client pods when a FederatedJob names none (``spec.image``)."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of those pods; ``Never`` suits clusters whose nodes are pre-loaded (kind)."""
    pod_user_id: int = 65532
    """UID (and GID, fsGroup) the pods run as: non-root, matching the runtime image's user."""
    master_port: int = 29500
    """Port of a client group's rendezvous (rank 0's c10d store); torchrun's default."""
    credential_lifetime_seconds: int = 3600
    """Lifetime the operator asks of the store's STS for each role's minted credentials
    (``DurationSeconds`` of AssumeRole). S3 stores accept 900 (15 min) to 43200 (12 h); an
    hour bounds what a leaked credential is worth while costing a few STS calls per job."""
    credential_refresh_seconds: int = 1800
    """Age at which a role's credentials are replaced by fresh ones. Half the lifetime leaves
    the pods half an hour to pick the new file up (a kubelet propagates a Secret within a
    minute or two); it must stay ``CREDENTIAL_MARGIN_SECONDS`` below the lifetime."""
    metrics_scrape_namespace: str = ""
    """Namespace whose pods (a Prometheus) may reach the aggregator pods' metrics port through
    the jobs' NetworkPolicies (chart: ``metrics.scrapeNamespace``). Empty: the aggregator
    admits no ingress at all, so only clusters that do not enforce NetworkPolicies can scrape
    it. Applies to jobs whose policies are created after the change."""
    metrics_linger_seconds: int = 75
    """Seconds a finished aggregator keeps serving its metrics before its pod exits, so that
    Prometheus scrapes the final round (chart: ``metrics.aggregatorLingerSeconds``). 75 covers
    two scrapes at a 30 s interval; 0 exits at once (the last round may then never be seen)."""
    field_manager: str = "fedkube-operator"
    """Name the operator's writes are recorded under (``managedFields``)."""
    kubeconfig: str = ""
    """Outside a cluster: the kubeconfig to use, from ``KUBECONFIG`` (not ``FEDKUBE_*``: the
    variable every Kubernetes tool reads). Empty: ``~/.kube/config``."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from ``FEDKUBE_<FIELD>`` variables (e.g. ``FEDKUBE_RESYNC_SECONDS``)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = "KUBECONFIG" if field.name == "kubeconfig" else f"FEDKUBE_{field.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            default = field.default
            if isinstance(default, bool) or not isinstance(default, int | float | str):
                raise SettingsError(f"{name}: unsupported setting type")  # pragma: no cover
            values[field.name] = _convert(name, raw, type(default))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ``SettingsError`` naming the variable when a value is out of range."""
        positive = (
            "resync_seconds",
            "workers",
            "api_concurrency",
            "retry_seconds",
            "request_timeout_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(
                    f"FEDKUBE_{name.upper()}={getattr(self, name)} must be positive"
                )
        if self.pod_user_id <= 0:
            raise SettingsError(
                f"FEDKUBE_POD_USER_ID={self.pod_user_id} must be a non-root UID (> 0)"
            )
        self._check_credentials()
        if not 0 <= self.metrics_linger_seconds <= 3600:
            raise SettingsError(
                f"FEDKUBE_METRICS_LINGER_SECONDS={self.metrics_linger_seconds} must be between "
                "0 and 3600"
            )
        ns = self.metrics_scrape_namespace
        if ns and not _DNS_LABEL.fullmatch(ns):
            raise SettingsError(
                f"FEDKUBE_METRICS_SCRAPE_NAMESPACE={ns!r} is not a namespace name (lower-case "
                "letters, digits and '-', at most 63); name the namespace your Prometheus runs in"
            )
        if not 1 <= self.master_port <= 65535:
            raise SettingsError(f"FEDKUBE_MASTER_PORT={self.master_port} is not a TCP port")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                f"FEDKUBE_IMAGE_PULL_POLICY={self.image_pull_policy!r} must be Always, "
                "IfNotPresent or Never"
            )

    def _check_credentials(self) -> None:
        lifetime, refresh = self.credential_lifetime_seconds, self.credential_refresh_seconds
        if not STS_MIN_DURATION_SECONDS <= lifetime <= STS_MAX_DURATION_SECONDS:
            raise SettingsError(
                f"FEDKUBE_CREDENTIAL_LIFETIME_SECONDS={lifetime} must be between "
                f"{STS_MIN_DURATION_SECONDS} and {STS_MAX_DURATION_SECONDS} (the STS "
                "DurationSeconds range); for frequent rotation in a test lower "
                "FEDKUBE_CREDENTIAL_REFRESH_SECONDS instead"
            )
        if not 0 < refresh <= lifetime - CREDENTIAL_MARGIN_SECONDS:
            raise SettingsError(
                f"FEDKUBE_CREDENTIAL_REFRESH_SECONDS={refresh} must be positive and at most "
                f"{lifetime - CREDENTIAL_MARGIN_SECONDS} (the lifetime {lifetime} less "
                f"{CREDENTIAL_MARGIN_SECONDS} s for the new file to reach the pods)"
            )


def _convert(name: str, raw: str, kind: Callable[[str], _T]) -> _T:
    try:
        return kind(raw.strip())
    except ValueError as e:
        what = getattr(kind, "__name__", "value")
        raise SettingsError(f"{name}={raw!r} is not a valid {what}") from e
