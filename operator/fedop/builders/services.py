"""The headless Service ``<job>-<client>`` that gives a client group's pods DNS names.

With ``subdomain`` set to it, the pods of the client's Indexed Job are reachable as
``<job>-<client>-<index>.<job>-<client>``; ``publishNotReadyAddresses`` publishes them before
they are ready, which the group needs because rank 0's rendezvous happens before readiness.
"""

from __future__ import annotations

from typing import Any

from fedop.builders import names


def client_service(job: names.JobRef, client: str, master_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(job, names.client_service(job, client), "client", client),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.labels(job, "client", client),
            "ports": [{"name": "rendezvous", "port": master_port, "targetPort": master_port}],
        },
    }
