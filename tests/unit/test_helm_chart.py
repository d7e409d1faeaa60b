"""The Helm chart renders a least-privilege operator install, cluster-wide or per namespace.

Runs the real ``helm`` (built from its Go module into the fedkube cache, like the control
plane): ``helm lint`` and ``helm template`` need no cluster. Without the Go toolchain the
tests skip (laptops); with ``FEDKUBE_E2E=required`` (CI) they fail instead.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedop.builders import names
from tests.cluster.binaries import ensure
from tests.cluster.errors import BinariesUnavailable

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fedkube"
RELEASE, NAMESPACE = "fk", "fedkube-system"
KUBE_VERSION = "1.34.0"
DASHBOARD = CHART / "dashboards" / "fedkube.json"
CRD_FILES = ("federatedjob.yaml", "federatedsite.yaml")
"""Helm installs both CRDs in either mode (its crds/ folder is not templated); a site's
cluster gets the FederatedJob CRD too, unused."""
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return ensure(("helm",)).path("helm")
    except BinariesUnavailable as e:
        if os.environ.get("FEDKUBE_E2E", "") == "required":
            pytest.fail(f"FEDKUBE_E2E=required: {e}")
        pytest.skip(str(e))


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, check=False
    )


def render(helm: Path, *values: str) -> list[Obj]:
    """``helm template`` with ``--set`` values; the objects it would apply."""
    sets = [arg for value in values for arg in ("--set", value)]
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "-n", NAMESPACE,
        "--kube-version", KUBE_VERSION, *sets,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kinds(objects: list[Obj]) -> list[tuple[str, str, str | None]]:
    return sorted(
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects
    )


def one(objects: list[Obj], kind: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objects
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def grants(rules: list[Obj]) -> Iterator[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) a list of policy rules allows."""
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


KNOWN_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


def documented_calls(module: str = "kube.py") -> set[tuple[str, str, str]]:
    """The (group, resource, verb) table in operator/fedop/<module>'s docstring: the calls the
    operator makes (kube.py: as a coordinator; site_handlers.py: as a site), which the chart
    must grant exactly."""
    source = (REPO / "operator" / "fedop" / module).read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    calls: set[tuple[str, str, str]] = set()
    for line in doc.splitlines():
        words = line.split("(")[0].split()
        if len(words) >= 3 and set(words[2:]) <= KNOWN_VERBS:
            group = "" if words[0] == '""' else words[0]
            calls |= {(group, words[1], verb) for verb in words[2:]}
    return calls


CALLS = documented_calls()
NAMESPACED_CALLS = {c for c in CALLS if c[1] not in CLUSTER_SCOPED}
CLUSTER_READ = {c for c in CALLS if c[1] in CLUSTER_SCOPED}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


@pytest.fixture(scope="module")
def cluster_wide(helm: Path) -> list[Obj]:
    return render(helm)


@pytest.fixture(scope="module")
def namespaced(helm: Path) -> list[Obj]:
    return render(helm, "watchNamespaces={team-a,team-b}")


def test_helm_lint_is_clean(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_default_values_render_a_cluster_wide_operator(cluster_wide: list[Obj]) -> None:
    name = f"{RELEASE}-fedkube"

    assert kinds(cluster_wide) == [
        ("ClusterRole", name, None),
        ("ClusterRoleBinding", name, None),
        ("Deployment", name, NAMESPACE),
        ("Service", f"{name}-metrics", NAMESPACE),
        ("ServiceAccount", name, NAMESPACE),
    ]


def test_kube_module_documents_the_calls_the_chart_grants() -> None:
    assert ("batch", "jobs", "create") in NAMESPACED_CALLS
    assert ("fedkube.io", "federatedjobs/status", "patch") in NAMESPACED_CALLS
    assert {
        (group, resource, verb)
        for group, resource in (
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("", "namespaces"),
        )
        for verb in ("get", "list", "watch")
    } == CLUSTER_READ


def test_cluster_wide_role_grants_exactly_the_operators_calls(cluster_wide: list[Obj]) -> None:
    allowed = set(grants(one(cluster_wide, "ClusterRole")["rules"]))

    assert allowed == CALLS


def test_namespaced_values_render_a_role_per_namespace(namespaced: list[Obj]) -> None:
    name = f"{RELEASE}-fedkube"

    assert kinds(namespaced) == [
        ("ClusterRole", f"{name}-cluster-read", None),
        ("ClusterRoleBinding", f"{name}-cluster-read", None),
        ("Deployment", name, NAMESPACE),
        ("Role", name, "team-a"),
        ("Role", name, "team-b"),
        ("RoleBinding", name, "team-a"),
        ("RoleBinding", name, "team-b"),
        ("Service", f"{name}-metrics", NAMESPACE),
        ("ServiceAccount", name, NAMESPACE),
    ]
    for namespace in ("team-a", "team-b"):
        assert set(grants(one(namespaced, "Role", namespace)["rules"])) == NAMESPACED_CALLS


def test_namespaced_mode_has_no_cluster_wide_write_access(namespaced: list[Obj]) -> None:
    cluster_grants = set(grants(one(namespaced, "ClusterRole")["rules"]))

    assert cluster_grants == CLUSTER_READ
    assert not any(verb in WRITE_VERBS for _, _, verb in cluster_grants)


@pytest.mark.parametrize("mode", ["cluster_wide", "namespaced"])
def test_bindings_name_the_operator_service_account(
    mode: str, request: pytest.FixtureRequest
) -> None:
    objects: list[Obj] = request.getfixturevalue(mode)
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]

    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        ]


