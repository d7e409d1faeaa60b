"""The process kubelet runs a pod's command and reports what a real kubelet would.

Phases, exit codes, restart policies and counts, graceful deletion, the container's
environment and volumes, init containers, and ``kubectl logs`` through the API server.
"""

from __future__ import annotations

import base64
import json

import psutil
import pytest

from tests.cluster.handle import ClusterHandle, container_pid, container_status, make_pod, phase

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_pod_command_runs_and_succeeds_with_exit_code_0(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.create_pod(namespace, make_pod("hello", ["python", "-c", "print('hello, pod')"]))

    pod = cluster.wait_for_phase(namespace, "hello", "Succeeded", "Failed")

    assert phase(pod) == "Succeeded"
    done = container_status(pod)["state"]["terminated"]
    assert (done["exitCode"], done["reason"]) == (0, "Completed")
    assert cluster.pod_logs(namespace, "hello") == "hello, pod\n"


def test_failing_pod_reports_failed_with_its_exit_code(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.create_pod(namespace, make_pod("fails", ["sh", "-c", "echo about to fail; exit 7"]))

    pod = cluster.wait_for_phase(namespace, "fails", "Succeeded", "Failed")

    assert phase(pod) == "Failed"
    status = container_status(pod)
    assert (status["state"]["terminated"]["exitCode"], status["restartCount"]) == (7, 0)
    assert status["state"]["terminated"]["reason"] == "Error"


def test_on_failure_restarts_the_container_until_it_succeeds(
    cluster: ClusterHandle, namespace: str
) -> None:
    # The emptyDir outlives container restarts: the first run leaves a mark and fails.
    script = "if [ -e /scratch/ran ]; then echo second run; else touch /scratch/ran; exit 3; fi"
    cluster.create_pod(
        namespace,
        make_pod(
            "flaky",
            ["sh", "-c", script],
            restart_policy="OnFailure",
            container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
            volumes=[{"name": "scratch", "emptyDir": {}}],
        ),
    )

    pod = cluster.wait_for_phase(namespace, "flaky", "Succeeded", "Failed")

    assert phase(pod) == "Succeeded"
    status = container_status(pod)
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert cluster.pod_logs(namespace, "flaky") == "second run\n"


def test_always_restarts_a_container_that_exits_and_counts_restarts(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.create_pod(
        namespace, make_pod("looping", ["sh", "-c", "echo tick"], restart_policy="Always")
    )

    pod = cluster.wait_for_pod(
        namespace,
        "looping",
        lambda p: container_status(p).get("restartCount", 0) >= 2,
        "to be restarted twice",
    )

    assert phase(pod) == "Running"


def test_environment_volumes_and_working_dir_reach_the_container(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.apply(
        namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
         "data": {"password": base64.b64encode(b"s3cret").decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
         "data": {"MODE": "fast", "config.yaml": "rounds: 3\n"}},
    )  # fmt: skip
    report = (
        "import json, os, pathlib; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(),"
        " 'secret': pathlib.Path('/etc/creds/password').read_text(),"
        " 'config': pathlib.Path('/etc/settings/config.yaml').read_text(),"
        " 'labels': pathlib.Path('/etc/podinfo/labels').read_text()}))"
    )
    cluster.create_pod(namespace, make_pod(
        "envcheck",
        ["python", "-c", report],
        labels={"app": "envcheck"},
        container={
            "workingDir": "/tmp",
            "env": [
                {"name": "PLAIN", "value": "v1"},
                {"name": "EXPANDED", "value": "$(PLAIN)-and-$(MY_NAME)-$$(KEPT)"},
                {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "PASSWORD", "valueFrom": {
                    "secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "MODE_FROM_MAP", "valueFrom": {
                    "configMapKeyRef": {"name": "settings", "key": "MODE"}}},
                {"name": "CPU_LIMIT", "valueFrom": {
                    "resourceFieldRef": {"resource": "limits.cpu"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
            "resources": {"limits": {"cpu": "2"}},
            "volumeMounts": [
                {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                {"name": "settings", "mountPath": "/etc/settings"},
                {"name": "podinfo", "mountPath": "/etc/podinfo"},
            ],
        },
        volumes=[
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ],
    ))  # fmt: skip

    pod = cluster.wait_for_phase(namespace, "envcheck", "Succeeded", "Failed")

    assert phase(pod) == "Succeeded"
    seen = json.loads(cluster.pod_logs(namespace, "envcheck"))
    env = seen["env"]
    assert env["PLAIN"] == "v1"
    # $(MY_NAME) is defined after EXPANDED, so it stays as written (as in Kubernetes).
    assert env["EXPANDED"] == "v1-and-$(MY_NAME)-$(KEPT)"
    assert env["MY_NAME"] == "envcheck"
    assert env["MY_IP"] == pod["status"]["podIP"]
    assert env["PASSWORD"] == "s3cret"
    assert env["MODE_FROM_MAP"] == "fast"
    assert env["CM_MODE"] == "fast"
    assert env["CPU_LIMIT"] == "2"
    assert env["HOSTNAME"] == "envcheck"
    assert env["KUBERNETES_SERVICE_HOST"] == cluster.bridge_ip
    assert seen["cwd"] == "/tmp"
    assert seen["secret"] == "s3cret"
    assert seen["config"] == "rounds: 3\n"
    assert seen["labels"] == 'app="envcheck"'


def test_deleting_a_pod_sends_sigterm_and_then_removes_it(
    cluster: ClusterHandle, namespace: str
) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    print('got SIGTERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    cluster.create_pod(namespace, make_pod("graceful", ["python", "-c", script]))
    cluster.wait_for(lambda: "ready" in cluster.pod_logs(namespace, "graceful"), 60,
                     "the pod to install its SIGTERM handler")  # fmt: skip
    pid = container_pid(cluster.wait_for_phase(namespace, "graceful", "Running"))

    cluster.core.delete_namespaced_pod("graceful", namespace)

    cluster.wait_for_deleted(namespace, "graceful")
    assert "got SIGTERM" in cluster.pod_logs(namespace, "graceful")
    assert not psutil.pid_exists(pid)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    cluster: ClusterHandle, namespace: str
) -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(600)\n"
    )
    cluster.create_pod(namespace, make_pod("stubborn", ["python", "-c", script]))
    cluster.wait_for(lambda: "ignoring" in cluster.pod_logs(namespace, "stubborn"), 60,
                     "the pod to ignore SIGTERM")  # fmt: skip
    pid = container_pid(cluster.wait_for_phase(namespace, "stubborn", "Running"))

    cluster.core.delete_namespaced_pod("stubborn", namespace, grace_period_seconds=1)

    cluster.wait_for_deleted(namespace, "stubborn", timeout=30)
    assert not psutil.pid_exists(pid)


def test_init_containers_run_to_completion_before_the_main_container(
    cluster: ClusterHandle, namespace: str
) -> None:
    manifest = make_pod(
        "with-init",
        ["cat", "/shared/prepared"],
        container={"volumeMounts": [{"name": "work", "mountPath": "/shared"}]},
        volumes=[{"name": "work", "emptyDir": {}}],
        initContainers=[{
            "name": "prepare", "image": "fedkube.local/host", "command":
            ["sh", "-c", "echo prepared by init > /shared/prepared"],
            "volumeMounts": [{"name": "work", "mountPath": "/shared"}],
        }],
    )  # fmt: skip
    cluster.create_pod(namespace, manifest)

    pod = cluster.wait_for_phase(namespace, "with-init", "Succeeded", "Failed")

    assert phase(pod) == "Succeeded"
    assert cluster.pod_logs(namespace, "with-init", "main") == "prepared by init\n"


def test_kubectl_logs_reads_the_container_log_through_the_api_server(
    cluster: ClusterHandle, namespace: str
) -> None:
    cluster.create_pod(namespace, make_pod("talker", ["sh", "-c", "echo one; echo two"]))
    cluster.wait_for_phase(namespace, "talker", "Succeeded")

    out = cluster.run_kubectl("logs", "-n", namespace, "talker").stdout

    assert out == "one\ntwo\n"


def test_secret_and_configmap_updates_reach_a_running_pods_volumes(
    cluster: ClusterHandle, namespace: str
) -> None:
    def secret(value: bytes) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rotating"},
                "data": {"token": base64.b64encode(value).decode()}}  # fmt: skip

    def config(value: str) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"mode": value}}  # fmt: skip

    cluster.apply(namespace, secret(b"first"), config("slow"))
    # Prints what it reads whenever it changes, as a process re-reading its credentials would.
    watch = (
        "import pathlib, time\n"
        "seen = None\n"
        "while True:\n"
        "    now = (pathlib.Path('/etc/s/token').read_text(),"
        " pathlib.Path('/etc/c/mode').read_text())\n"
        "    if now != seen:\n"
        "        print(*now, flush=True); seen = now\n"
        "    time.sleep(0.2)\n"
    )
    cluster.create_pod(namespace, make_pod(
        "watcher",
        ["python", "-c", watch],
        container={"volumeMounts": [
            {"name": "s", "mountPath": "/etc/s", "readOnly": True},
            {"name": "c", "mountPath": "/etc/c", "readOnly": True},
        ]},
        volumes=[
            {"name": "s", "secret": {"secretName": "rotating"}},
            {"name": "c", "configMap": {"name": "settings"}},
        ],
    ))  # fmt: skip
    cluster.wait_for(
        lambda: "first slow" in cluster.pod_logs(namespace, "watcher"), 60, "the pod to start"
    )

    cluster.apply(namespace, secret(b"second"), config("fast"))

    cluster.wait_for(
        lambda: "second fast" in cluster.pod_logs(namespace, "watcher"),
        60,
        "the updated Secret and ConfigMap to reach the running container",
    )
    pod = cluster.pod(namespace, "watcher")
    assert pod is not None
    assert phase(pod) == "Running"
    assert container_status(pod)["restartCount"] == 0
