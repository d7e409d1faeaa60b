"""Per-pod /etc/hosts files that stand in for cluster DNS.

Kubernetes DNS gives a pod with ``hostname`` and ``subdomain`` (the name of a headless
Service) the name ``<hostname>.<subdomain>.<namespace>.svc.cluster.local``; pods of the same
namespace reach it as ``<hostname>.<subdomain>`` through their search path. Here every pod's
hosts file lists those names for every running pod that has a subdomain (short form for the
same namespace), plus its own name and ``hostAliases``. When a pod starts or stops, every hosts
file is rewritten *in place* (same inode): ``ip netns exec`` bind-mounted it over /etc/hosts
for processes already running, and a new inode would not be seen by them.

Unlike real DNS, a name resolves as soon as the pod has an address, whether or not the Service
exists. A headless Service's own name (all pod addresses) is not served.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"

_HEADER = """\
# Kubernetes-managed hosts file (fedkube process kubelet): cluster DNS names of pods.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class HostEntry:
    uid: str
    namespace: str
    hostname: str
    subdomain: str
    ip: str
    file: Path
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())
    """``hostAliases``: (ip, hostnames) pairs written verbatim into this pod's file."""

    @property
    def fqdn(self) -> str:
        if not self.subdomain:
            return ""
        return f"{self.hostname}.{self.subdomain}.{self.namespace}.svc.{CLUSTER_DOMAIN}"


def render(me: HostEntry, peers: Iterable[HostEntry]) -> str:
    lines = [_HEADER.rstrip("\n")]
    # Its own short name too: a group's rank 0 reaches its own rendezvous by the same name as
    # its peers do (PET_MASTER_ADDR=<hostname>.<subdomain>).
    own = [me.fqdn, f"{me.hostname}.{me.subdomain}", me.hostname] if me.fqdn else [me.hostname]
    lines.append(f"{me.ip}\t" + "\t".join(own))
    for peer in sorted(peers, key=lambda p: (p.namespace, p.hostname, p.uid)):
        if peer.uid == me.uid or not peer.subdomain:
            continue
        names = [peer.fqdn]
        if peer.namespace == me.namespace:
            names.append(f"{peer.hostname}.{peer.subdomain}")
        lines.append(f"{peer.ip}\t" + "\t".join(names))
    if me.aliases:
        lines.append("# Entries added by HostAliases.")
        lines += [f"{ip}\t" + "\t".join(names) for ip, names in me.aliases]
    return "\n".join(lines) + "\n"


class HostsTable:
    """Every running pod's entry; keeps all hosts files consistent with it."""

    def __init__(self) -> None:
        self._entries: dict[str, HostEntry] = {}
        self._lock = threading.Lock()

    def add(self, entry: HostEntry) -> None:
        with self._lock:
            self._entries[entry.uid] = entry
            self._rewrite()

    def remove(self, uid: str) -> None:
        with self._lock:
            if self._entries.pop(uid, None) is not None:
                self._rewrite()

    def text_for(self, entry: HostEntry) -> str:
        with self._lock:
            return render(entry, [*self._entries.values(), entry])

    def _rewrite(self) -> None:
        entries = list(self._entries.values())
        for entry in entries:
            text = render(entry, entries)
            try:
                # "w" truncates the existing file: the inode the pod has mounted stays the same.
                with entry.file.open("w") as f:
                    f.write(text)
            except FileNotFoundError:
                continue  # the sandbox is being torn down
