"""A second test cluster's settings: an audit log and routes to a shared MinIO, kept across the
launcher/daemon hand-over, and off (the single-cluster path unchanged) by default."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import ClusterConfig, NodeSpec
from tests.cluster.binaries import Binaries
from tests.cluster.certs import generate
from tests.cluster.controlplane import ControlPlane


def test_audit_log_routes_and_real_nodes_survive_the_config_file(tmp_path: Path) -> None:
    config = ClusterConfig(
        state_dir=tmp_path,
        nodes=(NodeSpec("site-a"),),
        audit_log=True,
        extra_routes=("198.18.0.1",),
        real_nodes=("real-a",),
        real_node_images=("/images/runtime.tar",),
    )

    config.save()
    loaded = ClusterConfig.load(tmp_path)

    assert loaded == config


def test_a_default_cluster_has_neither(tmp_path: Path) -> None:
    ClusterConfig(state_dir=tmp_path).save()

    loaded = ClusterConfig.load(tmp_path)

    assert (loaded.audit_log, loaded.extra_routes, loaded.real_nodes) == (False, (), ())


def apiserver_flags(tmp_path: Path, *, audit_log: bool) -> list[str]:
    pki = generate(
        tmp_path / "pki", apiserver_ips=("127.0.0.1",), service_ip="10.0.0.1",
        kubelet_ips=("127.0.0.1",),
    )  # fmt: skip
    bins = Binaries(tmp_path / "bin", {"etcd": "x", "kubernetes": "y", "helm": "z"})
    plane = ControlPlane(bins, pki, tmp_path, "127.0.0.1", audit_log=audit_log)
    return list(plane._apiserver().argv)


def test_the_api_server_records_every_request_only_when_asked(tmp_path: Path) -> None:
    with_log = apiserver_flags(tmp_path, audit_log=True)
    without = apiserver_flags(tmp_path, audit_log=False)

    assert f"--audit-log-path={tmp_path}/logs/control-plane/audit.log" in with_log
    policy = Path(next(f for f in with_log if f.startswith("--audit-policy-file=")).split("=")[1])
    assert "level: Metadata" in policy.read_text()
    assert not [f for f in without if f.startswith("--audit")]
