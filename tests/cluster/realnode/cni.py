"""The CNI network of a real node: the cluster's own bridge, addresses from its reserved range.

Pods of a real node join the bridge the process kubelet's pods are on (``fkbr<slot>``), with
addresses from the slot's last /24 (``Slot.real_node_range``, which the process kubelet never
hands out), split between the real nodes so that each node's host-local IPAM owns its part.
The bridge address is the pods' gateway: traffic to a ClusterIP goes there and kube-proxy's
rules in this machine's netfilter send it on (this needs IP forwarding, see ``node.py``).
``portmap`` gives hostPort; ``loopback`` the pod's ``lo``.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from tests.cluster.network import SLOT_PREFIX_LEN, Slot

NETWORK_NAME = "fedkube"
MAX_REAL_NODES = 4


def node_range(slot: Slot, index: int) -> tuple[str, str]:
    """First and last pod address of real node ``index`` (0-based) in the slot's range."""
    if not 0 <= index < MAX_REAL_NODES:
        raise ValueError(f"real node index {index} is outside 0..{MAX_REAL_NODES - 1}")
    block = list(slot.real_node_range.subnets(new_prefix=26))[index]
    hosts = list(block.hosts())
    return str(hosts[0]), str(hosts[-1])


def conflist(slot: Slot, index: int, data_dir: Path) -> dict[str, object]:
    first, last = node_range(slot, index)
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": slot.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(data_dir),
                    "ranges": [
                        [
                            {
                                "subnet": str(
                                    ipaddress.ip_network(
                                        f"{slot.bridge_ip}/{SLOT_PREFIX_LEN}", strict=False
                                    )
                                ),
                                "rangeStart": first,
                                "rangeEnd": last,
                                "gateway": slot.bridge_ip,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write(conf_dir: Path, slot: Slot, index: int, data_dir: Path) -> Path:
    """Write the node's conflist (and nothing else: containerd takes the first file)."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "10-fedkube.conflist"
    path.write_text(json.dumps(conflist(slot, index, data_dir), indent=2) + "\n")
    return path
