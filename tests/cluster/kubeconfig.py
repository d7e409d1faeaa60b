"""Kubeconfig files for the admin and each control-plane identity (certificates embedded, so a
kubeconfig can be copied elsewhere on this machine and still work)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from tests.cluster.certs import KeyPair

CLUSTER_NAME = "fedkube-test"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(path: Path, *, server: str, ca_cert: Path, client: KeyPair, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca_cert.read_bytes()),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert_pem()),
                    "client-key-data": _b64(client.key_pem()),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
