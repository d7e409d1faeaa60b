"""Pod templates of a FederatedJob: the runtime contract's command, environment and mounts.

Client pods run ``fedkube client`` under torchrun's environment (``PET_*``), which the operator
owns: users may not set those variables (``check_env`` refuses such a spec, naming the field)
because a wrong rank or world size does not fail loudly, it hangs a DDP group or trains on the
wrong shard. Refusing is better than silently dropping them: the user learns at once, and the
fix (remove the variable) is obvious.

Every pod runs as a non-root user, without privilege escalation or capabilities, with a
read-only root filesystem (``/tmp`` is an emptyDir) and the runtime's default seccomp profile,
and without a service-account token: the runtime talks to the object store, never to the API.
"""

from __future__ import annotations

from typing import Any

from fedcore import spec as fs
from fedcore.tracking import CREDENTIAL_ENV as TRACKING_CREDENTIAL_ENV
from fedop.builders import configmap, credentials, names, secrets
from fedop.settings import OperatorSettings

SIGNING_KEY_DIR = "/var/run/secrets/fedkube/signing-key"
"""Where a client pod finds its own key (file ``key``)."""
SIGNING_KEYS_DIR = "/var/run/secrets/fedkube/signing-keys"
"""Where the aggregator finds every client's key (one file per client name)."""
COMMIT_KEY_DIR = "/var/run/secrets/fedkube/commit-key"
"""Where the aggregator (only) finds the job's commit signing key (file ``private.pem``)."""
TMP_DIR = "/tmp"
CLIENT_CONTAINER = "client"
AGGREGATOR_CONTAINER = "aggregator"
GPU_RESOURCE = "nvidia.com/gpu"


def _with_defaults(own: list[dict[str, Any]], user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's variables, then defaults the user did not set, then the user's (last,
    so they may refer to the operator's as ``$(PET_NODE_RANK)``)."""
    given = {item.get("name") for item in user}
    defaults = [
        {"name": "HOME", "value": TMP_DIR},  # the root filesystem is read-only
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # logs reach `kubectl logs` as they happen
    ]
    return own + [d for d in defaults if d["name"] not in given] + [dict(e) for e in user]


def client_env(
    job: names.JobRef, spec: fs.FederatedJobSpec, client: fs.ClientSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    index_ref = f"metadata.annotations['{names.COMPLETION_INDEX_ANNOTATION}']"
    own: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(client.replicas)},
        {"name": "PET_NPROC_PER_NODE", "value": str(client.procs_per_replica)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index_ref}}},
        {"name": "PET_MASTER_ADDR", "value": names.master_addr(job, client.name)},
        {"name": "PET_MASTER_PORT", "value": str(settings.master_port)},
        {"name": "FEDKUBE_SIGNING_KEY_FILE", "value": f"{SIGNING_KEY_DIR}/{secrets.KEY}"},
        _COMMIT_PUBLIC_KEY_ENV,
        *credentials.pod_credentials(job, spec, credentials.client_role(client.name)).env,
    ]
    return _with_defaults(own, client.env)


AGGREGATOR_METRICS_PORT = 9102
"""Where the aggregator serves its Prometheus metrics (``fedcore.aggregator_metrics``)."""

_COMMIT_PUBLIC_KEY_ENV = {
    "name": "FEDKUBE_COMMIT_PUBLIC_KEY_FILE",
    "value": configmap.COMMIT_PUBLIC_KEY_FILE,
}


def aggregator_env(
    job: names.JobRef, spec: fs.FederatedJobSpec, metrics_linger_seconds: int = 0
) -> list[dict[str, Any]]:
    own = [
        {"name": "FEDKUBE_SIGNING_KEYS_DIR", "value": SIGNING_KEYS_DIR},
        {
            "name": "FEDKUBE_COMMIT_KEY_FILE",
            "value": f"{COMMIT_KEY_DIR}/{secrets.COMMIT_PRIVATE_KEY}",
        },
        _COMMIT_PUBLIC_KEY_ENV,
        *credentials.pod_credentials(job, spec, credentials.AGGREGATOR).env,
        {"name": "FEDKUBE_METRICS_PORT", "value": str(AGGREGATOR_METRICS_PORT)},
        {"name": "FEDKUBE_METRICS_LINGER_SECONDS", "value": str(metrics_linger_seconds)},
        *tracking_env(spec),
    ]
    return _with_defaults(own, spec.aggregator.env)


def tracking_env(spec: fs.FederatedJobSpec) -> list[dict[str, Any]]:
    """MLflow's credential variables from ``spec.tracking.mlflow.secretRef``, each optional
    (a token, or a user name and password): for the aggregator only."""
    mlflow = spec.tracking.mlflow if spec.tracking is not None else None
    if mlflow is None or mlflow.secret_ref is None:
        return []
    return [
        {
            "name": name,
            "valueFrom": {
                "secretKeyRef": {"name": mlflow.secret_ref.name, "key": name, "optional": True}
            },
        }
        for name in TRACKING_CREDENTIAL_ENV
    ]


def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    uid = settings.pod_user_id
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def client_resources(client: fs.ClientSpec) -> dict[str, Any]:
    """The client's resources with one GPU per process when ``gpu`` is true (requests equal
    limits, as Kubernetes requires of extended resources)."""
    resources = {k: dict(v) if isinstance(v, dict) else v for k, v in client.resources.items()}
    if client.gpu:
        gpus = str(client.procs_per_replica)
        for part in ("limits", "requests"):
            section = resources.get(part)
            resources[part] = {**(section if isinstance(section, dict) else {}), GPU_RESOURCE: gpus}
    return resources


