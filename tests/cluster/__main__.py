"""``python -m tests.cluster up|down|status|env|cleanup`` (and ``serve``, run by ``up``).

up       start a cluster in the background (state in .cluster/), print how to use it
down     stop it and remove its processes, network namespaces, veths and bridge
status   health of each component, nodes and pods
env      the export lines for PATH and KUBECONFIG (eval "$(python -m tests.cluster env)")
cleanup  remove what crashed clusters left behind (any state folder)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tests.cluster import demo, launcher, network
from tests.cluster.config import DEFAULT_NODES, REPO_ROOT, ClusterConfig, NodeSpec
from tests.cluster.controlplane import Endpoints, health
from tests.cluster.errors import ClusterError
from tests.cluster.realnode import containerd
from tests.cluster.realnode.node import REAL_NODE_LABEL
from tests.cluster.rest import Credentials, Rest

DEFAULT_STATE = REPO_ROOT / ".cluster"


def _exports(info: launcher.ClusterInfo) -> str:
    path = os.pathsep.join(str(p) for p in info.bin_dirs)
    return f"export PATH={path}:$PATH\nexport KUBECONFIG={info.kubeconfig}"


def _nodes(names: str | None, gpus: int) -> tuple[NodeSpec, ...]:
    if not names:
        return tuple(NodeSpec(n.name, gpus=gpus) for n in DEFAULT_NODES)
    return tuple(NodeSpec(n.strip(), gpus=gpus) for n in names.split(",") if n.strip())


def cmd_up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    info = launcher.running(state)
    if info is None:
        for name in args.real_node:  # before anything starts, not a minute into it
            containerd.check_socket_path(state / "realnodes" / name)
        print(f"starting the test cluster (state in {state}) ...", file=sys.stderr)
        t0 = time.monotonic()
        config = ClusterConfig(
            state_dir=state,
            nodes=_nodes(args.nodes, args.gpus),
            audit_log=args.audit_log,
            extra_routes=tuple(args.route),
            real_nodes=tuple(args.real_node),
            real_node_images=tuple(str(Path(a).resolve()) for a in args.image),
        )
        # Real nodes add their start (~20 s) and the image imports (the runtime image: minutes).
        timeout_s = 300.0 + (900.0 if config.real_nodes else 0.0)
        info = launcher.start(config, timeout_s=timeout_s, progress=sys.stderr).info
        elapsed = time.monotonic() - t0
        print(
            f"test cluster ready in {elapsed:.1f}s (control plane + nodes "
            f"{info.ready_seconds:.1f}s): nodes {', '.join(info.nodes)}, API server "
            f"{info.server}, pods in {info.pod_subnet}",
            file=sys.stderr,
        )
    else:
        print(f"test cluster already running (pid {info.pid})", file=sys.stderr)
    if args.real_node:
        print(
            f"real nodes {', '.join(args.real_node)}: pods land there only with the nodeSelector "
            f"and toleration {REAL_NODE_LABEL}=true (tests/cluster/README.md)",
            file=sys.stderr,
        )
    print("use it from this shell with:", file=sys.stderr)
    print(_exports(info))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    t0 = time.monotonic()
    if demo.stop_minio(state):
        print("stopped the cluster-demo MinIO", file=sys.stderr)
    # Real nodes stop their containers and remove gigabytes of imported images first.
    real = (state / "config.json").is_file() and bool(ClusterConfig.load(state).real_nodes)
    was = launcher.stop(state, timeout_s=180.0 if real else launcher.STOP_TIMEOUT_S)
    what = "stopped" if was else "no cluster was running; cleaned up leftovers"
    print(f"test cluster {what} ({time.monotonic() - t0:.1f}s)", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = launcher.running(Path(args.state_dir))
    if info is None:
        print("no test cluster running (make cluster-up starts one)")
        return 1
    e = info.endpoints
    healthy = health(
        Endpoints(**e), Path(info.pki["ca"]), Path(info.pki["cert"]), Path(info.pki["key"])
    )
    print(f"test cluster: pid {info.pid}, API server {info.server}, kubeconfig {info.kubeconfig}")
    for name, ok in healthy.items():
        print(f"  {name:<24} {'healthy' if ok else 'NOT HEALTHY'}")
    api = Rest(
        Credentials(
            info.server, Path(info.pki["ca"]), Path(info.pki["cert"]), Path(info.pki["key"])
        )
    )
    for node in api.get("/api/v1/nodes").get("items", []):
        ready = next(
            (c["status"] for c in node["status"].get("conditions", []) if c["type"] == "Ready"),
            "Unknown",
        )
        print(f"  node {node['metadata']['name']:<19} Ready={ready}")
    pods = api.get("/api/v1/pods").get("items", [])
    phases: dict[str, int] = {}
    for pod in pods:
        phase = pod.get("status", {}).get("phase", "Unknown")
        phases[phase] = phases.get(phase, 0) + 1
    print(f"  pods: {len(pods)} " + " ".join(f"{k}={v}" for k, v in sorted(phases.items())))
    return 0 if all(healthy.values()) else 1


def cmd_env(args: argparse.Namespace) -> int:
    info = launcher.running(Path(args.state_dir))
    if info is None:
        print("no test cluster running (make cluster-up starts one)", file=sys.stderr)
        return 1
    print(_exports(info))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = network.cleanup_stale()
    if not removed:
        print("nothing left behind by crashed clusters")
    for slot, found in sorted(removed.items()):
        print(
            f"slot {slot}: killed {len(found.pids)} processes, removed {len(found.netns)} "
            f"network namespaces and {len(found.links)} links"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tests.cluster import serve

    return serve.main(Path(args.state_dir).resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (
        ("up", cmd_up),
        ("down", cmd_down),
        ("status", cmd_status),
        ("env", cmd_env),
        ("cleanup", cmd_cleanup),
        ("serve", cmd_serve),
    ):
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        p.add_argument(
            "--state-dir",
            default=str(DEFAULT_STATE),
            help="where the cluster keeps its state (default: .cluster/)",
        )
        if name == "up":
            p.add_argument("--nodes", help="comma-separated node names (default: node-a,node-b)")
            p.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu per node")
            p.add_argument(
                "--audit-log",
                action="store_true",
                help="record every API request in logs/control-plane/audit.log",
            )
            p.add_argument(
                "--route",
                action="append",
                default=[],
                metavar="ADDRESS",
                help="a host address pods reach through the bridge (e.g. another cluster's "
                "bridge address, where a shared MinIO listens); repeatable",
            )
            p.add_argument(
                "--real-node",
                action="append",
                default=[],
                metavar="NAME",
                help="also a node run by the real kubelet over containerd (root; make "
                "containers-setup); repeatable",
            )
            p.add_argument(
                "--image",
                action="append",
                default=[],
                metavar="ARCHIVE",
                help="an image archive (images/build.sh saves them) to import into the real "
                "nodes; repeatable",
            )
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
