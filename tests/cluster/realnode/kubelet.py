"""The real kubelet of one node: its configuration file, kubeconfig, certificates and flags.

Built from the same Kubernetes module as the control plane (``kubernetes-node`` in
build-binaries.sh). What differs from a production node, and why:

- ``cgroupsPerQOS: false`` and no node-allocatable enforcement: several kubelets (and
  clusters) may share this machine's cgroups, so none may claim ``/kubepods``; each
  container still gets its own cgroup with its memory and CPU limits (runc enforces them);
- eviction thresholds near zero and image garbage collection off: the machine's disk and
  memory are shared, and an evicted pod or a collected image (nothing can be pulled back)
  would fail a test for a reason outside it;
- ``failCgroupV1: false``: the machines this runs on may still mount cgroup v1;
- cluster DNS is the lane's CoreDNS (dns.py), and the machine's own resolv.conf is not
  passed on: pods resolve cluster names only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.cluster import kubeconfig
from tests.cluster.certs import KeyPair, issue_from
from tests.cluster.processes import ManagedProcess


@dataclass(frozen=True)
class KubeletPaths:
    config: Path
    kubeconfig: Path
    root_dir: Path
    log: Path


def write(
    node_dir: Path,
    *,
    node_name: str,
    server: str,
    ca: KeyPair,
    node_ip: str,
    port: int,
    healthz_port: int,
    runtime_socket: Path,
    cluster_dns: str,
    resolv_conf: Path,
) -> KubeletPaths:
    pki = node_dir / "pki"
    client = issue_from(
        ca,
        pki / "kubelet-client.crt",
        f"system:node:{node_name}",
        orgs=("system:nodes",),
        client=True,
    )
    serving = issue_from(ca, pki / "kubelet-serving.crt", node_name, server=True, ips=(node_ip,))
    kc = kubeconfig.write(
        node_dir / "kubelet.kubeconfig",
        server=server,
        ca_cert=ca.cert,
        client=client,
        user=f"system:node:{node_name}",
    )
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "failCgroupV1": False,
        "clusterDomain": "cluster.local",
        "clusterDNS": [cluster_dns],
        "resolvConf": str(resolv_conf),
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "localStorageCapacityIsolation": False,
        "kernelMemcgNotification": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "maxPods": 60,
        "podPidsLimit": -1,
        "protectKernelDefaults": False,
        "staticPodPath": "",
        # Status shows up in tests sooner than a real node's defaults would let it.
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "containerLogMaxSize": "10Mi",
        "containerLogMaxFiles": 2,
        "logging": {"format": "text"},
    }
    path = node_dir / "kubelet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return KubeletPaths(path, kc, node_dir / "kubelet", node_dir / "logs" / "kubelet.log")


def process(
    kubelet: Path,
    paths: KubeletPaths,
    *,
    node_name: str,
    node_ip: str,
    labels: dict[str, str],
    taints: tuple[str, ...],
) -> ManagedProcess:
    argv = [
        str(kubelet),
        f"--config={paths.config}",
        f"--kubeconfig={paths.kubeconfig}",
        f"--root-dir={paths.root_dir}",
        f"--cert-dir={paths.root_dir / 'pki'}",
        f"--hostname-override={node_name}",
        f"--node-ip={node_ip}",
        "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "--v=1",
    ]
    if taints:
        argv.append("--register-with-taints=" + ",".join(taints))
    return ManagedProcess("kubelet", argv, paths.log, stop_timeout_s=10.0)
