"""MinIO as a pod on a real node, behind a ClusterIP Service (what a cluster's S3 looks like).

The binary is the pinned MinIO the other tests run as a process, in the lane's ``tools``
image; its data is an emptyDir. Pods reach it at the Service's ClusterIP through kube-proxy;
so does this machine (kube-proxy's rules also catch locally sent packets), which is how the
test creates the bucket.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from tests.cluster.handle import ClusterHandle
from tests.cluster.realnode.images import TOOLS_IMAGE
from tests.cluster.realnode.node import placement

PORT = 9000
BUCKET = "fedkube"


@dataclass(frozen=True)
class MinioPod:
    namespace: str
    cluster_ip: str
    port: int
    access_key: str
    secret_key: str
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        """By ClusterIP: what this machine uses (it has no cluster DNS)."""
        return f"http://{self.cluster_ip}:{self.port}"

    @property
    def service_url(self) -> str:
        """By the Service's DNS name: what pods use (cluster DNS, then kube-proxy)."""
        return f"http://minio.{self.namespace}.svc.cluster.local:{self.port}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=3),
        )


def manifests(access_key: str, secret_key: str) -> list[dict[str, Any]]:
    labels = {"app": "minio"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "minio", "labels": labels},
        "spec": {
            **placement(),
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
            "containers": [
                {
                    "name": "minio",
                    "image": TOOLS_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/minio", "server", "/data", "--address", f":{PORT}"],
                    "env": [
                        {"name": "MINIO_ROOT_USER", "value": access_key},
                        {"name": "MINIO_ROOT_PASSWORD", "value": secret_key},
                        {"name": "HOME", "value": "/tmp"},
                    ],
                    "ports": [{"containerPort": PORT}],
                    "readinessProbe": {
                        "httpGet": {"path": "/minio/health/ready", "port": PORT},
                        "periodSeconds": 1,
                    },
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "minio"},
        "spec": {"selector": labels, "ports": [{"port": PORT, "targetPort": PORT}]},
    }
    return [pod, service]


def start(cluster: ClusterHandle, namespace: str, timeout_s: float = 120.0) -> MinioPod:
    access_key, secret_key = "fedkube-admin", secrets.token_hex(16)
    cluster.apply(namespace, *manifests(access_key, secret_key))
    cluster.wait_for_pod(
        namespace,
        "minio",
        lambda p: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in p.get("status", {}).get("conditions", [])
        ),
        "to be Ready",
        timeout=timeout_s,
    )
    service = cluster.core.read_namespaced_service("minio", namespace)
    server = MinioPod(namespace, str(service.spec.cluster_ip), PORT, access_key, secret_key)
    _create_bucket(server, time.monotonic() + timeout_s)
    return server


def _create_bucket(server: MinioPod, deadline: float) -> None:
    """Through the ClusterIP, from this machine (kube-proxy's rules take a moment to appear)."""
    while True:
        try:
            server.client().create_bucket(Bucket=server.bucket)
            return
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
        ):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
