"""Certificates of one test cluster: a CA, the API server's serving certificate, one client
certificate per identity, the kubelet's serving certificate and the service-account key.

What kubeadm would write to /etc/kubernetes/pki, generated in well under a second (ECDSA P-256)
into the cluster's state folder. Client identities follow Kubernetes' conventions: the CN is
the user name and the O entries are the groups, so RBAC sees the same subjects as in a real
cluster (``system:kube-controller-manager`` and friends, ``system:masters`` for the admin).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)
"""Long enough for any `make cluster-up` session; short-lived since the CA is throwaway."""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class Pki:
    """Paths of everything the components and kubeconfigs point at."""

    dir: Path
    ca: KeyPair
    apiserver: KeyPair
    apiserver_kubelet_client: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kubelet_serving: KeyPair
    service_account_key: Path
    service_account_pub: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


class _Authority:
    @classmethod
    def load(cls, pair: KeyPair) -> _Authority:
        """The CA of an existing PKI (to issue certificates for a node that joins later)."""
        authority = cls.__new__(cls)
        key = serialization.load_pem_private_key(pair.key_pem(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{pair.key} is not an ECDSA key")
        authority.key = key
        authority.cert = x509.load_pem_x509_certificate(pair.cert_pem())
        return authority

    def __init__(self, common_name: str) -> None:
        self.key = _new_key()
        now = dt.datetime.now(dt.UTC)
        name = _name(common_name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        common_name: str,
        *,
        orgs: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, orgs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def generate(
    directory: Path,
    *,
    apiserver_ips: tuple[str, ...],
    service_ip: str,
    kubelet_ips: tuple[str, ...],
) -> Pki:
    """Write a fresh PKI into ``directory`` and return its paths."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _Authority("fedkube-test-ca")

    def save(stem: str, pair: tuple[bytes, bytes]) -> KeyPair:
        kp = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
        _write(kp.cert, pair[0], 0o644)
        _write(kp.key, pair[1])
        return kp

    ca_pair = save("ca", (ca.cert.public_bytes(serialization.Encoding.PEM), _key_pem(ca.key)))
    apiserver = save(
        "apiserver",
        ca.issue(
            "kube-apiserver",
            server=True,
            ips=(*apiserver_ips, service_ip, "127.0.0.1"),
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        ),
    )
    sa_key = _new_key()
    sa_key_path = directory / "sa.key"
    sa_pub_path = directory / "sa.pub"
    _write(sa_key_path, _key_pem(sa_key))
    _write(
        sa_pub_path,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )
    return Pki(
        dir=directory,
        ca=ca_pair,
        apiserver=apiserver,
        # The API server calls kubelets (logs) as a cluster admin, as kubeadm sets it up.
        apiserver_kubelet_client=save(
            "apiserver-kubelet-client",
            ca.issue("kube-apiserver-kubelet-client", orgs=("system:masters",), client=True),
        ),
        admin=save("admin", ca.issue("fedkube-admin", orgs=("system:masters",), client=True)),
        controller_manager=save(
            "controller-manager", ca.issue("system:kube-controller-manager", client=True)
        ),
        scheduler=save("scheduler", ca.issue("system:kube-scheduler", client=True)),
        kubelet_serving=save(
            "kubelet-serving", ca.issue("fedkube-process-kubelet", server=True, ips=kubelet_ips)
        ),
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )


def issue_from(
    ca: KeyPair,
    cert_path: Path,
    common_name: str,
    *,
    orgs: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    ips: tuple[str, ...] = (),
) -> KeyPair:
    """Issue one more certificate from an existing cluster's CA (a node joining it)."""
    cert_pem, key_pem = _Authority.load(ca).issue(
        common_name, orgs=orgs, server=server, client=client, ips=ips
    )
    pair = KeyPair(cert_path, cert_path.with_suffix(".key"))
    pair.cert.parent.mkdir(parents=True, exist_ok=True)
    _write(pair.cert, cert_pem, 0o644)
    _write(pair.key, key_pem)
    return pair
