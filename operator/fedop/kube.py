"""The only module of the operator that talks to the Kubernetes API (kopf's own watches aside).

Objects travel as plain dicts (what the builders make), over the ``kubernetes`` client's
connection pool and authentication, without its model classes: no conversion cost on lists
of hundreds of Jobs, and no model lagging behind a new field.

Exactly these API calls are made; the Helm chart's RBAC grants them and nothing more
(``charts/fedkube/templates/rbac.yaml``)::

    group          resource                    verbs
    fedkube.io     federatedjobs               get list watch delete   (watch: kopf; delete: TTL)
    fedkube.io     federatedjobs/status        get patch
    fedkube.io     federatedjobs/finalizers    update                  (blockOwnerDeletion)
    batch          jobs                        get list watch create patch delete
    ""             services                    get list create
    ""             secrets                     get list create patch   (list: metadata only; get:
                                                                        adoption, S3 credentials;
                                                                        patch: rotation)
    ""             configmaps                  get list create patch
    networking.k8s.io  networkpolicies         get list create         (list: metadata only)
    ""             events                      create patch            (kopf may patch its own)
    apiextensions.k8s.io  customresourcedefinitions  get list watch    (kopf: resource discovery)
    ""             namespaces                  get list watch          (kopf: --all-namespaces)

In ``mode: site`` the operator makes the calls listed in ``fedop.site_handlers`` instead (its
own FederatedSites, never a FederatedJob), through the same class.

Errors become ``fedop.errors.ApiError`` (with ``transient`` for retrying); creating an object
that exists is not an error when this FederatedJob owns it (``create`` adopts it), and raises
``OwnershipConflict`` when someone else does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from fedcore import spec as fs
from fedcore.site_spec import PLURAL as SITE_PLURAL
from fedop.builders import names
from fedop.errors import ApiError, OwnershipConflict
from fedop.observed import controller_uid
from fedop.settings import OperatorSettings

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"

_PATHS = {
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
    ): "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
}
_FJ_PATH = f"/apis/{fs.API_GROUP}/{fs.API_VERSION}/namespaces/{{ns}}/{fs.PLURAL}"
_SITE_PATH = f"/apis/{fs.API_GROUP}/{fs.API_VERSION}/namespaces/{{ns}}/{SITE_PLURAL}"


@dataclass(frozen=True)
class ChildLists:
    """Raw lists of one job's children (Services, Secrets and NetworkPolicies as metadata
    only)."""

    jobs: list[dict[str, Any]]
    services: list[dict[str, Any]]
    secrets: list[dict[str, Any]]
    configmaps: list[dict[str, Any]]
    network_policies: list[dict[str, Any]]


def _collection(api_version: str, kind: str, namespace: str) -> str:
    try:
        template = _PATHS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"kube.py does not handle {api_version} {kind}") from None
    return template.format(ns=quote(namespace, safe=""))


def _path_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return _collection(obj["apiVersion"], obj["kind"], meta["namespace"]), meta["name"]


class Kube:
    """Typed doors to the API calls listed in the module docstring."""

    def __init__(self, api: k8s.ApiClient, settings: OperatorSettings) -> None:
        self._api = api
        self._settings = settings

    @classmethod
    def from_environment(cls, settings: OperatorSettings) -> Kube:
        """In a pod: its service account. Elsewhere: ``KUBECONFIG`` / ``~/.kube/config``."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except ConfigException:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig or None, client_configuration=configuration
            )
        # Enough pooled connections for the parallel writes of one pass per worker.
        configuration.connection_pool_maxsize = max(10, settings.api_concurrency * settings.workers)
        return cls(k8s.ApiClient(configuration), settings)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # -- raw requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> Any:
        """One API request; the decoded JSON reply (None for an empty one)."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = list((query or {}).items())
        try:
            m, url, hdrs, data, post = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            reply = self._api.call_api(
                m, url, hdrs, data, post, _request_timeout=self._settings.request_timeout_seconds
            )
            raw = reply.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, "Unreachable", f"{method} {path}: {e}") from e
        if reply.status >= 400:
            raise _api_error(method, path, reply.status, raw)
        return json.loads(raw) if raw else None

    # -- FederatedJobs --------------------------------------------------------------------------

    def get_federatedjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request(
                "GET", f"{_FJ_PATH.format(ns=namespace)}/{quote(name, safe='')}"
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return obj

    def patch_status(self, job: names.JobRef, patch: Mapping[str, Any]) -> None:
        """Merge-patch ``status`` through the status subresource (the uid precondition makes a
        write meant for a deleted namesake fail instead of landing on the new object)."""
        body = {"metadata": {"uid": job.uid}, "status": patch}
        self.request(
            "PATCH",
            f"{_FJ_PATH.format(ns=job.namespace)}/{job.name}/status",
            body=body,
            content_type=MERGE_PATCH,
            query=self._manager(),
        )

    def delete_federatedjob(self, job: names.JobRef) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": job.uid},
            "propagationPolicy": "Background",
        }
        try:
            self.request("DELETE", f"{_FJ_PATH.format(ns=job.namespace)}/{job.name}", body=body)
        except ApiError as e:
            if e.status not in (404, 409):  # gone already / a new namesake: leave it
                raise

    # -- FederatedSites (the site operator, ``fedop.site_handlers``) -----------------------------

    def get_federatedsite(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request(
                "GET", f"{_SITE_PATH.format(ns=namespace)}/{quote(name, safe='')}"
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return obj

    def patch_site_status(self, site: names.JobRef, patch: Mapping[str, Any]) -> None:
        """Merge-patch a FederatedSite's ``status`` (uid precondition, as ``patch_status``)."""
        body = {"metadata": {"uid": site.uid}, "status": patch}
        self.request(
            "PATCH",
            f"{_SITE_PATH.format(ns=site.namespace)}/{quote(site.name, safe='')}/status",
            body=body,
            content_type=MERGE_PATCH,
            query=self._manager(),
        )

    # -- children -------------------------------------------------------------------------------

    def list_children(self, job: names.JobRef) -> ChildLists:
        query = {"labelSelector": names.children_selector(job)}

        def items(api_version: str, kind: str, accept: str = "application/json") -> list[Any]:
            reply = self.request(
                "GET", _collection(api_version, kind, job.namespace), query=query, accept=accept
            )
            found: list[dict[str, Any]] = reply.get("items") or []
            return found

        return ChildLists(
            jobs=items("batch/v1", "Job"),
            services=items("v1", "Service", METADATA_ONLY),
            secrets=items("v1", "Secret", METADATA_ONLY),
            configmaps=items("v1", "ConfigMap"),
            network_policies=items("networking.k8s.io/v1", "NetworkPolicy", METADATA_ONLY),
        )

    def create(self, obj: Mapping[str, Any], owner: names.JobRef) -> dict[str, Any]:
        """Create ``obj``; if its name is taken by an object ``owner`` controls, adopt that
        one (an earlier pass, or the operator before a restart, made it). Strict field
        validation, as kubectl's: a misspelt field passed through from the spec is refused,
        not silently dropped."""
        collection, name = _path_of(obj)
        query = {**self._manager(), "fieldValidation": "Strict"}
        try:
            made: dict[str, Any] = self.request("POST", collection, body=obj, query=query)
            return made
        except ApiError as e:
            if e.status != 409:
                raise
        existing: dict[str, Any] = self.request("GET", f"{collection}/{quote(name, safe='')}")
        holder = controller_uid(existing)
        if holder != owner.uid:
            raise OwnershipConflict(
                f"{obj['kind']} {owner.namespace}/{name} exists but is controlled by "
                f"{'uid ' + holder if holder else 'no ' + owner.kind}, not by {owner.kind} "
                f"{owner.name} (uid {owner.uid}); waiting for it to be deleted (delete it "
                "yourself if it is not a leftover of a deleted job)"
            )
        return existing

    def merge_patch(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        collection, name = _path_of(obj)
        self.request(
            "PATCH",
            f"{collection}/{quote(name, safe='')}",
            body=patch,
            content_type=MERGE_PATCH,
            query=self._manager(),
        )

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        path = f"{_collection('batch/v1', 'Job', namespace)}/{quote(name, safe='')}"
        self.request(
            "PATCH",
            path,
            body={"spec": {"suspend": suspend}},
            content_type=MERGE_PATCH,
            query=self._manager(),
        )

    def delete_job(
        self, namespace: str, name: str, propagation: Literal["Foreground", "Background"]
    ) -> None:
        path = f"{_collection('batch/v1', 'Job', namespace)}/{quote(name, safe='')}"
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            self.request("DELETE", path, body=body)
        except ApiError as e:
            if e.status != 404:
                raise

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data (base64 as stored), or None when there is no such Secret."""
        path = f"{_collection('v1', 'Secret', namespace)}/{quote(name, safe='')}"
        try:
            secret = self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        data: dict[str, str] = secret.get("data") or {}
        return data

    def post_event(self, event: Mapping[str, Any]) -> None:
        self.request("POST", _collection("v1", "Event", event["metadata"]["namespace"]), body=event)

    def _manager(self) -> dict[str, str]:
        return {"fieldManager": self._settings.field_manager}


def _api_error(method: str, path: str, status: int, raw: bytes) -> ApiError:
    reason, message = "", ""
    try:
        reply = json.loads(raw)
        reason, message = str(reply.get("reason", "")), str(reply.get("message", ""))
    except (ValueError, AttributeError):
        message = raw[:300].decode(errors="replace")
    return ApiError(status, reason, f"{method} {path}: {status} {reason}: {message}".strip())