def _spec_volume(job: names.JobRef) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {
        "name": "fedkube-job",
        "configMap": {
            "name": names.spec_configmap(job),
            "items": [
                {"key": configmap.JOB_FILE_KEY, "path": configmap.JOB_FILE_KEY},
                {"key": configmap.COMMIT_PUBLIC_KEY_KEY, "path": configmap.COMMIT_PUBLIC_KEY_KEY},
            ],
        },
    }
    mount = {"name": "fedkube-job", "mountPath": configmap.JOB_FILE_DIR, "readOnly": True}
    return volume, mount


def _tmp_volume(size_limit: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's writable scratch (the root filesystem is read-only); the aggregator's holds
    the downloaded models, its disk accumulator and robust strategies' kept updates, bounded
    by ``spec.aggregator.scratchSizeLimit`` when set."""
    empty_dir = {} if size_limit is None else {"sizeLimit": size_limit}
    return (
        {"name": "fedkube-tmp", "emptyDir": empty_dir},
        {"name": "fedkube-tmp", "mountPath": TMP_DIR},
    )


def _shm_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """NCCL and DataLoader workers pass tensors through /dev/shm, which runtimes cap at 64 MiB."""
    return (
        {"name": "fedkube-shm", "emptyDir": {"medium": "Memory"}},
        {"name": "fedkube-shm", "mountPath": "/dev/shm"},
    )


def _scheduling(node_selector: dict[str, str], tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if tolerations:
        out["tolerations"] = [dict(t) for t in tolerations]
    return out


def _pod_spec(
    settings: OperatorSettings,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    scheduling: dict[str, Any],
) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings),
        **scheduling,
        "containers": [container],
        "volumes": volumes,
    }


def _container(
    name: str,
    spec: fs.FederatedJobSpec,
    settings: OperatorSettings,
    command: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    if resources:
        container["resources"] = resources
    return container


def client_pod_template(
    job: names.JobRef, spec: fs.FederatedJobSpec, client: fs.ClientSpec, settings: OperatorSettings
) -> dict[str, Any]:
    spec_volume, spec_mount = _spec_volume(job)
    tmp_volume, tmp_mount = _tmp_volume()
    key_volume = {
        "name": "fedkube-signing-key",
        "secret": {"secretName": names.key_secret(job, client.name), "defaultMode": 0o440},
    }
    key_mount = {"name": "fedkube-signing-key", "mountPath": SIGNING_KEY_DIR, "readOnly": True}
    store = credentials.pod_credentials(job, spec, credentials.client_role(client.name))
    volumes = [spec_volume, key_volume, *store.volumes, tmp_volume]
    mounts = [spec_mount, key_mount, *store.mounts, tmp_mount]
    if client.gpu:
        shm_volume, shm_mount = _shm_volume()
        volumes.append(shm_volume)
        mounts.append(shm_mount)
    volumes += [dict(v) for v in client.volumes]
    mounts += [dict(m) for m in client.volume_mounts]
    command = ["fedkube", "client", "--job", configmap.JOB_FILE, "--client", client.name]
    container = _container(
        CLIENT_CONTAINER,
        spec,
        settings,
        command,
        client_env(job, spec, client, settings),
        client_resources(client),
        mounts,
    )
    container["ports"] = [{"name": "rendezvous", "containerPort": settings.master_port}]
    pod = _pod_spec(
        settings, container, volumes, _scheduling(client.node_selector, client.tolerations)
    )
    pod["subdomain"] = names.client_service(job, client.name)
    return {"metadata": {"labels": names.labels(job, "client", client.name)}, "spec": pod}


def aggregator_pod_template(
    job: names.JobRef, spec: fs.FederatedJobSpec, settings: OperatorSettings
) -> dict[str, Any]:
    spec_volume, spec_mount = _spec_volume(job)
    tmp_volume, tmp_mount = _tmp_volume(spec.aggregator.scratch_size_limit)
    keys_volume = {
        "name": "fedkube-signing-keys",
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {
                    "secret": {
                        "name": names.key_secret(job, c.name),
                        "items": [{"key": secrets.KEY, "path": c.name}],
                    }
                }
                for c in spec.clients
            ],
        },
    }
    keys_mount = {"name": "fedkube-signing-keys", "mountPath": SIGNING_KEYS_DIR, "readOnly": True}
    store = credentials.pod_credentials(job, spec, credentials.AGGREGATOR)
    commit_volume = {
        "name": "fedkube-commit-key",
        "secret": {
            "secretName": names.commit_key_secret(job),
            "items": [{"key": secrets.COMMIT_PRIVATE_KEY, "path": secrets.COMMIT_PRIVATE_KEY}],
            "defaultMode": 0o440,
        },
    }
    commit_mount = {"name": "fedkube-commit-key", "mountPath": COMMIT_KEY_DIR, "readOnly": True}
    command = ["fedkube", "aggregator", "--job", configmap.JOB_FILE]
    container = _container(
        AGGREGATOR_CONTAINER,
        spec,
        settings,
        command,
        aggregator_env(job, spec, settings.metrics_linger_seconds),
        dict(spec.aggregator.resources),
        [spec_mount, keys_mount, commit_mount, *store.mounts, tmp_mount],
    )
    container["ports"] = [{"name": "metrics", "containerPort": AGGREGATOR_METRICS_PORT}]
    pod = _pod_spec(
        settings,
        container,
        [spec_volume, keys_volume, commit_volume, *store.volumes, tmp_volume],
        _scheduling(spec.aggregator.node_selector, spec.aggregator.tolerations),
    )
    return {"metadata": {"labels": names.labels(job, "aggregator")}, "spec": pod}
