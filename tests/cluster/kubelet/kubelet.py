"""The process kubelet: fake nodes whose pods run as local processes.

One object serves every node of the cluster (they all run on this machine): it registers the
nodes, keeps their Leases and Ready condition fresh, watches the pods bound to them and gives
each pod a ``PodWorker`` thread. See ``worker.py`` for what a pod's life looks like.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from tests.cluster.certs import Pki
from tests.cluster.config import KubeletSettings, NodeSpec
from tests.cluster.errors import ComponentFailed
from tests.cluster.kubelet.container import MountPoints
from tests.cluster.kubelet.context import PodContext
from tests.cluster.kubelet.hosts import HostsTable
from tests.cluster.kubelet.logserver import LogServer
from tests.cluster.kubelet.node import NodeAgent, allocatable
from tests.cluster.kubelet.refs import ApiRefLookup
from tests.cluster.kubelet.volumes import ApiTokenSource
from tests.cluster.kubelet.worker import PodWorker
from tests.cluster.logs import LogStore
from tests.cluster.network import PodNetwork
from tests.cluster.rest import ApiError, Rest

log = logging.getLogger(__name__)

PASS_THROUGH_ENV = ("LANG", "LC_ALL", "TZ", "TMPDIR")
"""Host variables a pod inherits (the rest of its environment comes from its spec)."""


def base_env(settings: KubeletSettings) -> dict[str, str]:
    """The "image" environment: the repo's virtualenv first on PATH, like an image's ENV."""
    path = os.pathsep.join([*settings.path_prefix, os.environ.get("PATH", "/usr/bin:/bin")])
    env = {"PATH": path}
    env.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    if os.environ.get("PYTHONPATH"):
        # Relative entries (".:operator") must mean the repo, whatever a pod's workingDir.
        root = Path(settings.default_workdir)
        env["PYTHONPATH"] = os.pathsep.join(
            str((root / p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p
        )
    return env


def service_env(host: str, port: int) -> dict[str, str]:
    """What the ``kubernetes`` Service's env vars would say, pointing at the real endpoint."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


class Kubelet:
    def __init__(
        self,
        *,
        api: Rest,
        watch_api: Rest,
        nodes: tuple[NodeSpec, ...],
        settings: KubeletSettings,
        network: PodNetwork,
        pki: Pki,
        state_dir: Path,
        logs: LogStore,
        apiserver_host: str,
        apiserver_port: int,
    ) -> None:
        self.api = api
        self.watch_api = watch_api
        self.nodes = nodes
        self.settings = settings
        self.network = network
        self.host_ip = network.slot.bridge_ip
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._node_names = {n.name for n in nodes}
        self.mountpoints = MountPoints()
        self.log_server = LogServer(
            self.host_ip, pki.kubelet_serving, pki.ca.cert, logs, self._container_running
        )
        self.ctx = PodContext(
            api=api,
            network=network,
            hosts=HostsTable(),
            lookup=ApiRefLookup(api),
            tokens=ApiTokenSource(api),
            mountpoints=self.mountpoints,
            logs=logs,
            settings=settings,
            pods_dir=state_dir / "pods",
            host_ip=self.host_ip,
            base_env=base_env(settings),
            service_env=service_env(apiserver_host, apiserver_port),
            allocatable={n.name: allocatable(n) for n in nodes},
            forget=self._forget,
        )
        self.agents = [
            NodeAgent(api, n, self.host_ip, self.log_server.port, settings.lease_duration_s)
            for n in nodes
        ]
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.log_server.start()
        for agent in self.agents:
            agent.register()
        for target, name in (
            (self._heartbeat_loop, "kubelet-heartbeat"),
            (self._watch_loop, "kubelet-watch"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def wait_ready(self, deadline: float) -> None:
        """Until every node is Ready and carries no not-ready/unreachable taint."""
        bad = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
        while True:
            pending = []
            for name in sorted(self._node_names):
                node = self.api.get(f"/api/v1/nodes/{name}")
                ready = any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in node.get("status", {}).get("conditions", [])
                )
                tainted = any(t["key"] in bad for t in node.get("spec", {}).get("taints") or [])
                if not ready or tainted:
                    pending.append(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ComponentFailed(f"nodes {pending} did not become Ready and untainted")
            time.sleep(0.2)

    def stop(self) -> None:
        """Kill every pod (short grace), free their sandboxes, stop serving."""
        self._stop.set()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.shutdown()
        for w in workers:
            w.join(timeout=self.settings.shutdown_grace_s + 10)
        self.log_server.stop()
        log.info("kubelet stopped (%d pods were running)", len(workers))

    # -- internals ----------------------------------------------------------------------------

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._workers.pop(uid, None)
            self._finished.add(uid)

    def _container_running(self, namespace: str, pod: str, container: str) -> bool:
        with self._lock:
            workers = list(self._workers.values())
        return any(
            w.namespace == namespace and w.pod_name == pod and w.running_container(container)
            for w in workers
        )

    def _heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(self.settings.lease_renew_s):
            status_due = time.monotonic() - last_status >= self.settings.status_update_s
            for agent in self.agents:
                try:
                    agent.renew_lease()
                    if status_due:
                        agent.heartbeat()
                except (ApiError, OSError) as e:
                    log.warning("node %s: heartbeat failed: %s", agent.spec.name, e)
            if status_due:
                last_status = time.monotonic()

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        if pod.get("spec", {}).get("nodeName") not in self._node_names:
            return
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    worker.gone()
                return
            if worker is not None:
                worker.update(pod)
                return
            if uid in self._finished or self._stop.is_set():
                return
            worker = PodWorker(self.ctx, pod)
            self._workers[uid] = worker
        worker.start()

    def _watch_loop(self) -> None:
        selector = "spec.nodeName!="
        while not self._stop.is_set():
            try:
                listing = self.watch_api.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self._handle("MODIFIED", pod)
                with self._lock:
                    vanished = [w for uid, w in self._workers.items() if uid not in seen]
                for w in vanished:
                    w.gone()
                version = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    for event in self.watch_api.watch(
                        "/api/v1/pods",
                        fieldSelector=selector,
                        resourceVersion=version,
                        allowWatchBookmarks="true",
                    ):
                        if self._stop.is_set():
                            return
                        obj = event.get("object", {})
                        if event["type"] == "ERROR":
                            raise ApiError(
                                int(obj.get("code", 500)),
                                "WATCH",
                                "/api/v1/pods",
                                str(obj.get("message", "")),
                            )
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self._handle(event["type"], obj)
            except (ApiError, OSError, ValueError) as e:
                if self._stop.is_set():
                    return
                log.info("pod watch restarts after: %s", e)
                time.sleep(0.5)
            except Exception:
                # A bug must not silently stop all pods from running: log it and relist.
                log.exception("pod watch failed; relisting")
                time.sleep(1.0)
