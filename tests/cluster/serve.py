"""The cluster daemon: ``python -m tests.cluster serve --state-dir DIR``.

One process owns one cluster from start to stop: the pod-network slot and bridge, the PKI, the
four control-plane processes and the process kubelet (threads). It writes ``cluster.json``
into the state folder once everything is healthy and tears everything down, in reverse order,
on SIGTERM/SIGINT/SIGHUP, when a component dies, or when its parent (pytest) is gone. If it is
killed outright, the kernel kills the control plane (PDEATHSIG) and the next cluster to start
removes the pods and network objects left in the slot (``network.cleanup_stale``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tests.cluster import binaries, certs, network
from tests.cluster.config import ClusterConfig
from tests.cluster.controlplane import ControlPlane, endpoints_to_json
from tests.cluster.errors import ClusterError, ComponentFailed
from tests.cluster.kubelet import Kubelet
from tests.cluster.logs import LogStore
from tests.cluster.rest import ApiError, Credentials, Rest

log = logging.getLogger("fedkube.cluster")

INFO_FILE = "cluster.json"
PID_FILE = "serve.pid"
FAILED_FILE = "failed.txt"
MONITOR_S = 1.0
FRESH = (
    "etcd",
    "pki",
    "pods",
    "kubeconfigs",
    "logs",
    "apiserver-certs",
    "admin.kubeconfig",
    "realnodes",
)
"""What a start removes first: every cluster starts empty (a stale etcd would hold objects
signed by the previous PKI)."""


def _wait_for_default_service_account(api: Rest, deadline: float) -> None:
    """Pods cannot be created in a namespace before its ``default`` ServiceAccount exists."""
    while True:
        try:
            api.get("/api/v1/namespaces/default/serviceaccounts/default")
            api.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
            return
        except (ApiError, ConnectionError) as e:
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    "the controller manager did not create the default ServiceAccount and "
                    f"kube-root-ca.crt in time: {e}"
                ) from e
            time.sleep(0.2)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Daemon:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.state = config.state_dir
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self._starting = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_reason = f"signal {signal.Signals(signum).name}"
        self.stop_event.set()
        if self._starting:
            # Unwind the start (the ExitStack tears down what is already up).
            raise ComponentFailed(f"start interrupted by {self.stop_reason}")

    def _watch_parent(self, pid: int) -> None:
        while not self.stop_event.wait(1.0):
            if not _alive(pid):
                self.stop_reason = f"parent process {pid} is gone"
                self.stop_event.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if self.config.parent_pid:
            threading.Thread(
                target=self._watch_parent, args=(self.config.parent_pid,), daemon=True
            ).start()
        (self.state / INFO_FILE).unlink(missing_ok=True)
        (self.state / FAILED_FILE).unlink(missing_ok=True)
        _write_atomic(self.state / PID_FILE, f"{os.getpid()}\n")
        try:
            with contextlib.ExitStack() as teardown:
                self._starting = True
                try:
                    self._start(teardown)
                finally:
                    self._starting = False
                self._monitor()
                log.info("stopping: %s", self.stop_reason or "requested")
            log.info("stopped cleanly")
            return 0
        except ClusterError as e:
            log.error("%s", e)
            _write_atomic(self.state / FAILED_FILE, f"{e}\n")
            return 1
        except Exception as e:
            log.exception("cluster daemon failed")
            _write_atomic(self.state / FAILED_FILE, f"{type(e).__name__}: {e}\n")
            return 1
        finally:
            (self.state / INFO_FILE).unlink(missing_ok=True)
            (self.state / PID_FILE).unlink(missing_ok=True)

    def _start(self, teardown: contextlib.ExitStack) -> None:
        started = time.monotonic()
        deadline = started + self.config.ready_timeout_s
        for name in FRESH:
            path = self.state / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        bins = binaries.ensure()
        stale = network.cleanup_stale()
        if stale:
            log.info("removed leftovers of crashed clusters in slots %s", sorted(stale))
        lease = network.acquire_slot()
        teardown.callback(lease.release)
        pod_net = network.PodNetwork(lease.slot, self.config.extra_routes)
        teardown.callback(pod_net.teardown)
        pod_net.setup()
        bridge_ip = lease.slot.bridge_ip
        log.info(
            "pod network %s on bridge %s (%s)", lease.slot.subnet, lease.slot.bridge, bridge_ip
        )
        pki = certs.generate(
            self.state / "pki",
            apiserver_ips=(bridge_ip,),
            service_ip=network.SERVICE_IP,
            kubelet_ips=(bridge_ip,),
        )
        cp = ControlPlane(bins, pki, self.state, bridge_ip, audit_log=self.config.audit_log)
        teardown.callback(cp.stop)
        cp.start(deadline)
        log.info("control plane healthy after %.1fs", time.monotonic() - started)
        creds = Credentials(cp.endpoints.apiserver, pki.ca.cert, pki.admin.cert, pki.admin.key)
        api, watch_api = Rest(creds), Rest(creds, pool_size=2)
        logs = LogStore(self.state / "logs" / "pods")
        kubelet = Kubelet(
            api=api,
            watch_api=watch_api,
            nodes=self.config.nodes,
            settings=self.config.kubelet,
            network=pod_net,
            pki=pki,
            state_dir=self.state,
            logs=logs,
            apiserver_host=cp.endpoints.apiserver_host,
            apiserver_port=cp.endpoints.apiserver_port,
        )
        teardown.callback(kubelet.stop)
        kubelet.start()
        kubelet.wait_ready(deadline)
        log.info("nodes Ready after %.1fs", time.monotonic() - started)
        _wait_for_default_service_account(api, deadline)
        self.control_plane = cp
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "state_dir": str(self.state),
            "kubeconfig": str(cp.admin_kubeconfig),
            "server": cp.endpoints.apiserver,
            "bridge_ip": bridge_ip,
            "pod_subnet": str(lease.slot.subnet),
            "slot": lease.slot.index,
            "bin_dirs": [str(p) for p in bins.path_dirs()],
            "kubectl": str(bins.path("kubectl")),
            "helm": str(bins.path("helm")),
            "logs_dir": str(logs.root),
            "nodes": [n.name for n in self.config.nodes],
            "pids": cp.pids(),
            "endpoints": endpoints_to_json(cp.endpoints),
            "pki": {"ca": str(pki.ca.cert), "cert": str(pki.admin.cert), "key": str(pki.admin.key)},
            "ready_seconds": 0.0,
            "audit_log": str(cp.audit_log) if cp.audit_log else "",
        }
        if self.config.real_nodes:
            self._start_real_nodes(info, teardown)
            info["nodes"] += list(self.config.real_nodes)
        ready_s = time.monotonic() - started
        info["ready_seconds"] = round(ready_s, 2)
        _write_atomic(self.state / INFO_FILE, json.dumps(info, indent=2) + "\n")
        log.info("cluster ready in %.1fs", ready_s)

    def _start_real_nodes(self, info: dict[str, Any], teardown: contextlib.ExitStack) -> None:
        """Join the real-kubelet nodes (``make cluster-up-real``); they stop before the control
        plane does, taking their containers, Node objects and iptables rules with them."""
        from tests.cluster.launcher import ClusterInfo
        from tests.cluster.realnode import images
        from tests.cluster.realnode.node import RealNodes

        started = time.monotonic()
        bins = binaries.ensure((*binaries.REAL_NODE_COMPONENTS, "minio"))
        lane = images.lane_images(binaries.cache_root() / "images" / "lane", bins.path("minio"))
        nodes = RealNodes(
            ClusterInfo.from_dict(info), self.config.real_nodes, self.state / "realnodes",
            archives=lane, lock_timeout_s=10.0,
        )  # fmt: skip
        nodes.start()
        teardown.callback(nodes.stop)
        log.info("real nodes %s Ready after %.1fs", ", ".join(self.config.real_nodes),
                 time.monotonic() - started)  # fmt: skip
        archives = [Path(a) for a in self.config.real_node_images]
        missing = [str(a) for a in archives if not a.is_file()]
        if missing:
            raise ComponentFailed(f"image archives not found: {', '.join(missing)}")
        if archives:
            size_gb = sum(a.stat().st_size for a in archives) / 1e9
            log.info("importing %d image archives (%.1f GB) into the real nodes: about a minute "
                     "per 2 GB", len(archives), size_gb)  # fmt: skip
            nodes.import_images(archives)

    def _monitor(self) -> None:
        while not self.stop_event.wait(MONITOR_S):
            dead = self.control_plane.failed()
            if dead is not None:
                raise ComponentFailed(dead.describe_failure())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(state_dir: Path) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return Daemon(ClusterConfig.load(state_dir)).run()
