"""The pod network: one Linux bridge per cluster, one network namespace + veth per pod.

Addresses come from the benchmark range 198.18.0.0/15 (RFC 2544), reserved for tests and never
routed on the Internet: pods get 198.18.0.0/16, cut into 16 "slots" of a /20 so that several
clusters (two shells, pytest-xdist workers) coexist. A slot is owned by whoever holds its lock
file (``flock``, released by the kernel when the owner dies), which is also how leftovers of a
crashed run are told apart from a live cluster's objects: same name prefix, free lock.

Nothing here routes or NATs: pods have only the on-link route of their slot, IP forwarding is
left as it is, so pod traffic reaches other pods and this machine's bridge address, nothing else.
A cluster may name extra host addresses (``ClusterConfig.extra_routes``: a MinIO shared by two
clusters listens on the first one's bridge address) that its pods reach through their own
bridge: a /32 route to the bridge address, which this machine owns and delivers locally.

Names (at most 15 characters, as Linux requires): bridge ``fkbr<slot>``, namespaces
``fk<slot>-<n>``, host-side veths ``fkv<slot>-<n>``. A pod's /etc/hosts lives at
``/etc/netns/<namespace>/hosts``, which ``ip netns exec`` bind-mounts over /etc/hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.errors import NetworkError

POD_SUPERNET = ipaddress.IPv4Network("198.18.0.0/16")
SERVICE_CIDR = "198.19.0.0/16"
"""Service ClusterIPs (the other half of the RFC 2544 range). Nothing routes them: there is no
kube-proxy, so in-cluster clients use KUBERNETES_SERVICE_HOST (the bridge address) instead."""
SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR).network_address + 1)
"""ClusterIP of the ``kubernetes`` Service (in the API server's certificate, as kubeadm does)."""
SLOT_PREFIX_LEN = 20
REAL_NODE_PREFIX_LEN = 24
"""The last /24 of each slot is left to real nodes (tests/cluster/realnode): their CNI
(bridge + host-local) hands out addresses there, on the same bridge, so their pods, the
process kubelet's pods and this machine share one L2 network without address clashes."""
SLOTS = 2 ** (SLOT_PREFIX_LEN - POD_SUPERNET.prefixlen)
NETNS_ETC = Path("/etc/netns")


def lock_dir() -> Path:
    """Slot locks: machine-wide (network names are), in the temp folder."""
    return Path(tempfile.gettempdir()) / "fedkube-netslots"


@dataclass(frozen=True)
class Slot:
    index: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        subnets = POD_SUPERNET.subnets(new_prefix=SLOT_PREFIX_LEN)
        for i, net in enumerate(subnets):
            if i == self.index:
                return ipaddress.IPv4Network(net)
        raise ValueError(f"slot {self.index} is outside 0..{SLOTS - 1}")

    @property
    def bridge_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def bridge(self) -> str:
        return f"fkbr{self.index}"

    def netns(self, n: int) -> str:
        return f"fk{self.index}-{n}"

    def veth(self, n: int) -> str:
        return f"fkv{self.index}-{n}"

    def pod_ip(self, n: int) -> str:
        """Address of the pod sandbox numbered ``n`` (1-based; the bridge has host 1)."""
        return str(self.subnet.network_address + 1 + n)

    @property
    def real_node_range(self) -> ipaddress.IPv4Network:
        """Addresses the process kubelet never uses: the CNI of the slot's real nodes."""
        return list(self.subnet.subnets(new_prefix=REAL_NODE_PREFIX_LEN))[-1]

    @property
    def capacity(self) -> int:
        """Sandboxes the process kubelet may number (host 1 is the bridge; the slot's last
        /24 belongs to real nodes)."""
        return self.subnet.num_addresses - self.real_node_range.num_addresses - 2


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its stdout; ``NetworkError`` (with stderr) on failure."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(
            f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}. "
            "The pod network needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2"
        )
    return result.stdout


class SlotLease:
    """Exclusive use of one slot for this process's lifetime (or until ``release``)."""

    def __init__(self, slot: Slot, fd: int) -> None:
        self.slot = slot
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _try_lock(index: int) -> int | None:
    lock_dir().mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir() / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire_slot() -> SlotLease:
    """Lock the first free slot and clear whatever a crashed owner left in it."""
    for index in range(SLOTS):
        fd = _try_lock(index)
        if fd is not None:
            lease = SlotLease(Slot(index), fd)
            cleanup_slot(lease.slot)
            return lease
    raise NetworkError(f"all {SLOTS} pod-network slots are in use; stop a cluster first")


@dataclass
class Leftovers:
    """Network objects (and the processes inside them) that carry a slot's name prefix."""

    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    etc_dirs: list[Path] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.netns or self.links or self.etc_dirs or self.pids)


