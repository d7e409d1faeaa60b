"""kube-proxy (iptables mode) for the real nodes: what makes ClusterIP Services work.

The process kubelet's pods never use a ClusterIP; real nodes' pods do, through the DNAT rules
kube-proxy writes into this machine's netfilter tables. Those tables are the machine's, not
the node's, so one kube-proxy serves every real node of a cluster, and only one real-node
cluster per machine may run at a time (``node.py`` holds a machine-wide lock for it).

``masqueradeAll``: a pod's packet to a ClusterIP is DNAT-ed on this machine and may go back
out on the same bridge to a pod next to the sender; without SNAT the answer would skip this
machine's conntrack and the sender would drop it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.cluster import kubeconfig
from tests.cluster.certs import KeyPair, issue_from
from tests.cluster.network import POD_SUPERNET
from tests.cluster.processes import ManagedProcess


def write(
    proxy_dir: Path,
    *,
    server: str,
    ca: KeyPair,
    node_name: str,
    node_ip: str,
    healthz_port: int,
    metrics_port: int,
) -> Path:
    client = issue_from(ca, proxy_dir / "pki" / "kube-proxy.crt", "system:kube-proxy", client=True)
    kc = kubeconfig.write(
        proxy_dir / "kube-proxy.kubeconfig",
        server=server,
        ca_cert=ca.cert,
        client=client,
        user="system:kube-proxy",
    )
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kc)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "clusterCIDR": str(POD_SUPERNET),
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "iptables": {"masqueradeAll": True, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # Leave the machine's conntrack table size alone (the default raises it).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "nodePortAddresses": [f"{node_ip}/32"],
    }
    path = proxy_dir / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def process(kube_proxy: Path, config: Path, log: Path) -> ManagedProcess:
    return ManagedProcess(
        "kube-proxy", [str(kube_proxy), f"--config={config}", "--v=1"], log, stop_timeout_s=5.0
    )


def cleanup(kube_proxy: Path, log: Path) -> None:
    """Remove every rule and chain kube-proxy wrote (``kube-proxy --cleanup``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.run(
            [str(kube_proxy), "--cleanup", "--v=1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=60,
        )


KUBELET_CHAINS = {
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"),
    "nat": ("KUBE-KUBELET-CANARY",),
    "mangle": ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"),
}
"""Chains a kubelet writes into this machine's tables (its canaries, the localnet firewall)."""


def cleanup_kubelet_chains() -> None:
    """Remove the kubelet's chains (and the jumps to them) once no real kubelet runs here."""
    for table, chains in KUBELET_CHAINS.items():
        for chain in chains:
            for parent in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"):
                while (
                    subprocess.run(
                        ["iptables", "-w", "-t", table, "-D", parent, "-j", chain],
                        capture_output=True,
                        check=False,
                    ).returncode
                    == 0
                ):
                    pass
            for op in ("-F", "-X"):
                subprocess.run(
                    ["iptables", "-w", "-t", table, op, chain], capture_output=True, check=False
                )