def operator_container(objects: list[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Obj = containers[0]
    return container


def test_operator_runs_kopf_standalone_on_every_namespace(cluster_wide: list[Obj]) -> None:
    container = operator_container(cluster_wide)

    assert container["command"] == ["kopf"]
    assert container["args"][:4] == ["run", "-m", "fedop", "--standalone"]
    assert "--all-namespaces" in container["args"]
    assert not any(arg.startswith("--namespace") for arg in container["args"])


def test_operator_watches_only_the_listed_namespaces(namespaced: list[Obj]) -> None:
    args = operator_container(namespaced)["args"]

    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--all-namespaces" not in args


def test_liveness_probe_targets_kopfs_health_endpoint(cluster_wide: list[Obj]) -> None:
    container = operator_container(cluster_wide)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]

    assert f"--liveness=http://0.0.0.0:{port}/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_one_replica_replaced_with_recreate(cluster_wide: list[Obj]) -> None:
    spec = one(cluster_wide, "Deployment")["spec"]

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_operator_pod_runs_non_root_with_a_read_only_root(cluster_wide: list[Obj]) -> None:
    pod = one(cluster_wide, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(cluster_wide)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def test_values_become_operator_settings(helm: Path) -> None:
    objects = render(
        helm,
        "runtimeImage.repository=registry.example/fk/runtime",
        "runtimeImage.tag=1.2.3",
        "runtimeImage.pullPolicy=Never",
        "reconcileIntervalSeconds=7",
        "logLevel=debug",
        "image.tag=9.9.9",
        "credentials.lifetimeSeconds=900",
        "credentials.refreshSeconds=20",
        "metrics.scrapeNamespace=monitoring",
    )
    container = operator_container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}

    assert env["FEDKUBE_RUNTIME_IMAGE"] == "registry.example/fk/runtime:1.2.3"
    assert env["FEDKUBE_IMAGE_PULL_POLICY"] == "Never"
    assert env["FEDKUBE_RESYNC_SECONDS"] == "7"
    assert env["FEDKUBE_CREDENTIAL_LIFETIME_SECONDS"] == "900"
    assert env["FEDKUBE_CREDENTIAL_REFRESH_SECONDS"] == "20"
    assert env["FEDKUBE_METRICS_SCRAPE_NAMESPACE"] == "monitoring"
    assert "--verbose" in container["args"]
    assert container["image"].endswith(":9.9.9")


def test_operator_may_rotate_secrets_but_not_delete_them(cluster_wide: list[Obj]) -> None:
    allowed = set(grants(one(cluster_wide, "ClusterRole")["rules"]))

    assert ("", "secrets", "patch") in allowed
    assert ("", "secrets", "delete") not in allowed  # owned Secrets go with their job (GC)
    assert ("", "services", "patch") not in allowed


def test_default_credential_settings_are_the_operators_defaults(cluster_wide: list[Obj]) -> None:
    env = {e["name"]: e.get("value") for e in operator_container(cluster_wide)["env"]}

    assert env["FEDKUBE_CREDENTIAL_LIFETIME_SECONDS"] == "3600"
    assert env["FEDKUBE_CREDENTIAL_REFRESH_SECONDS"] == "1800"


def test_image_tags_default_to_the_charts_app_version(cluster_wide: list[Obj]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    container = operator_container(cluster_wide)
    env = {e["name"]: e.get("value") for e in container["env"]}

    assert container["image"] == f"fedkube/operator:{app_version}"
    assert env["FEDKUBE_RUNTIME_IMAGE"] == f"fedkube/runtime:{app_version}"


def test_rbac_and_service_account_can_be_left_to_the_cluster_admin(helm: Path) -> None:
    objects = render(
        helm, "rbac.create=false", "serviceAccount.create=false", "metrics.enabled=false"
    )

    assert kinds(objects) == [("Deployment", f"{RELEASE}-fedkube", NAMESPACE)]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("logLevel=loud", "/logLevel"),
        ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
        ("reconcileIntervalSeconds=0", "/reconcileIntervalSeconds"),
        ("runtimeImage.pullPolicy=Sometimes", "/runtimeImage/pullPolicy"),
        ("replicas=2", "'replicas' not allowed"),
        ("credentials.lifetimeSeconds=600", "/credentials/lifetimeSeconds"),
        ("credentials.refreshSeconds=0", "/credentials/refreshSeconds"),
        ("metrics.port=80", "/metrics/port"),
        ("metrics.serviceMonitor.interval=often", "/metrics/serviceMonitor/interval"),
    ],
    ids=[
        "unknown log level",
        "namespace that is not a DNS label",
        "zero reconcile interval",
        "unknown pull policy",
        "unknown key",
        "a credential lifetime STS refuses",
        "a zero credential refresh interval",
        "a privileged metrics port",
        "a scrape interval that is no duration",
    ],
)
def test_values_schema_refuses_bad_values_naming_them(
    helm: Path, value: str, complaint: str
) -> None:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", value
    )

    assert result.returncode != 0
    assert complaint in result.stderr


