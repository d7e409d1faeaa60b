"""Pod-network addressing, hosts files and certificates of the test cluster (no root needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from tests.cluster import certs
from tests.cluster.kubelet.hosts import HostEntry, render
from tests.cluster.network import POD_SUPERNET, SERVICE_IP, SLOTS, Slot


def test_slots_are_disjoint_test_range_subnets_with_linux_sized_names() -> None:
    subnets = [Slot(i).subnet for i in range(SLOTS)]

    assert all(s.subnet_of(ipaddress.IPv4Network("198.18.0.0/15")) for s in subnets)
    assert all(s.subnet_of(POD_SUPERNET) for s in subnets)
    assert len({s.network_address for s in subnets}) == SLOTS
    last = Slot(SLOTS - 1)
    assert Slot(0).bridge_ip == "198.18.0.1"
    assert Slot(0).pod_ip(1) == "198.18.0.2"
    assert ipaddress.ip_address(last.pod_ip(last.capacity)) in last.subnet
    assert max(len(last.bridge), len(last.veth(last.capacity)), len(last.netns(4093))) <= 15


def _entry(uid: str, ns: str, host: str, sub: str, ip: str) -> HostEntry:
    return HostEntry(uid=uid, namespace=ns, hostname=host, subdomain=sub, ip=ip, file=Path("/x"))


def test_hosts_file_names_peers_like_cluster_dns() -> None:
    me = _entry("1", "team", "job-1", "job", "198.18.0.3")
    peers = [
        me,
        _entry("0", "team", "job-0", "job", "198.18.0.2"),
        _entry("2", "other", "w-0", "w", "198.18.0.4"),
        _entry("3", "team", "loner", "", "198.18.0.5"),
    ]

    lines = render(me, peers).splitlines()

    assert "198.18.0.3\tjob-1.job.team.svc.cluster.local\tjob-1.job\tjob-1" in lines
    assert "198.18.0.2\tjob-0.job.team.svc.cluster.local\tjob-0.job" in lines
    assert "198.18.0.4\tw-0.w.other.svc.cluster.local" in lines  # no short name across namespaces
    assert not any("loner" in line for line in lines)  # no subdomain, no DNS name


def test_certificates_chain_to_the_ca_and_name_the_api_server(tmp_path: Path) -> None:
    pki = certs.generate(tmp_path, apiserver_ips=("198.18.0.1",), service_ip=SERVICE_IP,
                         kubelet_ips=("198.18.0.1",))  # fmt: skip

    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.apiserver.cert.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin.cert.read_bytes())
    server.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"198.18.0.1", "198.19.0.1", "127.0.0.1"} <= ips
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    orgs = admin.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["system:masters"]
    assert oct(pki.admin.key.stat().st_mode & 0o777) == "0o600"
