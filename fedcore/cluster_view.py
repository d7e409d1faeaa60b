"""A FederatedJob on a cluster, read the way ``fedkube watch NAME`` and ``fedkube plot NAME``
need it: the job file and commit public key its pods get, its status, and its store.

The cluster is reached through ``kubectl`` with the user's own kubeconfig, context and
namespace (the same flags as kubectl's), not through a Kubernetes client library: the
runtime never imports one (its layers keep torch-side code and API-side code apart), and a
person who can ``kubectl get fj`` can watch. What is read:

* the ConfigMap ``<job>-spec``: ``job.json`` (the spec with its defaults and the uid the store
  prefix derives from) and ``commit-public-key.pem``, the key every record is verified with;
* the FederatedJob's ``status``: phase, the newest condition's message, each client's
  restarts (these are not in the store);
* the store, with the caller's own S3 credentials (the standard AWS variables): the records
  are read and verified as for a local run. ``--endpoint`` replaces the job's endpoint when
  the in-cluster address (``http://minio.minio.svc:9000``) is not reachable from here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from fedcore.commit_signing import CommitVerifier, verifier_from_pem
from fedcore.errors import FedcoreError
from fedcore.spec import FederatedJob, job_prefix, parse_job
from fedcore.store import ObjectStore, open_store

KUBECTL_ENV = "KUBECTL"
"""Path of the kubectl to run; unset: ``kubectl`` on ``PATH``."""
KUBECTL_SECONDS = 30.0
JOB_FILE_KEY = "job.json"
COMMIT_PUBLIC_KEY_KEY = "commit-public-key.pem"
"""Keys of the ``<job>-spec`` ConfigMap (``fedop.builders.configmap``)."""


class ClusterUnreachable(FedcoreError):
    """kubectl is missing, or could not read the job (the message carries kubectl's words)."""


@dataclass(frozen=True)
class ClusterTarget:
    """Which FederatedJob, and how kubectl reaches it (each None: kubectl's default)."""

    name: str
    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None

    def kubectl(self, *args: str) -> str:
        """``kubectl ARGS`` with this target's flags; its stdout."""
        binary = os.environ.get(KUBECTL_ENV) or shutil.which("kubectl")
        if not binary:
            raise ClusterUnreachable(
                "kubectl is not on PATH (set $KUBECTL to its path); fedkube reads cluster jobs "
                "through it, with your kubeconfig"
            )
        flags = []
        if self.kubeconfig:
            flags += ["--kubeconfig", self.kubeconfig]
        if self.context:
            flags += ["--context", self.context]
        if self.namespace:
            flags += ["--namespace", self.namespace]
        try:
            done = subprocess.run(
                [binary, *flags, *args],
                capture_output=True,
                text=True,
                timeout=KUBECTL_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ClusterUnreachable(f"kubectl {' '.join(args)} took over {e.timeout:.0f} s") from e
        if done.returncode != 0:
            raise ClusterUnreachable(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def get_json(self, kind: str, name: str) -> dict[str, Any]:
        obj = json.loads(self.kubectl("get", kind, name, "-o", "json"))
        if not isinstance(obj, dict):
            raise ClusterUnreachable(f"kubectl get {kind} {name} did not return an object")
        return obj


@dataclass
class ClusterJob:
    """One cluster job: its runtime job file, verifier and store, and its live status."""

    target: ClusterTarget
    job: FederatedJob
    verifier: CommitVerifier
    store: ObjectStore

    def status(self) -> dict[str, Any]:
        """The FederatedJob's status now (empty when it has none yet)."""
        status = self.target.get_json("federatedjob", self.target.name).get("status") or {}
        return status if isinstance(status, dict) else {}


def open_cluster_job(target: ClusterTarget, endpoint: str | None = None) -> ClusterJob:
    """Read ``target``'s job file and public key and open its store (see the module doc)."""
    target.get_json("federatedjob", target.name)  # a clear NotFound before anything else
    configmap = f"{target.name}-spec"
    data = target.get_json("configmap", configmap).get("data") or {}
    job_text, pem = data.get(JOB_FILE_KEY), data.get(COMMIT_PUBLIC_KEY_KEY)
    if not job_text or not pem:
        raise ClusterUnreachable(
            f"ConfigMap {configmap} has no {JOB_FILE_KEY} and {COMMIT_PUBLIC_KEY_KEY} yet: the "
            "operator writes it once the job's commit key exists; try again in a few seconds"
        )
    try:
        document = json.loads(job_text)
    except json.JSONDecodeError as e:
        raise ClusterUnreachable(
            f"ConfigMap {configmap}'s {JOB_FILE_KEY} is not JSON ({e}); the operator writes it, "
            "so delete the ConfigMap and it is written again"
        ) from e
    job = parse_job(document)
    if endpoint:
        storage = job.spec.storage.model_copy(update={"endpoint": endpoint})
        job = job.model_copy(update={"spec": job.spec.model_copy(update={"storage": storage})})
    verifier = verifier_from_pem(pem.encode(), source=f"ConfigMap {configmap}")
    store = open_store(job.spec.storage, job_prefix(job))
    return ClusterJob(target, job, verifier, store)


def status_line(status: dict[str, Any]) -> str:
    """``phase: newest condition's message`` (what ``kubectl describe fj`` leads with)."""
    phase = str(status.get("phase") or "Pending")
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    newest = max(conditions, key=lambda c: str(c.get("lastTransitionTime", "")), default=None)
    message = str(newest.get("message") or "") if newest else ""
    return f"{phase}: {message}" if message else phase


def restarts(status: dict[str, Any]) -> dict[str, int]:
    """Client -> restarts the operator made, from the status."""
    clients = status.get("clients") or {}
    if not isinstance(clients, dict):
        return {}
    return {
        str(name): c["restarts"] if isinstance(c.get("restarts"), int) else 0
        for name, c in clients.items()
        if isinstance(c, dict)
    }
