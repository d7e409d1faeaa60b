"""NetworkPolicies: a client's pods admit only their own DDP group, the aggregator nobody."""

from __future__ import annotations

from typing import Any

import pytest

from fedop.builders import names, network, pods
from fedop.builders.pods import AGGREGATOR_METRICS_PORT
from tests.fixtures.fedjobs import JOB, SETTINGS, make_spec


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a ``matchLabels`` selector picks a pod with ``labels`` (all there is to it)."""
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pod_labels() -> dict[str, dict[str, str]]:
    """Labels of every pod of the example job: the aggregator and clients a, b, c."""
    spec = make_spec()
    out = {"aggregator": pods.aggregator_pod_template(JOB, spec, SETTINGS)["metadata"]["labels"]}
    for c in spec.clients:
        out[c.name] = pods.client_pod_template(JOB, spec, c, SETTINGS)["metadata"]["labels"]
    return out


def test_one_policy_for_the_aggregator_and_one_per_client_all_owned_by_the_job() -> None:
    policies = network.network_policies(JOB, make_spec())

    assert [p["metadata"]["name"] for p in policies] == [
        "digits-aggregator",
        "digits-a",
        "digits-b",
        "digits-c",
    ]
    for p in policies:
        assert p["apiVersion"] == "networking.k8s.io/v1"
        assert p["kind"] == "NetworkPolicy"
        assert p["metadata"]["ownerReferences"] == [names.owner_reference(JOB)]
        assert p["metadata"]["labels"][names.LABEL_JOB] == "digits"
        # Egress stays open: every pod must reach the object store (and DNS).
        assert p["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("client", ["a", "b", "c"])
def test_a_client_policy_selects_its_pods_and_admits_only_them(client: str) -> None:
    labels = pod_labels()
    policy = network.client_network_policy(JOB, client)

    selected = {pod for pod, lab in labels.items() if selects(policy["spec"]["podSelector"], lab)}
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    admitted = {pod for pod, lab in labels.items() if selects(peer["podSelector"], lab)}

    assert selected == admitted == {client}
    assert "ports" not in rule  # rendezvous and the collectives' ephemeral ports
    assert set(peer) == {"podSelector"}  # no namespaceSelector: this namespace only


def test_the_aggregator_policy_selects_only_the_aggregator_and_admits_nothing() -> None:
    labels = pod_labels()
    policy = network.aggregator_network_policy(JOB)

    selected = {pod for pod, lab in labels.items() if selects(policy["spec"]["podSelector"], lab)}

    assert selected == {"aggregator"}
    assert policy["spec"]["ingress"] == []


def test_a_scrape_namespace_opens_only_the_aggregators_metrics_port_to_that_namespace() -> None:
    policies = network.network_policies(JOB, make_spec(), "monitoring")
    aggregator, *clients = policies

    (rule,) = aggregator["spec"]["ingress"]

    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": AGGREGATOR_METRICS_PORT}]
    assert clients == network.network_policies(JOB, make_spec())[1:]  # clients stay closed


def test_every_pod_of_the_job_is_selected_by_some_policy() -> None:
    labels = pod_labels()
    policies = network.network_policies(JOB, make_spec())

    isolated = {
        pod
        for pod, lab in labels.items()
        if any(selects(p["spec"]["podSelector"], lab) for p in policies)
    }

    assert isolated == set(labels)


def test_policies_of_another_job_select_none_of_this_jobs_pods() -> None:
    other = names.JobRef(name="other", namespace=JOB.namespace, uid="u2")
    labels = pod_labels()

    for policy in network.network_policies(other, make_spec()):
        assert not any(selects(policy["spec"]["podSelector"], lab) for lab in labels.values())
