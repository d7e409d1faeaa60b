"""Pod volumes materialised as folders on this machine, and the bind mounts that show them to
containers at their ``mountPath``.

Supported: emptyDir, secret, configMap, downwardAPI, projected (secret, configMap, downwardAPI
and serviceAccountToken: the ``kube-api-access-*`` volume the ServiceAccount admission plugin
adds, with a real bound token from the TokenRequest API), and hostPath. Content is written
once, when the pod starts: later Secret/ConfigMap updates and token rotation are not
propagated (a test cluster lives minutes; bound tokens are valid for an hour or more).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.cluster.kubelet import env as envmod
from tests.cluster.kubelet.refs import MissingReference, RefLookup
from tests.cluster.rest import Rest

DEFAULT_MODE = 0o644


class UnsupportedVolume(Exception):
    """The pod uses a volume type the process kubelet cannot provide (PVCs, CSI, ...)."""


class TokenSource(Protocol):
    def token(
        self,
        namespace: str,
        service_account: str,
        audience: str | None,
        expiration_s: int,
        pod_name: str,
        pod_uid: str,
    ) -> str: ...


class ApiTokenSource:
    """Bound service-account tokens from the TokenRequest API, as the kubelet gets them."""

    def __init__(self, api: Rest) -> None:
        self.api = api

    def token(
        self,
        namespace: str,
        service_account: str,
        audience: str | None,
        expiration_s: int,
        pod_name: str,
        pod_uid: str,
    ) -> str:
        spec: dict[str, Any] = {
            "expirationSeconds": expiration_s,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid},
        }
        if audience:
            spec["audiences"] = [audience]
        resp = self.api.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(resp["status"]["token"])


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


def _write_files(root: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)


def _keyed_files(
    data: Mapping[str, bytes], items: list[dict[str, Any]] | None, mode: int, what: str
) -> dict[str, tuple[bytes, int]]:
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out = {}
    for item in items:
        if item["key"] not in data:
            raise MissingReference(f"{what}: key {item['key']!r} not found")
        out[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
    return out


def _object_files(
    kind: str, src: Mapping[str, Any], namespace: str, lookup: RefLookup, mode: int
) -> dict[str, tuple[bytes, int]]:
    name = src.get("secretName") or src.get("name") or ""
    data = (
        lookup.secret(namespace, name) if kind == "secret" else lookup.config_map(namespace, name)
    )
    if data is None:
        if src.get("optional"):
            return {}
        raise MissingReference(f'{kind} "{name}" not found in namespace "{namespace}"')
    return _keyed_files(data, src.get("items"), mode, f"{kind} {namespace}/{name}")


def _downward_files(
    pod: Mapping[str, Any], items: list[dict[str, Any]], mode: int
) -> dict[str, tuple[bytes, int]]:
    out = {}
    for item in items:
        if "fieldRef" in item:
            value = envmod.field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            raise UnsupportedVolume("downwardAPI resourceFieldRef items are not supported")
        out[item["path"]] = (value.encode(), int(item.get("mode", mode)))
    return out


def _projected_files(
    pod: Mapping[str, Any], src: Mapping[str, Any], lookup: RefLookup, tokens: TokenSource
) -> dict[str, tuple[bytes, int]]:
    meta, spec = pod["metadata"], pod["spec"]
    mode = int(src.get("defaultMode", DEFAULT_MODE))
    out: dict[str, tuple[bytes, int]] = {}
    for source in src.get("sources") or []:
        if "secret" in source:
            out.update(_object_files("secret", source["secret"], meta["namespace"], lookup, mode))
        elif "configMap" in source:
            out.update(
                _object_files("configMap", source["configMap"], meta["namespace"], lookup, mode)
            )
        elif "downwardAPI" in source:
            out.update(_downward_files(pod, source["downwardAPI"].get("items") or [], mode))
        elif "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            token = tokens.token(
                meta["namespace"],
                spec.get("serviceAccountName") or "default",
                sat.get("audience"),
                int(sat.get("expirationSeconds", 3607)),
                meta["name"],
                meta["uid"],
            )
            out[sat["path"]] = (token.encode(), mode)
        else:
            raise UnsupportedVolume(f"projected source {sorted(source)} is not supported")
    return out


def prepare(
    pod: Mapping[str, Any], pod_dir: Path, lookup: RefLookup, tokens: TokenSource
) -> dict[str, Path]:
    """Create every volume of ``pod`` under ``pod_dir``; volume name -> folder (or file)."""
    ns = pod["metadata"]["namespace"]
    paths: dict[str, Path] = {}
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        root = pod_dir / "volumes" / name
        if "emptyDir" in vol:
            root.mkdir(parents=True, exist_ok=True)  # kept across container restarts
        elif "hostPath" in vol:
            host = Path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not host.exists():
                host.parent.mkdir(parents=True, exist_ok=True)
                host.touch()
            root = host
        else:
            if "secret" in vol:
                src = vol["secret"]
                files = _object_files(
                    "secret", src, ns, lookup, int(src.get("defaultMode", DEFAULT_MODE))
                )
            elif "configMap" in vol:
                src = vol["configMap"]
                files = _object_files(
                    "configMap", src, ns, lookup, int(src.get("defaultMode", DEFAULT_MODE))
                )
            elif "projected" in vol:
                files = _projected_files(pod, vol["projected"], lookup, tokens)
            elif "downwardAPI" in vol:
                src = vol["downwardAPI"]
                files = _downward_files(
                    pod, src.get("items") or [], int(src.get("defaultMode", DEFAULT_MODE))
                )
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise UnsupportedVolume(
                    f"volume {name!r}: type {kinds} is not supported by the process kubelet "
                    "(supported: emptyDir, secret, configMap, projected, downwardAPI, hostPath)"
                )
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _write_files(root, files)
        paths[name] = root
    return paths


def mounts(
    container: Mapping[str, Any], volumes: Mapping[str, Path], env: Mapping[str, str]
) -> list[Mount]:
    """The container's ``volumeMounts`` as host sources and in-container targets."""
    out = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise UnsupportedVolume(f"volumeMount {vm['mountPath']!r}: no volume {vm['name']!r}")
        source = volumes[vm["name"]]
        sub = vm.get("subPath") or envmod.expand(vm.get("subPathExpr") or "", env)
        if sub:
            source = source / sub
            if not source.exists():
                source.mkdir(parents=True)  # as the kubelet does for a missing subPath
        out.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly", False))))
    return out
