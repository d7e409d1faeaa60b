"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes.

Flags follow what kubeadm sets for a single control-plane node, minus what needs a container
runtime: certificate authentication, Node+RBAC authorization, the default admission plugins,
bound service-account tokens, and a controller manager with per-controller service-account
credentials (so RBAC applies to controllers as in a real cluster). Every port is picked free at
start, so two clusters on one machine never collide.

The API server listens only on the pod bridge address: pods reach it there (there is no
kube-proxy for the ``kubernetes`` Service), and so does everything on this machine.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.cluster import kubeconfig
from tests.cluster.binaries import Binaries
from tests.cluster.certs import Pki
from tests.cluster.errors import ComponentFailed
from tests.cluster.network import SERVICE_CIDR
from tests.cluster.processes import ManagedProcess, free_port

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
HEALTH_POLL_S = 0.2
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""
"""Every request at metadata level, once (when the response is sent)."""


@dataclass(frozen=True)
class Endpoints:
    etcd: str
    apiserver: str
    apiserver_host: str
    apiserver_port: int
    controller_manager_health: str
    scheduler_health: str


class ControlPlane:
    """Starts the four components in dependency order and waits until each is healthy."""

    def __init__(
        self, bins: Binaries, pki: Pki, state_dir: Path, bind_ip: str, *, audit_log: bool = False
    ) -> None:
        self.bins = bins
        self.pki = pki
        self.state_dir = state_dir
        self.logs = state_dir / "logs" / "control-plane"
        self.audit_log: Path | None = self.logs / "audit.log" if audit_log else None
        """Where the API server records every request (None: not recorded)."""
        etcd_port, kcm_port, sched_port = free_port(), free_port(), free_port()
        api_port = free_port(bind_ip)
        self._etcd_peer_port = free_port()
        self.endpoints = Endpoints(
            etcd=f"http://127.0.0.1:{etcd_port}",
            apiserver=f"https://{bind_ip}:{api_port}",
            apiserver_host=bind_ip,
            apiserver_port=api_port,
            controller_manager_health=f"https://127.0.0.1:{kcm_port}/healthz",
            scheduler_health=f"https://127.0.0.1:{sched_port}/healthz",
        )
        kc = state_dir / "kubeconfigs"
        self.admin_kubeconfig = state_dir / "admin.kubeconfig"
        self._kcm_kubeconfig = kc / "controller-manager.kubeconfig"
        self._scheduler_kubeconfig = kc / "scheduler.kubeconfig"
        self.processes: list[ManagedProcess] = []

    # -- flags --------------------------------------------------------------------------------

    def _etcd(self) -> ManagedProcess:
        peer = f"http://127.0.0.1:{self._etcd_peer_port}"
        return ManagedProcess(
            "etcd",
            [
                str(self.bins.path("etcd")),
                "--name=default",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={self.endpoints.etcd}",
                f"--advertise-client-urls={self.endpoints.etcd}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                # Throwaway data: skipping fsync makes every API write several times faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.logs / "etcd.log",
        )

    def _apiserver(self) -> ManagedProcess:
        p, e = self.pki, self.endpoints
        return ManagedProcess(
            "kube-apiserver",
            [
                str(self.bins.path("kube-apiserver")),
                f"--etcd-servers={e.etcd}",
                f"--bind-address={e.apiserver_host}",
                f"--advertise-address={e.apiserver_host}",
                f"--secure-port={e.apiserver_port}",
                f"--tls-cert-file={p.apiserver.cert}",
                f"--tls-private-key-file={p.apiserver.key}",
                f"--client-ca-file={p.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={p.service_account_pub}",
                f"--service-account-signing-key-file={p.service_account_key}",
                f"--kubelet-client-certificate={p.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={p.apiserver_kubelet_client.key}",
                f"--kubelet-certificate-authority={p.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                *self._audit_flags(),
                "--v=1",
            ],
            self.logs / "kube-apiserver.log",
            # Its graceful shutdown waits for open watches; the data is throwaway anyway.
            stop_timeout_s=2.0,
        )

    def _audit_flags(self) -> list[str]:
        """Metadata of every request (user, source IPs, verb, resource), written as it
        happens (``--audit-log-mode=blocking``) so a test reads a complete log."""
        if self.audit_log is None:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxbackup=0",
        ]

    def _secure_component_flags(self, kubeconfig_path: Path, health_url: str) -> list[str]:
        port = health_url.rsplit(":", 1)[1].split("/")[0]
        return [
            f"--kubeconfig={kubeconfig_path}",
            f"--authentication-kubeconfig={kubeconfig_path}",
            f"--authorization-kubeconfig={kubeconfig_path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
            "--v=1",
        ]

    def _controller_manager(self) -> ManagedProcess:
        p = self.pki
        return ManagedProcess(
            "kube-controller-manager",
            [
                str(self.bins.path("kube-controller-manager")),
                *self._secure_component_flags(
                    self._kcm_kubeconfig, self.endpoints.controller_manager_health
                ),
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p.service_account_key}",
                f"--root-ca-file={p.ca.cert}",
                f"--cluster-signing-cert-file={p.ca.cert}",
                f"--cluster-signing-key-file={p.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=fedkube-test",
                # New nodes carry a not-ready taint until the node lifecycle controller's next
                # pass sees them Ready: 1 s instead of 5 s is 4 s less startup, negligible CPU.
                "--node-monitor-period=1s",
            ],
            self.logs / "kube-controller-manager.log",
        )

    def _scheduler(self) -> ManagedProcess:
        return ManagedProcess(
            "kube-scheduler",
            [
                str(self.bins.path("kube-scheduler")),
                *self._secure_component_flags(
                    self._scheduler_kubeconfig, self.endpoints.scheduler_health
                ),
            ],
            self.logs / "kube-scheduler.log",
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def write_kubeconfigs(self) -> None:
        server, ca = self.endpoints.apiserver, self.pki.ca.cert
        kubeconfig.write(
            self.admin_kubeconfig,
            server=server,
            ca_cert=ca,
            client=self.pki.admin,
            user="fedkube-admin",
        )
        kubeconfig.write(
            self._kcm_kubeconfig,
            server=server,
            ca_cert=ca,
            client=self.pki.controller_manager,
            user="system:kube-controller-manager",
        )
        kubeconfig.write(
            self._scheduler_kubeconfig,
            server=server,
            ca_cert=ca,
            client=self.pki.scheduler,
            user="system:kube-scheduler",
        )

    def start(self, deadline: float) -> None:
        """Start everything and return once all four components report healthy."""
        self.write_kubeconfigs()
        etcd = self._launch(self._etcd())
        self._wait(etcd, self._etcd_healthy, deadline)
        apiserver = self._launch(self._apiserver())
        self._wait(apiserver, self._apiserver_ready, deadline)
        kcm = self._launch(self._controller_manager())
        scheduler = self._launch(self._scheduler())
        self._wait(
            kcm, lambda: self._secure_healthy(self.endpoints.controller_manager_health), deadline
        )
        self._wait(
            scheduler, lambda: self._secure_healthy(self.endpoints.scheduler_health), deadline
        )

    def _launch(self, proc: ManagedProcess) -> ManagedProcess:
        proc.start()
        self.processes.append(proc)
        return proc

    def _wait(self, proc: ManagedProcess, healthy: Callable[[], bool], deadline: float) -> None:
        while True:
            if not proc.running():
                raise ComponentFailed(proc.describe_failure())
            if healthy():
                return
            if time.monotonic() > deadline:
                raise ComponentFailed(proc.describe_failure() + "\n(timed out waiting for health)")
            time.sleep(HEALTH_POLL_S)

    def failed(self) -> ManagedProcess | None:
        """The first component that exited, if any (they should run until ``stop``)."""
        return next((p for p in self.processes if not p.running()), None)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            t0 = time.monotonic()
            proc.stop()
            log.info("%s stopped in %.1fs", proc.name, time.monotonic() - t0)

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.processes if p.pid is not None}

    def health(self) -> dict[str, bool]:
        return health(self.endpoints, self.pki.ca.cert, self.pki.admin.cert, self.pki.admin.key)

    def _etcd_healthy(self) -> bool:
        return etcd_healthy(self.endpoints.etcd)

    def _apiserver_ready(self) -> bool:
        return apiserver_ready(
            self.endpoints.apiserver, self.pki.ca.cert, self.pki.admin.cert, self.pki.admin.key
        )

    def _secure_healthy(self, url: str) -> bool:
        return secure_healthy(url)


# -- probes (module level: `python -m tests.cluster status` runs them from another process) ----


def etcd_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def apiserver_ready(url: str, ca: Path, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return _get_ok(url + "/readyz", ctx)


def secure_healthy(url: str) -> bool:
    # Their serving certificates are self-signed in memory; /healthz is open to anyone.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return _get_ok(url, ctx)


def health(endpoints: Endpoints, ca: Path, cert: Path, key: Path) -> dict[str, bool]:
    """Component -> healthy now."""
    return {
        "etcd": etcd_healthy(endpoints.etcd),
        "kube-apiserver": apiserver_ready(endpoints.apiserver, ca, cert, key),
        "kube-controller-manager": secure_healthy(endpoints.controller_manager_health),
        "kube-scheduler": secure_healthy(endpoints.scheduler_health),
    }


def endpoints_to_json(e: Endpoints) -> dict[str, object]:
    return asdict(e)


def _get_ok(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False
