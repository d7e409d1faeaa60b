"""A site's side of a job, without Kubernetes: export the join bundle, run the DDP group.

``fedkube site bundle JOB CLIENT -o FILE`` reads the Secret ``<job>-<client>-join`` from the
coordinator's cluster with ``kubectl`` (so its ``--kubeconfig``, ``--context`` and
``--namespace`` work as they do for kubectl, and fedcore needs no Kubernetes library) and
writes the bundle (mode 0600).

``fedkube client --bundle FILE --nproc-per-node N`` runs this machine's share of the site's
DDP group from the bundle alone, with torchrun's semantics: ``N`` processes here, and for a
group over several machines the usual rendezvous variables, ``NNODES``, ``NODE_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, the same on every machine but ``NODE_RANK``. The bundle's
files (job file, signing key, commit public key, store credentials) go to a private temporary
folder for the group's lifetime and are named to the processes by the same variables a pod
gets, so the training processes are exactly the ones the coordinator would run.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcore import credentials as fc
from fedcore import join_bundle as jb
from fedcore import spec as fs
from fedcore.commit_signing import COMMIT_PUBLIC_KEY_FILE_ENV
from fedcore.errors import BundleError
from fedcore.signing import SIGNING_KEY_FILE_ENV

# ---- export -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubectlTarget:
    """Where ``kubectl`` looks: each unset field keeps kubectl's own default."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None

    def args(self) -> list[str]:
        out: list[str] = []
        if self.kubeconfig:
            out += ["--kubeconfig", self.kubeconfig]
        if self.context:
            out += ["--context", self.context]
        if self.namespace:
            out += ["--namespace", self.namespace]
        return out


