"""What the real-node lane writes before anything starts: addresses, configs, images (no root)."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import yaml
from cryptography import x509

from tests.cluster import certs
from tests.cluster.network import SLOTS, Slot
from tests.cluster.realnode import cni, containerd, dns, images, kubelet


def test_real_node_addresses_never_meet_the_process_kubelets() -> None:
    for index in (0, SLOTS - 1):
        slot = Slot(index)
        process_last = ipaddress.ip_address(slot.pod_ip(slot.capacity))
        ranges = [cni.node_range(slot, i) for i in range(cni.MAX_REAL_NODES)]
        addresses = [ipaddress.ip_address(a) for pair in ranges for a in pair]

        assert all(a in slot.real_node_range for a in addresses)
        assert process_last not in slot.real_node_range
        assert process_last < min(addresses)
        assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))


def test_containerd_config_keeps_everything_in_the_node_folder(tmp_path: Path) -> None:
    path = containerd.write_config(
        tmp_path,
        runc="/usr/sbin/runc",
        cni_bin=Path("/cache/cni"),
        cni_conf=tmp_path / "cni" / "net.d",
        pause_image=images.PAUSE_IMAGE,
    )

    config = tomllib.loads(path.read_text())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"SystemdCgroup": False, "BinaryName": "/usr/sbin/runc"}
    for location in (config["root"], config["state"], config["grpc"]["address"]):
        assert Path(location).is_relative_to(tmp_path)


def test_cni_conflist_joins_the_clusters_bridge_with_the_nodes_range(tmp_path: Path) -> None:
    slot = Slot(3)

    conf = json.loads(cni.write(tmp_path / "net.d", slot, 1, tmp_path / "ipam").read_text())

    bridge, portmap = conf["plugins"]
    assert bridge["bridge"] == slot.bridge
    (address_range,) = bridge["ipam"]["ranges"][0]
    assert address_range["gateway"] == slot.bridge_ip
    assert (address_range["rangeStart"], address_range["rangeEnd"]) == cni.node_range(slot, 1)
    assert ipaddress.ip_network(address_range["subnet"]) == slot.subnet
    assert portmap["type"] == "portmap"


def test_kubelet_is_a_node_identity_signed_by_the_clusters_ca(tmp_path: Path) -> None:
    pki = certs.generate(
        tmp_path / "pki", apiserver_ips=("198.18.0.1",), service_ip="198.19.0.1", kubelet_ips=()
    )

    paths = kubelet.write(
        tmp_path / "node",
        node_name="real-a",
        server="https://198.18.0.1:6443",
        ca=pki.ca,
        node_ip="198.18.0.1",
        port=10250,
        healthz_port=10248,
        runtime_socket=tmp_path / "containerd.sock",
        cluster_dns="198.18.0.1",
        resolv_conf=tmp_path / "resolv.conf",
    )

    config = yaml.safe_load(paths.config.read_text())
    assert config["cgroupsPerQOS"] is False
    assert config["clusterDNS"] == ["198.18.0.1"]
    assert config["containerRuntimeEndpoint"] == f"unix://{tmp_path / 'containerd.sock'}"
    client = yaml.safe_load(paths.kubeconfig.read_text())["users"][0]["name"]
    assert client == "system:node:real-a"
    issued = (tmp_path / "node" / "pki" / "kubelet-client.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(issued)
    assert cert.issuer == x509.load_pem_x509_certificate(pki.ca.cert_pem()).subject
    assert "O=system:nodes" in cert.subject.rfc4514_string()


def test_corefile_serves_the_cluster_domain_on_the_bridge_address(tmp_path: Path) -> None:
    text = dns.write_corefile(tmp_path, address="198.18.16.1", kubeconfig=Path("/k")).read_text()

    assert "bind 198.18.16.1" in text
    assert "kubernetes cluster.local in-addr.arpa" in text
    assert dns.write_resolv_conf(tmp_path).read_text() == ""


def test_oci_archive_names_the_image_and_its_blobs_match_their_digests(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")

    archive = images.write_oci_archive(
        tmp_path / "img.tar", "docker.io/fedkube-test/x:1", [images.ImageFile("/bin/tool", binary)],
        ["/bin/tool"],
    )  # fmt: skip

    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "docker.io/fedkube-test/x:1"
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files["blobs/sha256/" + entry["digest"].removeprefix("sha256:")])
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].removeprefix("sha256:")]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert "bin/tool" in tar.getnames()