def test_chart_installs_the_generated_crds(helm: Path) -> None:
    result = run_helm(helm, "show", "crds", str(CHART))

    assert result.returncode == 0, result.stderr
    # Helm prints the files one after the other (in name order), without a separator.
    files = " ".join((REPO / "crds" / f).read_text() for f in CRD_FILES)
    assert result.stdout.split() == files.split()


def test_operator_metrics_port_is_on_by_default_behind_a_service(cluster_wide: list[Obj]) -> None:
    container = operator_container(cluster_wide)
    service = one(cluster_wide, "Service")

    assert {"name": "metrics", "containerPort": 9101, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FEDKUBE_OPERATOR_METRICS_PORT"] == "9101"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9101, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert (
        service["spec"]["selector"]
        == one(cluster_wide, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    assert not [o for o in cluster_wide if o["kind"] == "ServiceMonitor"]


def test_service_monitor_behind_a_value_scrapes_the_metrics_port(helm: Path) -> None:
    objects = render(
        helm,
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
        "metrics.serviceMonitor.interval=15s",
    )

    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    assert monitor["spec"]["selector"]["matchLabels"] == one(objects, "Service")["spec"]["selector"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_a_pod_monitor_scrapes_every_jobs_aggregator_pod(helm: Path) -> None:
    objects = render(helm, "metrics.serviceMonitor.enabled=true")

    monitor = one(objects, "PodMonitor")

    assert monitor["spec"]["selector"]["matchLabels"] == {names.LABEL_ROLE: "aggregator"}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"  # the aggregator container's named port
    assert not [o for o in render(helm, "metrics.serviceMonitor.enabled=true",
                                  "metrics.serviceMonitor.aggregators=false")
                if o["kind"] == "PodMonitor"]  # fmt: skip


def test_the_grafana_dashboard_ships_as_a_sidecar_configmap_behind_a_value(helm: Path) -> None:
    shipped = json.loads(DASHBOARD.read_text())

    objects = render(helm, "metrics.grafanaDashboard.enabled=true")

    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["fedkube.json"]) == shipped
    assert not [o for o in render(helm) if o["kind"] == "ConfigMap"]


def test_metrics_off_renders_no_port_service_or_env(helm: Path) -> None:
    objects = render(helm, "metrics.enabled=false", "metrics.serviceMonitor.enabled=true")

    container = operator_container(objects)
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert "FEDKUBE_OPERATOR_METRICS_PORT" not in {e["name"] for e in container["env"]}
    assert not [o for o in objects if o["kind"] in ("Service", "ServiceMonitor")]


SITE_CALLS = documented_calls("site_handlers.py")


def test_site_mode_grants_exactly_the_site_operators_calls(helm: Path) -> None:
    objects = render(helm, "mode=site")

    allowed = set(grants(one(objects, "ClusterRole")["rules"]))
    env = {e["name"]: e.get("value") for e in operator_container(objects)["env"]}
    assert allowed == SITE_CALLS
    assert ("fedkube.io", "federatedsites/status", "patch") in allowed
    assert not [g for g in allowed if g[1].startswith("federatedjobs")]
    assert env["FEDKUBE_OPERATOR_MODE"] == "site"


def test_site_mode_per_namespace_grants_the_site_calls_in_each(helm: Path) -> None:
    objects = render(helm, "mode=site", "watchNamespaces={hospital}")

    assert set(grants(one(objects, "Role", "hospital")["rules"])) == {
        c for c in SITE_CALLS if c[1] not in CLUSTER_SCOPED
    }


def test_an_unknown_mode_is_refused_by_the_values_schema(helm: Path) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "mode=both")

    assert result.returncode != 0
    assert "mode" in result.stderr
