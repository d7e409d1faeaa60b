"""Real nodes joining a running test cluster: containerd + runc + CNI, the real kubelet, kube-proxy.

``RealNodes(info, names, work_dir).start()`` adds nodes run by the real kubelet to the
cluster of ``info`` (a ``ClusterInfo``), next to the process kubelet's nodes; ``stop()``
removes them again (their pods' sandboxes, the Node objects, kube-proxy's rules). CoreDNS
answers their pods' cluster names (dns.py). Everything a node needs is written under
``work_dir/<node>``: containerd's config, root, state and socket, the CNI conflist and IPAM
state, the kubelet's config, certificates and root folder, and the logs. The machine itself
is changed in two places only, both undone by ``stop``: IP forwarding is switched on (pods
reach ClusterIPs through this machine), and the iptables chains of kube-proxy and the kubelet.

Real nodes carry the label ``fedkube.io/real-node=true`` and the taint
``fedkube.io/real-node=true:NoSchedule``: a test that wants real containers selects and
tolerates them (``placement()``), and every other pod stays on the process kubelet, which
starts pods in milliseconds and needs no images.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import binaries
from tests.cluster.certs import KeyPair
from tests.cluster.errors import ComponentFailed
from tests.cluster.launcher import ClusterInfo
from tests.cluster.network import Slot
from tests.cluster.processes import ManagedProcess, free_port, tail
from tests.cluster.realnode import cni, containerd, dns, images, kubelet, proxy
from tests.cluster.rest import ApiError, Credentials, Rest

log = logging.getLogger(__name__)

REAL_NODE_LABEL = "fedkube.io/real-node"
TAINT = f"{REAL_NODE_LABEL}=true:NoSchedule"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
POLL_S = 0.5


def placement() -> dict[str, Any]:
    """Pod spec fields that put a pod on a real node (and only there)."""
    return {
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
    }


def machine_lock_path() -> Path:
    return Path(tempfile.gettempdir()) / "fedkube-realnode.lock"


@dataclass
class _Node:
    name: str
    index: int
    dir: Path
    containerd: ManagedProcess
    kubelet: ManagedProcess
    socket: Path


class RealNodes:
    """Real-kubelet nodes of one cluster (see the module docstring)."""

    def __init__(
        self,
        info: ClusterInfo,
        names: Iterable[str],
        work_dir: Path,
        *,
        archives: Iterable[Path] = (),
        lock_timeout_s: float = 900.0,
    ) -> None:
        self.info = info
        self.names = tuple(names)
        if not 1 <= len(self.names) <= cni.MAX_REAL_NODES:
            raise ValueError(f"1 to {cni.MAX_REAL_NODES} real nodes, not {len(self.names)}")
        self.work_dir = work_dir
        self.archives = list(archives)
        self.lock_timeout_s = lock_timeout_s
        self.slot = Slot(info.slot)
        self.nodes: list[_Node] = []
        self.kube_proxy: ManagedProcess | None = None
        self.coredns: ManagedProcess | None = None
        self._lock_fd: int | None = None
        self._ip_forward_before: str | None = None
        pki = info.state_dir / "pki"
        self.ca = KeyPair(pki / "ca.crt", pki / "ca.key")
        self.api = Rest(
            Credentials(
                info.server, Path(info.pki["ca"]), Path(info.pki["cert"]), Path(info.pki["key"])
            )
        )
        self.bins = binaries.locate()

    # -- start --------------------------------------------------------------------------------

    def start(self, timeout_s: float = 240.0) -> None:
        """Start every node and kube-proxy; return once the nodes are Ready. On failure,
        everything already started is stopped and ``ComponentFailed`` names the cause."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        tools = containerd.find_tools()
        for name in self.names:
            containerd.check_socket_path(self.work_dir / name)
        self._acquire_machine_lock()
        deadline = time.monotonic() + timeout_s
        self._enable_ip_forward()
        kubelet_bin = self.bins.path("kubelet")
        kube_proxy = self.bins.path("kube-proxy")
        # Holding the lock, whatever a real-node lane left behind here is from a crashed run.
        _kill_stale_shims()
        proxy.cleanup(kube_proxy, self.work_dir / "logs" / "kube-proxy.log")
        proxy.cleanup_kubelet_chains()
        cni_bin = self.bins.component_dir("cni")
        resolv_conf = self._start_dns(deadline)
        for index, name in enumerate(self.names):
            node_dir = self.work_dir / name
            if node_dir.exists():
                shutil.rmtree(node_dir)
            conf_dir = cni.write(
                node_dir / "cni" / "net.d", self.slot, index, node_dir / "cni" / "ipam"
            )
            config = containerd.write_config(
                node_dir,
                runc=tools["runc"],
                cni_bin=cni_bin,
                cni_conf=conf_dir.parent,
                pause_image=images.PAUSE_IMAGE,
            )
            ctrd = containerd.process(
                tools["containerd"], config, node_dir / "logs" / "containerd.log"
            )
            ctrd.start()
            node = _Node(
                name=name,
                index=index,
                dir=node_dir,
                containerd=ctrd,
                kubelet=ManagedProcess("kubelet", ["true"], node_dir / "logs" / "kubelet.log"),
                socket=containerd.socket_path(node_dir),
            )
            self.nodes.append(node)
        for node in self.nodes:
            self._wait(
                node.containerd,
                lambda n=node: self._ctr(n, "version").returncode == 0,
                deadline,
                "containerd to answer",
            )
            self.import_images(self.archives, nodes=[node])
            paths = kubelet.write(
                node.dir,
                node_name=node.name,
                server=self.info.server,
                ca=self.ca,
                node_ip=self.info.bridge_ip,
                port=free_port(self.info.bridge_ip),
                healthz_port=free_port(),
                runtime_socket=node.socket,
                cluster_dns=self.info.bridge_ip,
                resolv_conf=resolv_conf,
            )
            node.kubelet = kubelet.process(
                kubelet_bin,
                paths,
                node_name=node.name,
                node_ip=self.info.bridge_ip,
                labels={REAL_NODE_LABEL: "true"},
                taints=(TAINT,),
            )
            node.kubelet.start()
        for node in self.nodes:
            self._wait(
                node.kubelet,
                lambda n=node: self._node_ready(n.name),
                deadline,
                f"node {node.name} to be Ready",
            )
        self._start_kube_proxy(kube_proxy, deadline)

    def _start_dns(self, deadline: float) -> Path:
        dns_dir = self.work_dir / "dns"
        corefile = dns.write_corefile(
            dns_dir, address=self.info.bridge_ip, kubeconfig=self.info.kubeconfig
        )
        self.coredns = dns.process(
            self.bins.path("coredns"), corefile, self.work_dir / "logs" / "coredns.log"
        )
        self.coredns.start()
        self._wait(
            self.coredns, lambda: dns.answers(self.info.bridge_ip), deadline, "CoreDNS to answer"
        )
        return dns.write_resolv_conf(dns_dir)

    def _start_kube_proxy(self, kube_proxy: Path, deadline: float) -> None:
        proxy_dir = self.work_dir / "kube-proxy"
        healthz = free_port()
        config = proxy.write(
            proxy_dir,
            server=self.info.server,
            ca=self.ca,
            node_name=self.names[0],
            node_ip=self.info.bridge_ip,
            healthz_port=healthz,
            metrics_port=free_port(),
        )
        self.kube_proxy = proxy.process(
            kube_proxy, config, self.work_dir / "logs" / "kube-proxy.log"
        )
        self.kube_proxy.start()
        self._wait(
            self.kube_proxy,
            lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"),
            deadline,
            "kube-proxy to sync its rules",
        )

    def _acquire_machine_lock(self) -> None:
        path = machine_lock_path()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise ComponentFailed(
                        f"another real-node cluster holds {path} (kube-proxy's rules are "
                        f"machine-wide, so one runs at a time); waited {self.lock_timeout_s:.0f}s"
                    ) from None
                time.sleep(1.0)
        self._lock_fd = fd

    def _enable_ip_forward(self) -> None:
        self._ip_forward_before = IP_FORWARD.read_text().strip()
        if self._ip_forward_before != "1":
            IP_FORWARD.write_text("1\n")

    def _wait(self, proc: ManagedProcess, ready: Any, deadline: float, what: str) -> None:
        while True:
            if not proc.running():
                raise ComponentFailed(f"waiting for {what}: {proc.describe_failure()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    f"timed out waiting for {what}; last lines of {proc.log_path}:\n"
                    f"{tail(proc.log_path, 40)}"
                )
            time.sleep(POLL_S)

    def _node_ready(self, name: str) -> bool:
        try:
            node = self.api.get(f"/api/v1/nodes/{name}")
        except (ApiError, ConnectionError):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # -- images -------------------------------------------------------------------------------

    def _ctr(
        self, node: _Node, *args: str, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(node.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def import_images(self, archives: Iterable[Path], nodes: Iterable[_Node] | None = None) -> None:
        """``ctr -n k8s.io images import`` each archive (OCI or docker-archive) on each node."""
        for node in list(nodes) if nodes is not None else self.nodes:
            for archive in archives:
                t0 = time.monotonic()
                result = self._ctr(node, "images", "import", "--no-unpack=false", str(archive))
                if result.returncode != 0:
                    raise ComponentFailed(
                        f"importing {archive} into {node.name}'s containerd failed: "
                        f"{result.stderr.strip() or result.stdout.strip()}"
                    )
                log.info("%s: imported %s in %.1fs", node.name, archive.name, time.monotonic() - t0)

    # -- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the kubelets, containerd (and the shims and containers it started), CoreDNS
        and kube-proxy; delete the Node objects; remove the iptables rules; put IP forwarding
        back. Safe to call twice. A pod's network goes with its namespace: once its processes
        are gone and its namespace file is unmounted, the kernel removes its veth."""
        for node in self.nodes:
            node.kubelet.stop()
            node.containerd.stop()
            _kill_shims(node.socket)
            _unmount_under(node.dir)
            # Imported images take gigabytes (the runtime image: torch); pytest keeps the
            # last runs' temp folders, so they go now rather than with the folder.
            shutil.rmtree(node.dir / "containerd", ignore_errors=True)
            with contextlib.suppress(ApiError, ConnectionError):
                self.api.delete(f"/api/v1/nodes/{node.name}")
        self.nodes = []
        if self.coredns is not None:
            self.coredns.stop()
            self.coredns = None
        if self.kube_proxy is not None:
            self.kube_proxy.stop()
            self.kube_proxy = None
            proxy.cleanup(self.bins.path("kube-proxy"), self.work_dir / "logs" / "kube-proxy.log")
        proxy.cleanup_kubelet_chains()
        if self._ip_forward_before is not None and self._ip_forward_before != "1":
            with contextlib.suppress(OSError):
                IP_FORWARD.write_text(self._ip_forward_before + "\n")
        self._ip_forward_before = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.api.close()


STALE_SOCKET = re.compile(r"/realnodes\d*/[^/]+/containerd/containerd\.sock$")
"""The containerd socket of a real node started by the ``real_nodes`` fixture (its layout)."""


def _shims() -> Iterator[tuple[int, str]]:
    """(pid, containerd address) of every containerd shim on this machine."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"containerd-shim-runc-v2") or b"-address" not in argv:
            continue
        i = argv.index(b"-address")
        if i + 1 < len(argv):
            yield int(proc.name), argv[i + 1].decode(errors="replace")


def _kill_tree(pid: int) -> None:
    for p in _tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _kill_shims(socket: Path) -> None:
    """SIGKILL the containerd shims this node's containerd started (they outlive it, and
    their containers with them) and every process below them."""
    for pid, address in _shims():
        if address == str(socket):
            _kill_tree(pid)


def _kill_stale_shims() -> None:
    """Shims (and their containers) of real nodes whose test run died without its teardown."""
    for pid, address in _shims():
        if STALE_SOCKET.search(address):
            log.info("killing the shim of a crashed real node (%s)", address)
            _kill_tree(pid)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, children first."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            for child in text.split():
                children += _tree(int(child))
    except OSError:
        pass
    return [*children, pid]


def _unmount_under(root: Path) -> None:
    """Unmount what containerd left mounted below ``root`` (deepest first)."""
    prefix = str(root.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    targets = [line.split()[4] for line in lines if line.split()[4].startswith(prefix)]
    for target in sorted(set(targets), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
