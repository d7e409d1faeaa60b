"""Pods talk to the API server with their own ServiceAccount's token, and RBAC applies.

A pod using in-cluster config (the projected token, ca.crt and namespace at the standard
path, KUBERNETES_SERVICE_HOST/PORT) may list pods only when its ServiceAccount's Role allows.
"""

from __future__ import annotations

import pytest

from tests.cluster.handle import ClusterHandle, container_status, make_pod, phase

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

LIST_PODS = """
import sys
from kubernetes import client, config
config.load_incluster_config()
namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
try:
    pods = client.CoreV1Api().list_namespaced_pod(namespace)
except client.ApiException as e:
    print("denied", e.status, flush=True)
    sys.exit(3)
print("allowed", len(pods.items), flush=True)
"""


def test_in_cluster_client_may_list_pods_only_when_its_role_allows(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(
        namespace,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "pod-reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "reader-reads-pods"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "pod-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
    )  # fmt: skip
    for account in ("reader", "nobody"):
        cluster.create_pod(
            namespace,
            make_pod(account, ["python", "-c", LIST_PODS], serviceAccountName=account),
        )

    reader = cluster.wait_for_phase(namespace, "reader", "Succeeded", "Failed")
    nobody = cluster.wait_for_phase(namespace, "nobody", "Succeeded", "Failed")

    assert phase(reader) == "Succeeded", cluster.pod_logs(namespace, "reader")
    assert cluster.pod_logs(namespace, "reader").startswith("allowed ")
    assert phase(nobody) == "Failed"
    assert container_status(nobody)["state"]["terminated"]["exitCode"] == 3
    assert cluster.pod_logs(namespace, "nobody") == "denied 403\n"