def export_bundle(
    job: str,
    client: str,
    out: Path,
    target: KubectlTarget = KubectlTarget(),
    *,
    kubectl: str = "kubectl",
) -> jb.JoinBundle:
    """Read ``<job>-<client>-join`` and write its bundle to ``out`` (0600); the bundle."""
    name = jb.join_secret_name(job, client)
    argv = [kubectl, *target.args(), "get", "secret", name, "-o", "json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BundleError(f"cannot run {kubectl!r} to read Secret {name} ({e})") from e
    if done.returncode != 0:
        raise BundleError(
            f"kubectl could not read Secret {name}: {done.stderr.strip() or done.returncode}; "
            f"is {client!r} a site client of FederatedJob {job!r} (spec.clients[].site) in "
            "this namespace, and has the operator made its join bundle yet?"
        )
    secret: dict[str, Any] = json.loads(done.stdout)
    encoded = (secret.get("data") or {}).get(jb.SECRET_KEY)
    if not encoded:
        raise BundleError(f"Secret {name} holds no {jb.SECRET_KEY!r}; it is not a join bundle")
    data = base64.b64decode(encoded)
    bundle = jb.load_bundle(data, source=f"Secret {name}")
    jb.write_private(out, data)
    return bundle


def _kubectl_json(argv: list[str], what: str) -> dict[str, Any]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BundleError(f"cannot run {argv[0]!r} to read {what} ({e})") from e
    if done.returncode != 0:
        raise BundleError(
            f"kubectl could not read {what}: {done.stderr.strip() or done.returncode}"
        )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def cluster_job(
    job: str, target: KubectlTarget = KubectlTarget(), *, kubectl: str = "kubectl"
) -> fs.FederatedJob:
    """The FederatedJob ``job`` as the coordinator's API server holds it (its uid decides the
    default store prefix)."""
    argv = [kubectl, *target.args(), "get", f"federatedjobs.{fs.API_GROUP}", job, "-o", "json"]
    obj = _kubectl_json(argv, f"FederatedJob {job}")
    meta = obj.get("metadata") or {}
    obj["metadata"] = {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}
    return fs.parse_job(obj, source=f"FederatedJob {job}")


def site_policy(job: fs.FederatedJob, client: str) -> dict[str, Any]:
    """The store policy of a long-lived user for site ``client``: the very session policy a
    scoped client credential gets (``fedcore.credentials``), as an IAM or MinIO user policy."""
    spec = job.spec.client(client)
    if not spec.is_site:
        raise BundleError(
            f"client {client!r} of job {job.name!r} is not a site (spec.clients[].site is "
            "unset): the coordinator gives its pods minted credentials, it needs no store user"
        )
    return fc.session_policy(
        job.spec.storage.bucket,
        fs.job_prefix(job),
        fc.Role.for_client(client),
        variate=fc.keeps_variate(job.spec.strategy.name),
    )


# ---- the site's DDP group ------------------------------------------------------------------


@dataclass(frozen=True)
class SiteGroup:
    """This machine's share of the site's DDP group (torchrun's variables, checked)."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str | None
    master_port: str | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], nproc_per_node: int) -> SiteGroup:
        def number(name: str, default: int, low: int) -> int:
            raw = environ.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                value = low - 1
            if value < low:
                raise BundleError(f"{name}={raw!r} must be an integer of at least {low}")
            return value

        if nproc_per_node < 1:
            raise BundleError(f"--nproc-per-node={nproc_per_node} must be at least 1")
        nnodes = number("NNODES", 1, 1)
        node_rank = number("NODE_RANK", 0, 0)
        if node_rank >= nnodes:
            raise BundleError(f"NODE_RANK={node_rank} is not below NNODES={nnodes}")
        addr = environ.get("MASTER_ADDR", "").strip() or None
        port = environ.get("MASTER_PORT", "").strip() or None
        if nnodes > 1 and (addr is None or port is None):
            raise BundleError(
                f"NNODES={nnodes}: a group over several machines needs MASTER_ADDR and "
                "MASTER_PORT (node 0's address and a free port) on every machine"
            )
        return cls(nnodes, node_rank, nproc_per_node, addr, port)

    def pet_environ(self) -> dict[str, str]:
        """The ``PET_*`` variables ``fedcore.client.launch_client_group`` reads."""
        env = {
            "PET_NNODES": str(self.nnodes),
            "PET_NPROC_PER_NODE": str(self.nproc_per_node),
            "PET_NODE_RANK": str(self.node_rank),
        }
        if self.master_addr is not None:
            env["PET_MASTER_ADDR"] = self.master_addr
        if self.master_port is not None:
            env["PET_MASTER_PORT"] = self.master_port
        return env


def site_job_document(bundle: jb.JoinBundle, group: SiteGroup) -> dict[str, Any]:
    """The job file for this site's processes: the coordinator's, with the site client's
    group size set to the site's own (it is the site's business, not the coordinator's)."""
    return jb.group_job_document(bundle, group.nnodes, group.nproc_per_node)


def materialize(
    bundle: jb.JoinBundle, group: SiteGroup, folder: Path
) -> tuple[Path, dict[str, str]]:
    """Write the bundle's files into ``folder`` (private); the job file's path and the
    variables naming the files to the processes."""
    folder.chmod(0o700)
    job_file = folder / "job.json"
    job_file.write_text(json.dumps(site_job_document(bundle, group), indent=2) + "\n")
    key = folder / "signing.key"
    jb.write_private(key, bundle.signing_key.encode())
    public = folder / "commit-public-key.pem"
    public.write_text(bundle.commit_public_key)
    env = {
        SIGNING_KEY_FILE_ENV: str(key),
        COMMIT_PUBLIC_KEY_FILE_ENV: str(public),
        **group.pet_environ(),
    }
    if isinstance(bundle.credentials, jb.StoreUserKeys):
        # A long-lived store user signs as the standard AWS variables say.
        env["AWS_ACCESS_KEY_ID"] = bundle.credentials.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = bundle.credentials.secret_access_key
    else:
        creds = folder / fc.CREDENTIALS_FILE_NAME
        fc.write_credentials_file(creds, bundle.credentials)
        env[fc.CREDENTIALS_FILE_ENV] = str(creds)
    return job_file, env


SITE_CLEARED_ENV = (
    fc.CREDENTIALS_FILE_ENV,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)
"""Store credentials of the machine's environment: the bundle's alone must sign."""


def run_site_client(
    bundle_path: Path,
    nproc_per_node: int,
    environ: MutableMapping[str, str] | None = None,
) -> int:
    """``fedkube client --bundle``: run this machine's share of the site's group; exit code."""
    from fedcore.client import launch_client_group

    environ = os.environ if environ is None else environ
    bundle = jb.read_bundle(bundle_path)
    group = SiteGroup.from_environ(environ, nproc_per_node)
    with tempfile.TemporaryDirectory(prefix="fedkube-site-") as tmp:
        job_file, env = materialize(bundle, group, Path(tmp))
        for name in SITE_CLEARED_ENV:
            environ.pop(name, None)
        environ.update(env)
        return launch_client_group(job_file, bundle.client)
