"""Secrets and ConfigMaps a pod refers to (env, envFrom, volumes), read from the API server.

A missing object is not an error of the kubelet: like a real kubelet, the pod waits (its
container shows ``CreateContainerConfigError``) and is retried until the object appears.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

from tests.cluster.rest import ApiError, Rest


class MissingReference(Exception):
    """A referenced Secret/ConfigMap (or key in it) does not exist and is not optional."""


class RefLookup(Protocol):
    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None: ...


class ApiRefLookup:
    def __init__(self, api: Rest) -> None:
        self.api = api

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        body = self._read("secrets", namespace, name)
        if body is None:
            return None
        return {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        body = self._read("configmaps", namespace, name)
        if body is None:
            return None
        out = {k: str(v).encode() for k, v in (body.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (body.get("binaryData") or {}).items()})
        return out


def lookup_key(
    lookup: RefLookup, kind: str, namespace: str, name: str, key: str, optional: bool
) -> bytes | None:
    """One key of a Secret ("secret") or ConfigMap ("configMap"); None when optional and absent."""
    obj = lookup.secret(namespace, name) if kind == "secret" else lookup.config_map(namespace, name)
    if obj is None:
        if optional:
            return None
        raise MissingReference(f'{kind} "{name}" not found in namespace "{namespace}"')
    if key not in obj:
        if optional:
            return None
        raise MissingReference(f"couldn't find key {key} in {kind} {namespace}/{name}")
    return obj[key]
