"""The process kubelet builds a container's environment and command as the kubelet does."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.kubelet import env as kenv
from tests.cluster.kubelet import quantity
from tests.cluster.kubelet.refs import MissingReference


class FakeLookup:
    """Secrets/ConfigMaps held in memory (the real lookup reads the API server)."""

    def __init__(self, secrets: dict[str, dict[str, bytes]], maps: dict[str, dict[str, bytes]]):
        self.secrets, self.maps = secrets, maps

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.maps.get(name)


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"b": "2", "a": "1"},
                 "annotations": {"batch.kubernetes.io/job-completion-index": "3"}},
    "spec": {"nodeName": "node-a", "serviceAccountName": "sa"},
    "status": {"podIP": "198.18.0.7", "hostIP": "198.18.0.1"},
}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-2"),
        ("$(MISSING) stays", "$(MISSING) stays"),
        ("$$(A) is escaped", "$(A) is escaped"),
        ("a lone $ and $x", "a lone $ and $x"),
        ("unterminated $(A", "unterminated $(A"),
        ("$$$(A)", "$1"),
    ],
)
def test_expand_follows_kubernetes_dollar_paren_rules(text: str, expected: str) -> None:
    assert kenv.expand(text, {"A": "1", "B": "2"}) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", "p"),
        ("metadata.namespace", "ns"),
        ("metadata.uid", "u-1"),
        ("spec.nodeName", "node-a"),
        ("spec.serviceAccountName", "sa"),
        ("status.podIP", "198.18.0.7"),
        ("metadata.labels['a']", "1"),
        ("metadata.annotations['batch.kubernetes.io/job-completion-index']", "3"),
        ("metadata.labels", 'a="1"\nb="2"'),
    ],
)
def test_field_refs_read_the_pod(path: str, expected: str) -> None:
    assert kenv.field_value(POD, path) == expected


def test_unsupported_field_ref_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"fieldRef 'spec\.bogus'"):
        kenv.field_value(POD, "spec.bogus")


def test_env_overrides_env_from_and_expands_only_earlier_names() -> None:
    container = {
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "s"}},
        ],
        "env": [
            {"name": "TOKEN", "value": "plain"},
            {"name": "LATE", "value": "$(EARLY)"},
            {"name": "EARLY", "value": "e"},
            {"name": "COMBO", "value": "$(TOKEN)/$(CM_MODE)/$(KUBERNETES_SERVICE_HOST)"},
            {"name": "IDX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}},
        ],
    }  # fmt: skip
    lookup = FakeLookup(
        {"s": {"TOKEN": b"from-secret"}}, {"cm": {"MODE": b"fast", "bad key": b"x"}}
    )

    env = kenv.container_env(
        POD, container, base={"PATH": "/venv/bin", "TOKEN": "image"},
        service={"KUBERNETES_SERVICE_HOST": "198.18.0.1"}, lookup=lookup, allocatable={},
    )  # fmt: skip

    assert env["TOKEN"] == "plain"  # env beats envFrom, which beats the image
    assert env["CM_MODE"] == "fast"
    assert "CM_bad key" not in env
    assert env["LATE"] == "$(EARLY)"
    assert env["COMBO"] == "plain/fast/198.18.0.1"
    assert (env["IDX"], env["PW"], env["PATH"]) == ("3", "from-secret", "/venv/bin")


def test_missing_secret_key_waits_unless_optional() -> None:
    lookup = FakeLookup({"s": {}}, {})
    ref = {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}

    with pytest.raises(MissingReference, match="couldn't find key k in secret ns/s"):
        kenv.container_env(POD, {"env": [ref]}, base={}, service={}, lookup=lookup,
                           allocatable={})  # fmt: skip
    ref["valueFrom"]["secretKeyRef"]["optional"] = True  # type: ignore[index]
    env = kenv.container_env(POD, {"env": [ref]}, base={}, service={}, lookup=lookup,
                             allocatable={})  # fmt: skip
    assert "X" not in env


def test_resource_field_ref_uses_limits_then_node_allocatable() -> None:
    container = {"resources": {"limits": {"cpu": "1500m", "memory": "2Gi"}}}

    assert kenv.resource_value(container, {"resource": "limits.cpu"}, {}) == "2"
    assert (
        kenv.resource_value(container, {"resource": "requests.memory", "divisor": "1Mi"}, {})
        == "2048"
    )
    assert (
        kenv.resource_value({}, {"resource": "limits.cpu", "divisor": "0"}, {"cpu": "16"}) == "16"
    )


def test_command_is_required_and_expanded() -> None:
    spec = {"name": "c", "command": ["echo", "$(A)"], "args": ["$(B)"]}
    assert kenv.command_line(spec, {"A": "1", "B": "2"}) == ["echo", "1", "2"]
    with pytest.raises(ValueError, match="has no command"):
        kenv.command_line({"name": "c", "args": ["x"]}, {})


def test_quantities_parse_binary_and_decimal_suffixes() -> None:
    assert quantity.parse("500m") == quantity.parse("0.5")
    assert quantity.parse("1Ki") == 1024
    assert quantity.parse("2G") == 2_000_000_000
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.parse("lots")
