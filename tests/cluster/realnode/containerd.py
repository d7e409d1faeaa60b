"""containerd for one real node: its own config, root, state and socket in the node's folder.

Nothing under /etc/containerd, /var/lib/containerd or /run/containerd is read or written, so
the node coexists with a containerd the machine may run for itself. Settings that matter:

- ``restrict_oom_score_adj = true``: the CRI plugin otherwise tries to lower the oom_score_adj
  of containers below its own, which an unprivileged or nested environment refuses;
- the ``cgroupfs`` cgroup driver (``SystemdCgroup = false``): the kubelet uses it too, and no
  systemd is needed;
- ``sandbox_image``: the locally built pause image (images.py), since nothing is pulled;
- the CNI binaries and the node's own conflist (cni.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cluster.errors import ComponentFailed
from tests.cluster.processes import ManagedProcess

CONFIG_TEMPLATE = """\
version = 2
root = "{root}"
state = "{state}"
oom_score = 0

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def find_tools() -> dict[str, str]:
    """containerd, ctr and runc from the machine (Debian: ``apt-get install containerd runc``)."""
    found = {name: shutil.which(name) for name in ("containerd", "ctr", "runc")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ComponentFailed(
            f"{', '.join(missing)} not found: a real node needs containerd and runc "
            "(Debian/Ubuntu: apt-get install containerd runc, or `make realnode-setup`)"
        )
    return {name: str(path) for name, path in found.items()}


def write_config(
    node_dir: Path,
    *,
    runc: str,
    cni_bin: Path,
    cni_conf: Path,
    pause_image: str,
    snapshotter: str = "overlayfs",
) -> Path:
    node_dir.mkdir(parents=True, exist_ok=True)
    path = node_dir / "containerd.toml"
    path.write_text(
        CONFIG_TEMPLATE.format(
            root=node_dir / "containerd" / "root",
            state=node_dir / "containerd" / "state",
            socket=socket_path(node_dir),
            opt=node_dir / "containerd" / "opt",
            pause_image=pause_image,
            snapshotter=snapshotter,
            runc=runc,
            cni_bin=cni_bin,
            cni_conf=cni_conf,
        )
    )
    return path


def socket_path(node_dir: Path) -> Path:
    return node_dir / "containerd" / "containerd.sock"


SOCKET_PATH_MAX = 104
"""The longest unix socket path containerd accepts (sun_path is 108 bytes on Linux; containerd
keeps the portable 104)."""


def check_socket_path(node_dir: Path) -> None:
    """Fail before starting anything when the node's sockets cannot be created where it lives."""
    longest = f"{socket_path(node_dir.resolve())}.ttrpc"
    if len(longest.encode()) > SOCKET_PATH_MAX:
        raise ComponentFailed(
            f"a real node's containerd socket would be {longest} ({len(longest.encode())} "
            f"bytes), longer than the {SOCKET_PATH_MAX} a unix socket path may be: give the "
            "cluster a shorter state folder (--state-dir /tmp/fk, or CLUSTER_STATE=/tmp/fk "
            "for make)"
        )


def process(containerd: str, config: Path, log: Path) -> ManagedProcess:
    return ManagedProcess(
        "containerd", [containerd, "--config", str(config)], log, stop_timeout_s=10.0
    )
