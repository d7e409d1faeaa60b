"""Cluster DNS for real nodes: CoreDNS (its kubernetes plugin only) on the bridge address.

The process kubelet resolves headless-Service names with per-pod hosts files; a real kubelet
leaves that to cluster DNS. A client group's pods find rank 0 as
``<job>-<client>-0.<job>-<client>`` (``PET_MASTER_ADDR``), which only the search list
``<ns>.svc.cluster.local`` and a DNS server that knows the headless Service's records turn
into an address. CoreDNS runs on this machine, bound to the cluster's bridge address (port 53:
each cluster's bridge address is its own, so clusters side by side do not collide), reading
Services and EndpointSlices with the admin kubeconfig. Names outside ``cluster.local`` are
refused: pods of the lane need none.
"""

from __future__ import annotations

import secrets
import socket
import struct
from pathlib import Path

from tests.cluster.processes import ManagedProcess

CLUSTER_DOMAIN = "cluster.local"
COREFILE = """\
.:53 {{
    bind {address}
    errors
    kubernetes {domain} in-addr.arpa {{
        kubeconfig {kubeconfig}
        ttl 5
    }}
}}
"""


def write_corefile(dns_dir: Path, *, address: str, kubeconfig: Path) -> Path:
    dns_dir.mkdir(parents=True, exist_ok=True)
    path = dns_dir / "Corefile"
    path.write_text(COREFILE.format(address=address, domain=CLUSTER_DOMAIN, kubeconfig=kubeconfig))
    return path


def write_resolv_conf(dns_dir: Path) -> Path:
    """The kubelet's ``resolvConf``: no search domains or servers of this machine's, so a pod's
    resolv.conf holds only the cluster's (the kubelet adds them)."""
    dns_dir.mkdir(parents=True, exist_ok=True)
    path = dns_dir / "resolv.conf"
    path.write_text("")
    return path


def process(coredns: Path, corefile: Path, log: Path) -> ManagedProcess:
    return ManagedProcess(
        "coredns", [str(coredns), "-conf", str(corefile)], log, stop_timeout_s=5.0
    )


def answers(address: str, name: str = f"kubernetes.default.svc.{CLUSTER_DOMAIN}") -> bool:
    """Does the server at ``address``:53 answer an A query for ``name`` with an address?"""
    query_id = secrets.randbits(16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + b"\0\x01\0\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        try:
            s.sendto(packet, (address, 53))
            reply = s.recv(512)
        except OSError:
            return False
    if len(reply) < 12:
        return False
    reply_id, flags, _, answer_count = struct.unpack(">HHHH", reply[:8])
    return reply_id == query_id and flags & 0x000F == 0 and answer_count > 0
