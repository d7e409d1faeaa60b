"""The NetworkPolicies of a FederatedJob: pods of one job reach nothing of each other's but
their own DDP group.

A client group's pods talk to each other (torch's rendezvous and NCCL/gloo between ranks);
nothing else ever needs to open a connection to a job's pod: all exchange between the
aggregator and the clients goes through the object store. So:

* ``<job>-<client>`` selects the pods of that client (labels ``fedkube.io/job`` and
  ``fedkube.io/client``) and admits ingress only from pods with the same two labels, on any
  port (the rendezvous port and the collective backends' ephemeral ones);
* ``<job>-aggregator`` selects the aggregator pod and admits no ingress at all, except, when
  the operator's ``metrics_scrape_namespace`` names one (chart value
  ``metrics.scrapeNamespace``), from that namespace's pods (your Prometheus) to the metrics
  port alone.

NetworkPolicies are additive (a pod may receive what any policy selecting it allows), so one
object per client is needed to express "only my own group". Egress is not restricted
(``policyTypes`` is ``[Ingress]`` only): every pod must reach the object store, which may be
anywhere (in cluster, a cloud endpoint, another site), and DNS. They take effect only where the
cluster's network plugin enforces NetworkPolicies (Calico, Cilium, ...).
"""

from __future__ import annotations

from typing import Any

from fedcore import spec as fs
from fedop.builders import names
from fedop.builders.pods import AGGREGATOR_METRICS_PORT

API_VERSION = "networking.k8s.io/v1"


def _policy(
    job: names.JobRef, name: str, selector: dict[str, str], ingress: list[Any]
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": names.metadata(job, name),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def group_selector(job: names.JobRef, client: str) -> dict[str, str]:
    """Labels that select exactly the pods of one client's DDP group."""
    return {names.LABEL_JOB: job.name, names.LABEL_CLIENT: client}


def aggregator_selector(job: names.JobRef) -> dict[str, str]:
    return {names.LABEL_JOB: job.name, names.LABEL_ROLE: "aggregator"}


def client_network_policy(job: names.JobRef, client: str) -> dict[str, Any]:
    """Ingress to ``client``'s pods only from ``client``'s pods."""
    group = group_selector(job, client)
    return _policy(
        job,
        names.client_network_policy(job, client),
        group,
        [{"from": [{"podSelector": {"matchLabels": dict(group)}}]}],
    )


def aggregator_network_policy(job: names.JobRef, scrape_namespace: str = "") -> dict[str, Any]:
    """No ingress to the aggregator pod; with ``scrape_namespace``, that namespace's pods may
    reach its metrics port (and nothing else)."""
    ingress: list[Any] = []
    if scrape_namespace:
        namespace = {"matchLabels": {"kubernetes.io/metadata.name": scrape_namespace}}
        ingress.append(
            {
                "from": [{"namespaceSelector": namespace}],
                "ports": [{"protocol": "TCP", "port": AGGREGATOR_METRICS_PORT}],
            }
        )
    return _policy(job, names.aggregator_network_policy(job), aggregator_selector(job), ingress)


def network_policies(
    job: names.JobRef, spec: fs.FederatedJobSpec, scrape_namespace: str = ""
) -> list[dict[str, Any]]:
    """Every NetworkPolicy of the job: the aggregator's, then one per client in spec order
    (sites have no pods here, so no policy)."""
    return [
        aggregator_network_policy(job, scrape_namespace),
        *(client_network_policy(job, c.name) for c in spec.clients if not c.is_site),
    ]