def _netns_names() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _link_names() -> list[str]:
    names = []
    for line in ip("-o", "link", "show").splitlines():
        # "7: fkv0-1@if6: <BROADCAST,...": the name is the second field, minus any "@peer".
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def netns_pids(name: str) -> list[int]:
    out = ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def find_leftovers(slot: Slot) -> Leftovers:
    ns_prefix, veth_prefix = f"fk{slot.index}-", f"fkv{slot.index}-"
    found = Leftovers()
    found.netns = [n for n in _netns_names() if n.startswith(ns_prefix)]
    found.links = [n for n in _link_names() if n == slot.bridge or n.startswith(veth_prefix)]
    if NETNS_ETC.is_dir():
        found.etc_dirs = sorted(p for p in NETNS_ETC.iterdir() if p.name.startswith(ns_prefix))
    for name in found.netns:
        found.pids += netns_pids(name)
    return found


def cleanup_slot(slot: Slot) -> Leftovers:
    """Kill processes in the slot's namespaces and delete its namespaces, links and hosts files.

    Only call it for a slot you hold (or have checked is free): it removes everything with the
    slot's name prefix. Returns what it found.
    """
    found = find_leftovers(slot)
    for pid in found.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in found.netns:
        ip("netns", "delete", name, check=False)
    for name in found.links:
        ip("link", "delete", name, check=False)
    for path in found.etc_dirs:
        shutil.rmtree(path, ignore_errors=True)
    return found


def cleanup_stale() -> dict[int, Leftovers]:
    """Clear every slot nobody holds (leftovers of crashed runs); returns what was removed."""
    removed = {}
    for index in range(SLOTS):
        fd = _try_lock(index)
        if fd is None:
            continue
        try:
            found = cleanup_slot(Slot(index))
            if not found.empty():
                removed[index] = found
        finally:
            os.close(fd)
    return removed


@dataclass(frozen=True)
class Sandbox:
    """One pod's network: its namespace, address and hosts file."""

    number: int
    netns: str
    veth: str
    ip: str
    hosts_file: Path


class PodNetwork:
    """The bridge of one slot and the sandboxes on it."""

    def __init__(self, slot: Slot, routes: tuple[str, ...] = ()) -> None:
        self.slot = slot
        self.routes = routes
        """Host addresses off the pod network that pods reach through the bridge (a /32
        route each to the bridge address: this machine delivers them locally)."""
        self._lock = threading.Lock()
        self._next = 1
        self._in_use: set[int] = set()

    def setup(self) -> None:
        s = self.slot
        ip("link", "add", s.bridge, "type", "bridge")
        ip("addr", "add", f"{s.bridge_ip}/{SLOT_PREFIX_LEN}", "dev", s.bridge)
        ip("link", "set", s.bridge, "up")

    def teardown(self) -> None:
        cleanup_slot(self.slot)

    def _allocate(self) -> int:
        # Round-robin rather than lowest-free, so a new pod does not inherit the address (and
        # stale ARP entries) of the one that just went away.
        with self._lock:
            if len(self._in_use) >= self.slot.capacity:
                raise NetworkError(f"no free pod address left in {self.slot.subnet}")
            n = self._next
            while n in self._in_use:
                n = n % self.slot.capacity + 1
            self._in_use.add(n)
            self._next = n % self.slot.capacity + 1
            return n

    def create_sandbox(self, hosts_text: str) -> Sandbox:
        n = self._allocate()
        s = self.slot
        box = Sandbox(
            number=n,
            netns=s.netns(n),
            veth=s.veth(n),
            ip=s.pod_ip(n),
            hosts_file=NETNS_ETC / s.netns(n) / "hosts",
        )
        try:
            box.hosts_file.parent.mkdir(parents=True, exist_ok=True)
            box.hosts_file.write_text(hosts_text)
            peer = f"fkp{s.index}-{n}"
            ip("netns", "add", box.netns)
            ip("link", "add", box.veth, "type", "veth", "peer", "name", peer, "netns", box.netns)
            ip("link", "set", box.veth, "master", s.bridge, "up")
            ip("-n", box.netns, "link", "set", peer, "name", "eth0")
            ip("-n", box.netns, "addr", "add", f"{box.ip}/{SLOT_PREFIX_LEN}", "dev", "eth0")
            ip("-n", box.netns, "link", "set", "eth0", "up")
            ip("-n", box.netns, "link", "set", "lo", "up")
            for address in self.routes:
                ip("-n", box.netns, "route", "add", f"{address}/32", "via", s.bridge_ip)
        except Exception:
            self.destroy_sandbox(box)
            raise
        return box

    def destroy_sandbox(self, box: Sandbox) -> None:
        """Kill anything still inside, delete the namespace (its veth goes with it)."""
        for pid in netns_pids(box.netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ip("netns", "delete", box.netns, check=False)
        ip("link", "delete", box.veth, check=False)
        shutil.rmtree(box.hosts_file.parent, ignore_errors=True)
        with self._lock:
            self._in_use.discard(box.number)
