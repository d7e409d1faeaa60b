"""Each pod has its own network namespace and address; pods find each other by DNS name.

Two pods listen on the same port at once (impossible without separate network namespaces),
and one reaches the other as ``<hostname>.<subdomain>``, the name cluster DNS gives a pod
behind a headless Service.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.cluster.handle import ClusterHandle, make_pod, phase

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(); s.settimeout(120)
print("listening on 8080", flush=True)
conn, peer = s.accept()
conn.sendall(b"hello from " + socket.gethostname().encode())
conn.close()
print("served", peer[0], flush=True)
"""

CLIENT = """
import socket, time
mine = socket.socket(); mine.bind(("0.0.0.0", 8080)); mine.listen()
print("also listening on 8080", flush=True)
for _ in range(600):
    try:
        with socket.create_connection(("alpha.net", 8080), timeout=2) as c:
            print(c.recv(100).decode(), "at", c.getpeername()[0], flush=True)
            break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("alpha.net:8080 never answered")
"""


def test_two_pods_bind_the_same_port_and_reach_each_other_by_name(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "net"},
        "spec": {"clusterIP": "None", "selector": {"app": "net"},
                 "ports": [{"port": 8080}]},
    })  # fmt: skip
    for name, script in (("alpha", SERVER), ("beta", CLIENT)):
        cluster.create_pod(namespace, make_pod(
            name, ["python", "-c", script], labels={"app": "net"},
            hostname=name, subdomain="net",
        ))  # fmt: skip

    beta = cluster.wait_for_phase(namespace, "beta", "Succeeded", "Failed")
    alpha = cluster.wait_for_phase(namespace, "alpha", "Succeeded", "Failed")

    assert (phase(alpha), phase(beta)) == ("Succeeded", "Succeeded")
    alpha_ip, beta_ip = alpha["status"]["podIP"], beta["status"]["podIP"]
    assert alpha_ip != beta_ip
    assert cluster.pod_logs(namespace, "beta").splitlines() == [
        "also listening on 8080",
        f"hello from alpha at {alpha_ip}",
    ]
    assert cluster.pod_logs(namespace, "alpha").splitlines() == [
        "listening on 8080",
        f"served {beta_ip}",
    ]


def test_a_service_gets_endpoint_slices_with_its_running_pods(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })  # fmt: skip
    cluster.create_pod(namespace, make_pod("web-0", ["sleep", "600"], labels={"app": "web"}))
    pod_ip = cluster.wait_for_phase(namespace, "web-0", "Running")["status"]["podIP"]
    discovery = client.DiscoveryV1Api(cluster.api_client)

    def ready_addresses() -> list[str]:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web"
        ).items
        return [
            address
            for s in slices
            for e in s.endpoints or []
            if e.conditions and e.conditions.ready
            for address in e.addresses
        ]

    assert cluster.wait_for(ready_addresses, 60, "an EndpointSlice with the ready pod") == [pod_ip]
