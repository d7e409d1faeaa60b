"""A container's environment, built the way the kubelet builds it.

Order and precedence follow the kubelet: service variables (KUBERNETES_SERVICE_HOST/PORT...),
then ``envFrom`` sources, then ``env`` entries, each ``value`` expanded with ``$(NAME)``
references to the variables defined before it (``$$`` escapes a dollar). The host environment
plays the image's ENV (PATH with the repo's .venv first, HOME, HOSTNAME) and sits underneath.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tests.cluster.kubelet import quantity
from tests.cluster.kubelet.refs import MissingReference, RefLookup, lookup_key

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_INDEXED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names replaced, unknown kept, ``$$`` -> ``$``."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end == -1:
                    out.append(text[i:])
                    break
                name = text[i + 2 : end]
                out.append(env[name] if name in env else text[i : end + 1])
                i = end + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API ``fieldRef`` of ``pod``; ValueError naming the path if unsupported."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = _INDEXED.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs") or []),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ValueError(f"fieldRef {path!r} is not supported by the process kubelet")


def resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], allocatable: Mapping[str, str]
) -> str:
    """A ``resourceFieldRef``: the container's limit/request, else the node's allocatable."""
    kind, _, resource = str(ref["resource"]).partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None:
        value = allocatable.get(resource, "0")
    return quantity.divide_ceil(str(value), ref.get("divisor"))


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise MissingReference(f"{what} is not UTF-8 text, so it cannot be an env value") from None


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    base: Mapping[str, str],
    service: Mapping[str, str],
    lookup: RefLookup,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The full environment of one container process."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(service)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        kind = "configMap" if "configMapRef" in source else "secret"
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        name, optional = ref.get("name", ""), bool(ref.get("optional", False))
        data = lookup.config_map(ns, name) if kind == "configMap" else lookup.secret(ns, name)
        if data is None:
            if optional:
                continue
            raise MissingReference(f'{kind} "{name}" not found in namespace "{ns}"')
        for key, value in data.items():
            if _ENV_NAME.match(prefix + key):
                env[prefix + key] = _decode(value, f"{kind} {name} key {key}")
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        src = item["valueFrom"]
        if "fieldRef" in src:
            env[name] = field_value(pod, src["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in src:
            env[name] = resource_value(container, src["resourceFieldRef"], allocatable)
        elif "secretKeyRef" in src or "configMapKeyRef" in src:
            kind = "secret" if "secretKeyRef" in src else "configMap"
            ref = src.get("secretKeyRef") or src.get("configMapKeyRef")
            found = lookup_key(
                lookup, kind, ns, ref["name"], ref["key"], bool(ref.get("optional", False))
            )
            if found is not None:
                env[name] = _decode(found, f"{kind} {ref['name']} key {ref['key']}")
        else:
            raise ValueError(f"env {name}: unsupported valueFrom {sorted(src)}")
    return {**base, **env}


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args``, expanded. Images are not pulled, so ``command`` is required."""
    command = list(container.get("command") or [])
    if not command:
        raise ValueError(
            f"container {container.get('name')!r} has no command: the process kubelet runs the "
            "container's command on this machine and cannot use an image's entrypoint"
        )
    return [expand(str(a), env) for a in (*command, *(container.get("args") or []))]
