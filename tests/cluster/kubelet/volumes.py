"""Pod volumes materialised as folders on this machine, and the bind mounts that show them to
containers at their ``mountPath``.

Supported: emptyDir, secret, configMap, downwardAPI, projected (secret, configMap, downwardAPI
and serviceAccountToken: the ``kube-api-access-*`` volume the ServiceAccount admission plugin
adds, with a real bound token from the TokenRequest API), and hostPath.

Secret, configMap, projected and downwardAPI volumes are laid out as the kubelet's atomic
writer lays them out: the files live in a hidden timestamped folder, ``..data`` is a symlink
to it, and each top-level name is a symlink through ``..data``. ``refresh`` re-reads the
referenced objects while the pod runs (the worker calls it every ``volume_sync_s``) and swaps
``..data`` with one ``rename``, so a process reading a mounted file sees either the old or the
new content, never a mix: that is how a rotated credential reaches a running pod. Tokens are
not rotated (a test cluster lives minutes; bound tokens are valid for an hour or more), and a
``subPath`` mount keeps the content it started with, as with a real kubelet.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.cluster.kubelet import env as envmod
from tests.cluster.kubelet.refs import MissingReference, RefLookup
from tests.cluster.rest import ApiError, Rest

DEFAULT_MODE = 0o644
DATA_LINK = "..data"
"""The symlink naming the current payload folder (the kubelet's atomic writer's name)."""

Files = dict[str, tuple[bytes, int]]
"""Relative path -> (content, mode) of one volume's payload."""


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


def current_files(root: Path) -> Files | None:
    """The payload ``..data`` points at now (None when the volume was never written)."""
    data = root / DATA_LINK
    if not data.is_symlink():
        return None
    out: Files = {}
    for path in sorted(data.resolve().rglob("*")):
        if path.is_file():
            rel = path.relative_to(data.resolve()).as_posix()
            out[rel] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return out


def write_atomically(root: Path, files: Mapping[str, tuple[bytes, int]]) -> bool:
    """Make ``files`` the volume's content in one step; False when it already was.

    The new payload goes to a fresh ``..<time>_<random>`` folder, a ``..data_tmp`` symlink to
    it replaces ``..data`` by ``rename`` (atomic), top-level symlinks are added or removed to
    match, and the old folder goes last: a reader never finds a half-written payload.
    """
    if current_files(root) == dict(files):
        return False
    root.mkdir(parents=True, exist_ok=True)
    old = (root / DATA_LINK).resolve() if (root / DATA_LINK).is_symlink() else None
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    folder = root / f"..{stamp}.{secrets.token_hex(4)}"
    folder.mkdir()
    for rel, (data, mode) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    tmp = root / f"{DATA_LINK}_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder.name)
    os.replace(tmp, root / DATA_LINK)
    tops = {rel.split("/", 1)[0] for rel in files}
    for name in tops:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA_LINK}/{name}")
    for entry in root.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old is not None and old.parent == root.resolve():
        shutil.rmtree(old, ignore_errors=True)
    return True


def _keyed_files(
    data: Mapping[str, bytes], items: list[dict[str, Any]] | None, mode: int, what: str
) -> Files:
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
) -> Files:
    name = src.get("secretName") or src.get("name") or ""
    data = (
        lookup.secret(namespace, name) if kind == "secret" else lookup.config_map(namespace, name)
    )
    if data is None:
        if src.get("optional"):
            return {}
        raise MissingReference(f'{kind} "{name}" not found in namespace "{namespace}"')
    return _keyed_files(data, src.get("items"), mode, f"{kind} {namespace}/{name}")


def _downward_files(pod: Mapping[str, Any], items: list[dict[str, Any]], mode: int) -> Files:
    out = {}
    for item in items:
        if "fieldRef" in item:
            value = envmod.field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            raise UnsupportedVolume("downwardAPI resourceFieldRef items are not supported")
        out[item["path"]] = (value.encode(), int(item.get("mode", mode)))
    return out


def _projected_files(
    pod: Mapping[str, Any],
    src: Mapping[str, Any],
    lookup: RefLookup,
    tokens: TokenSource,
    kept: Files | None = None,
) -> Files:
    """``kept``: the volume's current payload, whose tokens are reused instead of renewed."""
    meta, spec = pod["metadata"], pod["spec"]
    mode = int(src.get("defaultMode", DEFAULT_MODE))
    out: Files = {}
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
            if kept is not None and sat["path"] in kept:
                out[sat["path"]] = kept[sat["path"]]
                continue
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
            files = _payload(pod, vol, lookup, tokens)
            if files is None:
                kinds = sorted(k for k in vol if k != "name")
                raise UnsupportedVolume(
                    f"volume {name!r}: type {kinds} is not supported by the process kubelet "
                    "(supported: emptyDir, secret, configMap, projected, downwardAPI, hostPath)"
                )
            shutil.rmtree(root, ignore_errors=True)
            write_atomically(root, files)
        paths[name] = root
    return paths


def _payload(
    pod: Mapping[str, Any],
    vol: Mapping[str, Any],
    lookup: RefLookup,
    tokens: TokenSource,
    kept: Files | None = None,
) -> Files | None:
    """The files of an API-backed volume (None for other kinds)."""
    ns = pod["metadata"]["namespace"]
    if "secret" in vol:
        src = vol["secret"]
        return _object_files("secret", src, ns, lookup, int(src.get("defaultMode", DEFAULT_MODE)))
    if "configMap" in vol:
        src = vol["configMap"]
        mode = int(src.get("defaultMode", DEFAULT_MODE))
        return _object_files("configMap", src, ns, lookup, mode)
    if "projected" in vol:
        return _projected_files(pod, vol["projected"], lookup, tokens, kept)
    if "downwardAPI" in vol:
        src = vol["downwardAPI"]
        mode = int(src.get("defaultMode", DEFAULT_MODE))
        return _downward_files(pod, src.get("items") or [], mode)
    return None


def refresh(
    pod: Mapping[str, Any], volumes: Mapping[str, Path], lookup: RefLookup, tokens: TokenSource
) -> list[str]:
    """Bring the pod's Secret, ConfigMap, projected and downwardAPI volumes up to date with
    the API server; the names of the volumes whose content changed.

    As a kubelet does, a referenced object that cannot be read now (deleted, API trouble)
    leaves the volume as it was rather than emptying it under a running process.
    """
    changed = []
    for vol in pod["spec"].get("volumes") or []:
        root = volumes.get(vol["name"])
        if root is None or not (root / DATA_LINK).is_symlink():
            continue
        try:
            files = _payload(pod, vol, lookup, tokens, kept=current_files(root))
        except (MissingReference, ApiError, UnsupportedVolume, ValueError, OSError):
            continue
        if files is not None and write_atomically(root, files):
            changed.append(vol["name"])
    return changed


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
