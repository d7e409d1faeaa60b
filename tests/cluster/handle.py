"""What a test holds: a running cluster plus the helpers every e2e test needs.

``ClusterHandle`` gives the kubeconfig, an official ``kubernetes`` ApiClient, kubectl/helm
runners, the bridge address (where pods reach services on this machine, e.g. MinIO), container
logs, namespaces that are ready for pods, and polling waits that report what they last saw.
``make_pod`` builds a pod manifest for the process kubelet (a command is required; the image
is only a label).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from tests.cluster.launcher import ClusterInfo
from tests.cluster.logs import LogStore

T = TypeVar("T")

HOST_IMAGE = "fedkube.local/host:latest"
"""Pods need an image name; the process kubelet pulls nothing and runs on the host."""


def make_pod(
    name: str,
    command: Sequence[str],
    *,
    restart_policy: str = "Never",
    labels: dict[str, str] | None = None,
    container: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A one-container pod running ``command``; ``container`` and ``spec`` override fields."""
    main: dict[str, Any] = {"name": "main", "image": HOST_IMAGE, "command": list(command)}
    main.update(container or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 5,
            "containers": [main],
            **spec,
        },
    }


def _json(response: Any) -> dict[str, Any]:
    """The body of a ``_preload_content=False`` call (typed as a model, really urllib3's)."""
    body: dict[str, Any] = json.loads(response.data)
    return body


def phase(pod: dict[str, Any]) -> str:
    return str(pod.get("status", {}).get("phase", ""))


def container_status(pod: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """``status.containerStatuses[index]`` ({} until the kubelet reported it)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return dict(statuses[index]) if len(statuses) > index else {}


def container_pid(pod: dict[str, Any], index: int = 0) -> int:
    """The host PID of a running container (the process kubelet's container ID is its PID)."""
    return int(str(container_status(pod, index).get("containerID", "")).rsplit("/", 1)[-1])


class ClusterHandle:
    def __init__(self, info: ClusterInfo) -> None:
        self.info = info
        self.kubeconfig: Path = info.kubeconfig
        self.bridge_ip: str = info.bridge_ip
        """This machine's address on the pod network: bind servers pods must reach here."""
        self.server: str = info.server
        self.bin_dirs: list[Path] = info.bin_dirs
        self.kubectl: Path = info.kubectl
        self.helm: Path = info.helm
        self.nodes: list[str] = info.nodes
        self.api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.logs = LogStore(info.logs_dir)
        audit = info.raw.get("audit_log") or ""
        self.audit_log: Path | None = Path(audit) if audit else None
        """The API server's audit log (``ClusterConfig.audit_log``), else None."""

    def audit_events(self) -> list[dict[str, Any]]:
        """Every request the API server recorded so far (``ClusterConfig(audit_log=True)``)."""
        if self.audit_log is None:
            raise RuntimeError("this cluster was started without ClusterConfig(audit_log=True)")
        lines = self.audit_log.read_text().splitlines() if self.audit_log.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    # -- tools --------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, kubectl and helm on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([*map(str, self.bin_dirs), env.get("PATH", "")])
        return env

    def _run(
        self, binary: Path, args: Sequence[str], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binary), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{binary.name} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def run_kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS`` against this cluster; AssertionError with its output if it fails."""
        return self._run(self.kubectl, args, input=input, check=check, timeout=timeout)

    def run_helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``helm ARGS`` against this cluster; AssertionError with its output if it fails."""
        return self._run(self.helm, args, input=input, check=check, timeout=timeout)

    # -- namespaces and pods ------------------------------------------------------------------

    def create_namespace(self, prefix: str = "t") -> str:
        """A fresh namespace whose default ServiceAccount exists (pods can be created)."""
        name = f"{prefix[:40].rstrip('-')}-{uuid.uuid4().hex[:6]}".lower()
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

        def ready() -> bool:
            sas = self.core.list_namespaced_service_account(name).items
            cms = self.core.list_namespaced_config_map(name).items
            return any(s.metadata and s.metadata.name == "default" for s in sas) and any(
                c.metadata and c.metadata.name == "kube-root-ca.crt" for c in cms
            )

        self.wait_for(ready, 60, f"namespace {name} to get its default ServiceAccount")
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            self.core.delete_namespace(name)
        except client.ApiException as e:
            if e.status != 404:
                raise

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        pod = client.V1Pod.from_dict(manifest)
        if pod is None:
            raise ValueError("empty pod manifest")
        resp = self.core.create_namespaced_pod(namespace, pod, _preload_content=False)
        return _json(resp)

    def apply(self, namespace: str, *manifests: dict[str, Any]) -> None:
        """``kubectl apply`` any objects (Services, Jobs, RBAC, CRs) into ``namespace``."""
        items = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        self.run_kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(items))

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod as JSON (camelCase, as kubectl shows it), or None when it does not exist."""
        try:
            resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        return _json(resp)

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """Pods of ``namespace`` (optionally by label selector) as JSON."""
        resp = self.core.list_namespaced_pod(
            namespace, label_selector=selector or None, _preload_content=False
        )
        return list(_json(resp).get("items", []))

    def wait_for_pod(
        self,
        namespace: str,
        name: str,
        condition: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Poll the pod until ``condition(pod)``; the failure message shows its last status."""
        last: list[dict[str, Any] | None] = [None]

        def check() -> dict[str, Any] | None:
            pod = self.pod(namespace, name)
            last[0] = pod
            return pod if pod is not None and condition(pod) else None

        try:
            return self.wait_for(check, timeout, f"pod {namespace}/{name} {what}")
        except AssertionError as e:
            pod = last[0]
            status = json.dumps(pod.get("status"), indent=1) if pod else "(no pod)"
            logs = self.pod_logs(namespace, name)
            raise AssertionError(f"{e}\nlast status: {status}\nlogs:\n{logs}") from None

    def wait_for_phase(
        self, namespace: str, name: str, *phases: str, timeout: float = 120
    ) -> dict[str, Any]:
        return self.wait_for_pod(
            namespace,
            name,
            lambda p: phase(p) in phases,
            f"to reach phase {'/'.join(phases)}",
            timeout,
        )

    def wait_for_deleted(self, namespace: str, name: str, timeout: float = 60) -> None:
        self.wait_for(
            lambda: self.pod(namespace, name) is None,
            timeout,
            f"pod {namespace}/{name} to be deleted",
        )

    def pod_volumes(self, pod: dict[str, Any]) -> Path:
        """The folder on this machine holding the pod's volumes, one sub-folder per volume
        (what its containers see at their mount paths), until the pod is deleted."""
        meta = pod["metadata"]
        folder = f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        return Path(self.info.state_dir) / "pods" / folder / "volumes"

    def pod_logs(
        self, namespace: str, pod: str, container: str | None = None, *, previous: bool = False
    ) -> str:
        """The container's log (current run, or the previous one); kept after deletion."""
        return self.logs.read(namespace, pod, container, previous=previous)

    # -- waiting ------------------------------------------------------------------------------

    @staticmethod
    def wait_for(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
        """Call ``fn`` until it returns something truthy; AssertionError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)
