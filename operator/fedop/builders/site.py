"""Pure builders of what a FederatedSite owns in the site's cluster, from its join bundle.

A site's DDP group is a client group like any in the coordinator's cluster, so its Indexed
Job, headless Service and NetworkPolicy come from the very builders the coordinator uses
(``jobs.client_job``, ``services.client_service``, ``network.client_network_policy``), with the
FederatedSite as the owner (``JobRef.kind``) and its name in place of the job's: the children
are ``<site>-<client>`` and the pods ``<site>-<client>-<index>``. What those pods mount comes
from the bundle instead of the coordinator's operator:

- ``<site>-spec`` (ConfigMap): the bundle's job file, with this client's group size and
  ``gpu`` set to the site's own, and the job's commit public key;
- ``<site>-<client>-key`` (Secret): the client's signing key;
- ``<site>-<client>-store`` (Secret): the bundle's store credential, as ``credentials.json``
  (a minted session, re-read by the pods when the Secret changes) or as ``AWS_*`` keys (a
  long-lived store user of the site).

Every derived object carries the bundle's digest as an annotation, so a pass can tell from
metadata alone that the bundle Secret was replaced (e.g. with fresh store credentials) and
rewrite them; the pods see the new files without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from fedcore import credentials as fc
from fedcore import join_bundle as jb
from fedcore import site_spec as ss
from fedcore import spec as fs
from fedop.builders import configmap, credentials, jobs, names, network, secrets, services
from fedop.settings import OperatorSettings

ANNOTATION_BUNDLE = "fedkube.io/bundle-sha256"
"""On every object derived from the bundle: the digest of the bundle it was made from."""
STORE_USER_KEYS = fs.CREDENTIAL_ENV
"""Data keys of the store Secret when the bundle carries a long-lived store user."""


def site_ref(name: str, namespace: str, uid: str) -> names.JobRef:
    """The owner of a site's children: the FederatedSite (same naming as a FederatedJob)."""
    return names.JobRef(name, namespace, uid, kind=ss.KIND)


def bundle_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def name_problems(ref: names.JobRef, site: ss.FederatedSiteSpec, client: str) -> list[str]:
    """Why the children's names would not be valid DNS labels (empty when they are)."""
    host = f"{names.client_job(ref, client)}-{site.replicas - 1}"
    if len(host) > fs.MAX_HOST_NAME:
        return [
            f"pod host name {host!r} (<site>-<client>-<index>) has {len(host)} characters "
            f"(limit {fs.MAX_HOST_NAME}); shorten the FederatedSite's name"
        ]
    return []


def store_secret_name(ref: names.JobRef, client: str) -> str:
    return credentials.secret_name(ref, credentials.client_role(client))


def client_view(
    ref: names.JobRef, bundle: jb.JoinBundle, site: ss.FederatedSiteSpec
) -> tuple[fs.FederatedJobSpec, fs.ClientSpec]:
    """The job spec and client as the pod builders need them: the coordinator's job, with
    this client's pods described by the FederatedSite (and run here, so not a site here), and
    the store credentials taken from the store Secret. Only the pod builders read it; the
    pods' job file is the bundle's (``job_text``)."""
    job = bundle.job.spec
    t = site.template
    client = job.client(bundle.client).model_copy(
        update={
            "replicas": site.replicas,
            "procs_per_replica": site.procs_per_replica,
            "gpu": site.gpu,
            "resources": dict(t.resources),
            "node_selector": dict(t.node_selector),
            "tolerations": [dict(x) for x in t.tolerations],
            "env": [dict(x) for x in t.env],
            "volumes": [dict(x) for x in t.volumes],
            "volume_mounts": [dict(x) for x in t.volume_mounts],
            "site": None,
        }
    )
    storage = job.storage
    if isinstance(bundle.credentials, jb.StoreUserKeys):
        # A store user signs as AWS_* variables, the way a shared credential reaches pods.
        keys = fs.SecretRef(name=store_secret_name(ref, bundle.client))
        storage = storage.model_copy(update={"credentials": "shared", "secret_ref": keys})
    view = job.model_copy(
        update={
            "clients": [client],
            "storage": storage,
            "image": site.image or job.image,
        }
    )
    return view, client


def job_text(bundle: jb.JoinBundle, site: ss.FederatedSiteSpec) -> str:
    """``job.json`` of the site's pods: the bundle's job file with this client's group size
    and ``gpu`` the site's (sorted keys: equal inputs, equal bytes)."""
    doc = jb.group_job_document(bundle, site.replicas, site.procs_per_replica, site.gpu)
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _annotated(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    meta = obj["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_BUNDLE: digest}
    return obj


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def derived_objects(
    ref: names.JobRef, site: ss.FederatedSiteSpec, bundle: jb.JoinBundle, digest: str
) -> list[dict[str, Any]]:
    """The ConfigMap and Secrets the group's pods mount, in that order."""
    client = bundle.client
    spec_cm = configmap.spec_configmap(ref, bundle.job.spec, bundle.commit_public_key)
    spec_cm["data"][configmap.JOB_FILE_KEY] = job_text(bundle, site)
    key = secrets.key_secret(ref, client, bundle.signing_key)
    key.pop("immutable")  # a replaced bundle may carry another job's key
    store_name = store_secret_name(ref, client)
    if isinstance(bundle.credentials, jb.StoreUserKeys):
        data = {
            STORE_USER_KEYS[0]: _b64(bundle.credentials.access_key_id),
            STORE_USER_KEYS[1]: _b64(bundle.credentials.secret_access_key),
        }
    else:
        text = fc.dump_credentials(bundle.credentials).decode()
        data = {credentials.CREDENTIALS_KEY: _b64(text)}
    store = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": names.metadata(ref, store_name, "client", client),
        "data": data,
    }
    return [_annotated(o, digest) for o in (spec_cm, key, store)]


def group_objects(
    ref: names.JobRef,
    site: ss.FederatedSiteSpec,
    bundle: jb.JoinBundle,
    settings: OperatorSettings,
    *,
    restarts: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The group's headless Service, NetworkPolicy and Indexed Job (the coordinator's
    builders, owned by the FederatedSite)."""
    view, client = client_view(ref, bundle, site)
    service = services.client_service(ref, client.name, settings.master_port)
    policy = network.client_network_policy(ref, client.name)
    job = jobs.client_job(ref, view, client, settings, restarts=restarts)
    return service, policy, job
