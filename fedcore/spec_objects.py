"""The Kubernetes sub-objects of a FederatedJob that fedkube looks into: env and resources.

Most Kubernetes sub-objects pass through a FederatedJob verbatim (``K8sObject``): the API
server checks them once the operator puts them into a pod. Two are read before that, so their
shape is checked here and declared in the CRD's schema alike (the ``*_SCHEMA`` dicts become
part of it): env entries, whose names the operator reserves (``spec.env_problems``; the CRD
repeats it in CEL), and resources, whose ``nvidia.com/gpu`` limit must agree with
``procsPerReplica``. The checks raise ``ValueError`` lines of the form ``sub.field: message``,
which the error report places under the entry's own path.
"""

from __future__ import annotations

from typing import Any

from fedcore.spec_messages import kind_of, shown

MAX_ENV_NAME = 256
"""Longest env name: far beyond any real one, and a bound CEL cost estimation needs."""
MAX_ENV_VALUE = 32768
"""Longest literal env value (the job's spec is copied into a ConfigMap, 1 MiB in all)."""
GPU_RESOURCE = "nvidia.com/gpu"
MAX_GPU_QUANTITY = 8
"""Longest GPU quantity string: bounds the CRD's GPU rule within the CEL cost budget."""

ENV_VAR_SCHEMA: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_ENV_NAME},
        "value": {"type": "string", "maxLength": MAX_ENV_VALUE},
    },
}
_QUANTITIES: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        GPU_RESOURCE: {"x-kubernetes-int-or-string": True, "maxLength": MAX_GPU_QUANTITY}
    },
}
RESOURCES_SCHEMA: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {"limits": _QUANTITIES, "requests": _QUANTITIES},
}


def check_env_var(entry: dict[str, Any]) -> dict[str, Any]:
    """An env entry with a non-empty string name and, when given, a string value (a null
    name or value is absent, as the API server prunes it)."""
    entry = {k: v for k, v in entry.items() if not (k in ("name", "value") and v is None)}
    problems: list[str] = []
    name = entry.get("name")
    if "name" not in entry:
        problems.append("name: required field is missing; every env entry needs a name")
    elif not isinstance(name, str):
        problems.append(f"name: must be a string (got {shown(name)}, {kind_of(name)})")
    elif not 1 <= len(name) <= MAX_ENV_NAME:
        problems.append(f"name: must hold 1 to {MAX_ENV_NAME} characters (got {len(name)})")
    value = entry.get("value")
    if "value" in entry and not isinstance(value, str):
        problems.append(
            f"value: must be a string (got {shown(value)}, {kind_of(value)}); quote it, "
            f'e.g. value: "{value}"'
        )
    elif isinstance(value, str) and len(value) > MAX_ENV_VALUE:
        problems.append(f"value: allows at most {MAX_ENV_VALUE} characters (got {len(value)})")
    if problems:
        raise ValueError("\n".join(problems))
    return entry


def check_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """Resources whose ``limits`` and ``requests`` are mappings, with a whole-number or string
    GPU quantity."""
    problems: list[str] = []
    for part in ("limits", "requests"):
        if part not in resources:
            continue
        section = resources[part]
        if not isinstance(section, dict):
            problems.append(
                f"{part}: must be a mapping of resource names to quantities "
                f"(got {shown(section)}, {kind_of(section)})"
            )
            continue
        gpus = section.get(GPU_RESOURCE)
        if GPU_RESOURCE in section and (isinstance(gpus, bool) or not isinstance(gpus, int | str)):
            problems.append(
                f"{part}['{GPU_RESOURCE}']: must be a whole number or a quantity string "
                f"(got {shown(gpus)}, {kind_of(gpus)})"
            )
        elif isinstance(gpus, str) and len(gpus) > MAX_GPU_QUANTITY:
            problems.append(
                f"{part}['{GPU_RESOURCE}']: allows at most {MAX_GPU_QUANTITY} characters "
                f"(got {shown(gpus)}); write the number of GPUs"
            )
    if problems:
        raise ValueError("\n".join(problems))
    return resources
