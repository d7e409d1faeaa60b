"""Generate the FederatedJob CRD from the pydantic models in ``fedcore.spec``.

The models are the single source of truth for the resource; this module turns their JSON
schema into what the API server accepts as a *structural* OpenAPI v3 schema and adds what
only Kubernetes understands (CEL rules, list types, printer columns, the status subresource).

Pydantic's schema needs rewriting: ``$ref``/``$defs`` are inlined, ``anyOf: [X, null]``
becomes ``X`` with ``nullable: true``, JSON-Schema-2020 numeric ``exclusiveMinimum`` becomes
OpenAPI 3.0's boolean form, titles go and ``additionalProperties: false`` goes (the API server
prunes or, with kubectl's default strict field validation, refuses unknown fields). Every
string and list must carry a bound (``max_length`` in the model): CEL cost estimation needs
one, and a missing bound is an error here, not a silent default, so the CRD and the models
never disagree.

::

    python -m fedop.crd            # write crds/federated{job,site}.yaml and the chart's copies
    python -m fedop.crd --check    # exit 1 when either file is stale (CI, ``make verify``)
    python -m fedop.crd --stdout   # print the CRD
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic.alias_generators import to_camel

from fedcore import spec as fs

Schema = dict[str, Any]

CRD_NAME = f"{fs.PLURAL}.{fs.API_GROUP}"
OUTPUTS = (Path("crds/federatedjob.yaml"), Path("charts/fedkube/crds/federatedjob.yaml"))
"""Both copies, relative to the repository root: ``kubectl apply -f crds/`` and Helm's crds/."""
HEADER = (
    "# Generated from fedcore/spec.py by `make crds` (python -m fedop.crd). Do not edit:\n"
    "# change the pydantic models (or fedop/crd.py for Kubernetes-only rules) and regenerate.\n"
)
MAX_HOST_NAME = fs.MAX_HOST_NAME
MAX_JOB_NAME = fs.MAX_JOB_NAME


class SchemaNotStructural(ValueError):
    """The models' JSON schema uses a construct this generator cannot express structurally."""


# ---- Kubernetes-only additions, keyed by the schema path they attach to ----------------------

_FROZEN_PHASES = "['Running', 'Suspended']"
_WHILE_FROZEN = (
    "!has(oldSelf.status) || !has(oldSelf.status.phase)"
    f" || !(oldSelf.status.phase in {_FROZEN_PHASES})"
)


def _frozen(field: str, rule: str) -> Schema:
    """A transition rule: ``spec.<field>`` keeps its value while the job runs or is suspended.

    The aggregator refuses to resume on a store whose ``job.json`` disagrees with the spec, so
    a change mid-run could only break the job. Status updates and suspend toggling stay free.
    """
    return {
        "rule": f"{_WHILE_FROZEN} || ({rule})",
        "messageExpression": (
            "'cannot change while the job is ' + oldSelf.status.phase"
            " + '; delete and recreate the FederatedJob to change it'"
        ),
        "fieldPath": f".spec.{field.split('[')[0]}",
        "reason": "FieldValueForbidden",
    }


_INDEX_DIGITS = "(c.replicas <= 10 ? 1 : c.replicas <= 100 ? 2 : c.replicas <= 1000 ? 3 : 4)"
"""Digits of the highest completion index, ``replicas - 1``; CEL's ``string(int)`` has no
size bound, which would price the rule out of the cost budget."""


def _same_optional(field: str) -> str:
    """``spec.<field>`` unchanged, for an object the manifest may leave out: the schema has no
    default for a whole sub-object, and CEL fails on a missing key ("no such key"), which would
    refuse every status write of such a job."""
    return (
        f"has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
        f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field})"
    )


_HOST_NAME_FITS = (
    f"size(self.metadata.name) + size(c.name) + 2 + {_INDEX_DIGITS} <= {MAX_HOST_NAME}"
)

ROOT_RULES: list[Schema] = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_JOB_NAME}",
        "message": (
            f"too long: child objects are named <name>-aggregator and must fit in "
            f"{MAX_HOST_NAME} characters, so use at most {MAX_JOB_NAME}"
        ),
        "fieldPath": ".metadata.name",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": f"self.metadata.name.matches('{fs.JOB_NAME}')",
        "message": (
            "must start with a lowercase letter and hold only lowercase letters, digits and '-' "
            "(it prefixes Service names, which are DNS-1035 labels)"
        ),
        "fieldPath": ".metadata.name",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": f"self.spec.clients.all(c, {_HOST_NAME_FITS})",
        "message": (
            "with metadata.name, a pod host name <job>-<client>-<index> would be longer than "
            f"{MAX_HOST_NAME} characters; shorten the job name or the client's name"
        ),
        "fieldPath": ".spec.clients",
        "reason": "FieldValueInvalid",
    },
    _frozen("rounds", "self.spec.rounds == oldSelf.spec.rounds"),
    _frozen("seed", "self.spec.seed == oldSelf.spec.seed"),
    _frozen("task", "self.spec.task == oldSelf.spec.task"),
    _frozen("storage", _same_optional("storage")),
    _frozen("strategy", _same_optional("strategy")),
    _frozen(
        "clients[]",
        "self.spec.clients.map(c, c.name) == oldSelf.spec.clients.map(c, c.name)"
        " && self.spec.clients.map(c, c.replicas) == oldSelf.spec.clients.map(c, c.replicas)"
        " && self.spec.clients.map(c, c.procsPerReplica)"
        " == oldSelf.spec.clients.map(c, c.procsPerReplica)"
        " && self.spec.clients.map(c, c.gpu) == oldSelf.spec.clients.map(c, c.gpu)",
    ),
]
"""Rules at the object root: only there can CEL see ``metadata.name`` and ``oldSelf.status``."""


def _cel_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in sorted(values)) + "]"


_ENV_NAME_FREE = " && ".join(
    [f"!(self.name in {_cel_list(fs.RESERVED_ENV)})"]
    + [f"!self.name.startsWith('{p}')" for p in fs.RESERVED_ENV_PREFIXES]
)
ENV_RULES: list[Schema] = [
    {
        "rule": _ENV_NAME_FREE,
        "message": (
            "reserved: fedkube sets this variable in the pods (torchrun rendezvous, signing keys,"
            " the store); remove it from env"
        ),
        "fieldPath": ".name",
        "reason": "FieldValueForbidden",
    },
]
"""Rules of one env entry (``spec.env_problems``): the names fedkube sets itself."""

_CREDENTIALS = _cel_list(fs.CREDENTIAL_ENV)
_NO_CREDENTIALS_ENV = (
    "!has(self.storage) || !has(self.storage.secretRef) || ("
    "(!has(self.aggregator) || !has(self.aggregator.env)"
    f" || self.aggregator.env.all(e, !(e.name in {_CREDENTIALS})))"
    f" && self.clients.all(c, !has(c.env) || c.env.all(e, !(e.name in {_CREDENTIALS}))))"
)
_GPU = "nvidia__dot__com__slash__gpu"  # CEL's escaped form of the property 'nvidia.com/gpu'
_GPU_LIMIT_AGREES = (
    "!self.gpu || !has(self.resources) || !has(self.resources.limits)"
    f" || !has(self.resources.limits.{_GPU})"
    f" || string(self.resources.limits.{_GPU}) == string(self.procsPerReplica)"
)

# Empty is allowed: a job file spells out every default, empty lists and maps included.
_SITE_WITHOUT_POD_FIELDS = (
    "!has(self.site) || ("
    + " && ".join(
        # resources is an object of known fields (no size()): empty means neither is set.
        "(!has(self.resources) || (!has(self.resources.limits) && !has(self.resources.requests)))"
        if n == "resources"
        else f"(!has(self.{n}) || size(self.{n}) == 0)"
        for n in map(to_camel, fs.SITE_POD_FIELDS)
    )
    + ")"
)
_SITES_ARE_SCOPED = (
    "!has(self.storage) || !has(self.storage.credentials) || self.storage.credentials != 'shared'"
    " || self.clients.all(c, !has(c.site))"
)

_QUORUM = "(has(self.strategy.minClients) ? self.strategy.minClients : size(self.clients))"
_BYZANTINE = "(has(self.strategy.byzantineClients) ? self.strategy.byzantineClients : 0)"
EXTRAS: dict[str, Schema] = {
    "spec": {
        "x-kubernetes-validations": [
            {
                "rule": _SITES_ARE_SCOPED,
                "message": (
                    "'shared' with site clients: a site would receive the job's own store "
                    "credential; use credentials: scoped"
                ),
                "fieldPath": ".storage.credentials",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": _NO_CREDENTIALS_ENV,
                "message": (
                    f"env sets {' or '.join(sorted(fs.CREDENTIAL_ENV))}, which come from "
                    "spec.storage.secretRef; remove them from the aggregator's and the "
                    "clients' env"
                ),
                "fieldPath": ".storage.secretRef",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": "!has(self.aggregator) || !has(self.aggregator.accumulator)"
                " || self.aggregator.accumulator != 'disk' || !has(self.strategy)"
                " || !has(self.strategy.name)"
                f" || self.strategy.name in {list(fs.DISK_ACCUMULATOR)}",
                "message": (
                    f"'disk' applies to {', '.join(fs.DISK_ACCUMULATOR)} only (the others "
                    "keep control variates or the round's updates anyway); use accumulator: "
                    "memory"
                ),
                "fieldPath": ".aggregator.accumulator",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": "!has(self.strategy) || ((!has(self.strategy.name)"
                f" || !(self.strategy.name in {list(fs.FSDP_REFUSES_STRATEGIES)}))"
                " && (!has(self.strategy.updateDtype) || self.strategy.updateDtype != 'int8'))"
                " || !self.clients.exists(c, has(c.parallelism) && has(c.parallelism.mode)"
                " && c.parallelism.mode == 'fsdp')",
                "message": (
                    "a client with parallelism.mode fsdp cannot train for "
                    f"{' or '.join(fs.FSDP_REFUSES_STRATEGIES)} nor upload int8 updates; "
                    "use mode ddp for that client, another strategy or another updateDtype"
                ),
                "fieldPath": ".clients",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": "!has(self.strategy) || !has(self.strategy.minClients)"
                " || self.strategy.minClients <= size(self.clients)",
                "message": (
                    "more than the number of clients listed in spec.clients; "
                    "lower minClients or add clients"
                ),
                "fieldPath": ".strategy.minClients",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": f"!has(self.strategy) || !has(self.strategy.name)"
                f" || self.strategy.name != 'krum' || {_QUORUM} >= 2 * {_BYZANTINE} + 3",
                "message": (
                    "krum with byzantineClients f needs a quorum of at least 2f + 3 updates "
                    "(N > 2f + 2); raise minClients (add clients) or lower byzantineClients"
                ),
                "fieldPath": ".strategy.minClients",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": f"!has(self.strategy) || !has(self.strategy.name)"
                f" || self.strategy.name != 'krum' || !has(self.strategy.krumSelect)"
                f" || self.strategy.krumSelect <= {_QUORUM} - {_BYZANTINE}",
                "message": (
                    "krumSelect is more than the quorum (minClients, or every client) minus "
                    "byzantineClients; lower krumSelect"
                ),
                "fieldPath": ".strategy.krumSelect",
                "reason": "FieldValueInvalid",
            },
        ],
    },
    "spec.strategy": {
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.serverMomentum) || self.serverMomentum == 0.0"
                " || (has(self.name) && self.name == 'fedavgm')",
                "message": (
                    "serverMomentum applies to fedavgm only; set strategy.name: fedavgm, "
                    "or remove serverMomentum"
                ),
                "fieldPath": ".serverMomentum",
                "reason": "FieldValueInvalid",
            },
            *(
                {
                    "rule": f"!has(self.{field}) || (has(self.name) && self.name in {list(names)})",
                    "message": (
                        f"{field} applies to {', '.join(names)} only; set strategy.name to one "
                        f"of them, or remove {field}"
                    ),
                    "fieldPath": f".{field}",
                    "reason": "FieldValueForbidden",
                }
                for field, names in (
                    ("beta1", fs.FEDOPT),
                    ("tau", fs.FEDOPT),
                    ("beta2", ("fedadam", "fedyogi")),
                )
            ),
            *(
                {
                    "rule": f"!has(self.{field}) || (has(self.name) && self.name == '{name}')",
                    "message": (
                        f"{field} applies to {name} only; set strategy.name to it, or remove "
                        f"{field}"
                    ),
                    "fieldPath": f".{field}",
                    "reason": "FieldValueForbidden",
                }
                for field, name in (
                    ("trimFraction", "trimmedmean"),
                    ("byzantineClients", "krum"),
                    ("krumSelect", "krum"),
                )
            ),
            *(
                {
                    "rule": f"!has(self.name) || !(self.name in {list(fs.ROBUST)}) || {absent}",
                    "message": (
                        f"{field} does not apply to {', '.join(fs.ROBUST)}, which count every "
                        f"update once and bound its pull by themselves; remove {field}"
                    ),
                    "fieldPath": f".{field}",
                    "reason": "FieldValueForbidden",
                }
                for field, absent in (
                    ("maxWeightShare", "!has(self.maxWeightShare)"),
                    ("clipNorm", "!has(self.clipNorm)"),
                    (
                        "serverLearningRate",
                        "!has(self.serverLearningRate) || self.serverLearningRate == 1.0",
                    ),
                )
            ),
            {
                "rule": "!has(self.name) || self.name != 'fedprox' || has(self.proximalMu)",
                "message": (
                    "fedprox needs proximalMu, the weight of the proximal term (e.g. 0.01); "
                    "set strategy.proximalMu"
                ),
                "fieldPath": ".proximalMu",
                "reason": "FieldValueRequired",
            },
            {
                "rule": f"!has(self.dp) || (has(self.name) && self.name == '{fs.DP}')",
                "message": f"dp applies to {fs.DP} only; set strategy.name: {fs.DP}, or remove dp",
                "fieldPath": ".dp",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": f"!has(self.name) || self.name != '{fs.DP}' || has(self.dp)",
                "message": (
                    f"{fs.DP} needs dp: set strategy.dp with noiseMultiplier, clipNorm and delta "
                    "(e.g. {noiseMultiplier: 1.0, clipNorm: 1.0, delta: 1e-5})"
                ),
                "fieldPath": ".dp",
                "reason": "FieldValueRequired",
            },
            *(
                {
                    "rule": f"!has(self.name) || self.name != '{fs.DP}' || !has(self.{field})",
                    "message": (
                        f"{field} does not apply to {fs.DP}, which weighs every client equally "
                        f"and clips with dp.clipNorm (and dp.adaptiveClipping); remove {field}"
                    ),
                    "fieldPath": f".{field}",
                    "reason": "FieldValueForbidden",
                }
                for field in ("maxWeightShare", "clipNorm", "clipQuantile")
            ),
            {
                "rule": "!has(self.clipQuantile) || has(self.clipNorm)",
                "message": (
                    "clipQuantile needs clipNorm, the first round's bound (no norm has been "
                    "measured yet); set clipNorm too, or remove clipQuantile"
                ),
                "fieldPath": ".clipQuantile",
                "reason": "FieldValueRequired",
            },
        ],
    },
    "spec.strategy.dp": {
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.adaptiveClipping)"
                " || 2.0 * self.adaptiveClipping.clippedCountStddev > self.noiseMultiplier",
                "message": (
                    "must be more than noiseMultiplier/2: the noised count of unclipped updates "
                    "spends privacy budget, and below that it would need all of it; raise "
                    "clippedCountStddev (e.g. expected clients per round / 20, at least "
                    "noiseMultiplier) or lower noiseMultiplier"
                ),
                "fieldPath": ".adaptiveClipping.clippedCountStddev",
                "reason": "FieldValueInvalid",
            },
        ],
    },
    "spec.clients": {
        # A map list: the API server itself refuses duplicate names (cheaper than a CEL
        # rule, which would cost O(clients^2)), and server-side apply merges per client.
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    },
    # Copies, so the YAML holds the rules twice rather than an anchor and an alias.
    "spec.aggregator.env[]": {"x-kubernetes-validations": [dict(r) for r in ENV_RULES]},
    "spec.clients[].env[]": {"x-kubernetes-validations": [dict(r) for r in ENV_RULES]},
    "spec.clients[]": {
        "x-kubernetes-validations": [
            {
                "rule": _SITE_WITHOUT_POD_FIELDS,
                "message": (
                    "set for a site client, whose pods the coordinator does not run; remove "
                    "resources, nodeSelector, tolerations, env, volumes and volumeMounts"
                ),
                "fieldPath": ".site",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": _GPU_LIMIT_AGREES,
                "message": (
                    "resources.limits['nvidia.com/gpu'] disagrees with procsPerReplica (one GPU "
                    "per process); remove the limit (gpu: true sets it) or make them equal"
                ),
                "fieldPath": ".resources.limits",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": " && ".join(
                    f"self.name != '{n}'" for n in sorted(fs.RESERVED_CLIENT_NAMES)
                ),
                "message": (
                    "reserved: "
                    + "; ".join(why for _, why in sorted(fs.RESERVED_CLIENT_NAMES.items()))
                    + "; rename the client"
                ),
                "fieldPath": ".name",
                "reason": "FieldValueInvalid",
            },
        ],
    },
    "status.conditions": {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
}
"""Kubernetes-only schema additions by path (``a.b`` for properties, ``a[]`` for items)."""

PRINTER_COLUMNS: list[Schema] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Round",
        "type": "string",
        "jsonPath": ".status.progress",
        "description": "Rounds committed out of the total",
    },
    {
        "name": "Accuracy",
        "type": "number",
        "jsonPath": ".status.lastRound.metrics.accuracy",
        "description": "Accuracy of the newest committed global model",
    },
    {
        "name": "Epsilon",
        "type": "number",
        "jsonPath": ".status.lastRound.epsilon",
        "description": "Client-level privacy spent so far (dpfedavg jobs only)",
        # -o wide only: every other job would show <none> in the default view
        "priority": 1,
    },
    {
        "name": "Clients",
        "type": "integer",
        "jsonPath": ".status.activeClients",
        "description": "Clients neither dropped nor failed",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


# ---- rewriting pydantic's JSON schema ---------------------------------------------------------

_KEY_ORDER = [
    "description", "type", "format", "nullable", "enum", "default",
    "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "maxProperties",
    "required", "properties", "additionalProperties", "items",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-validations",
]  # fmt: skip
_DROPPED = {"title", "$defs"}


def structural(schema: Schema, root: str = "") -> Schema:
    """A pydantic JSON schema as a structural OpenAPI v3 schema (no extras applied)."""
    return _convert(schema, schema.get("$defs", {}), root)


def _convert(node: Schema, defs: Schema, path: str) -> Schema:
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").removeprefix("#/$defs/")
        if name not in defs:
            raise SchemaNotStructural(f"{path or '<root>'}: unresolvable $ref {name!r}")
        return _convert({**defs[name], **node}, defs, path)
    if "anyOf" in node:
        options = node.pop("anyOf")
        others = [o for o in options if o != {"type": "null"}]
        if len(others) != 1 or len(others) == len(options):
            raise SchemaNotStructural(
                f"{path or '<root>'}: only 'X | None' unions map to a structural schema, "
                f"got anyOf {options}; use one type (or a discriminated sub-object)"
            )
        if node.get("default", ...) is None:
            del node["default"]
        return {**_convert({**others[0], **node}, defs, path), "nullable": True}

    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "description":
            out[key] = " ".join(value.replace("``", "`").split())
        elif key == "default":
            if value is not None:
                out[key] = value
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {
                name: _convert(sub, defs, f"{path}.{name}" if path else name)
                for name, sub in value.items()
            }
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs, f"{path}{{}}")
            elif value is True and not node.get("x-kubernetes-preserve-unknown-fields"):
                raise SchemaNotStructural(
                    f"{path}: free-form objects need x-kubernetes-preserve-unknown-fields "
                    "(use fedcore.spec.K8sObject)"
                )
            # False: the API server prunes unknown fields (kubectl refuses them, strict mode).
        else:
            out[key] = value

    kind = out.get("type")
    if out.get("x-kubernetes-int-or-string"):
        return _ordered(out)  # structural schemas give int-or-string no type
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = kind = "object"
    if kind is None:
        raise SchemaNotStructural(f"{path or '<root>'}: every schema node needs a type: {node}")
    if kind == "integer":
        out.setdefault("format", "int64")
    elif kind == "number":
        out.setdefault("format", "double")
    elif kind == "string" and "enum" in out:
        # Exact, and it lets CEL price rules that read the field.
        out.setdefault("maxLength", max(len(v) for v in out["enum"]))
    elif kind == "string" and not ("maxLength" in out or "format" in out):
        raise SchemaNotStructural(
            f"{path}: string without a bound; give it max_length in fedcore/spec.py "
            "(CEL cost estimation needs every string bounded)"
        )
    elif kind == "array" and "maxItems" not in out:
        raise SchemaNotStructural(
            f"{path}: list without a bound; give it max_length in fedcore/spec.py "
            "(CEL cost estimation needs every list bounded)"
        )
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _apply_extras(node: Schema, extras: dict[str, Schema], path: str = "") -> set[str]:
    """Merge ``extras`` into ``node`` in place; return the paths that were found."""
    found: set[str] = set()
    if path in extras:
        merged = _ordered({**node, **extras[path]})
        node.clear()
        node.update(merged)
        found.add(path)
    for name, sub in node.get("properties", {}).items():
        found |= _apply_extras(sub, extras, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        found |= _apply_extras(node["items"], extras, f"{path}[]")
    return found


# ---- the CRD ---------------------------------------------------------------------------------


def openapi_schema() -> Schema:
    """The whole object's schema: apiVersion, kind, metadata, spec, status, root rules."""
    spec = structural(fs.FederatedJobSpec.model_json_schema(by_alias=True, mode="validation"))
    status = structural(fs.FederatedJobStatus.model_json_schema(by_alias=True, mode="validation"))
    spec["description"] = "What to train, where the clients run, and how rounds are combined."
    status["description"] = "Written by the operator; read with kubectl get/describe."
    root: Schema = {
        "description": (
            "A federated training run: each client trains one model on its private data and"
            " an aggregator combines their updates, round by round, through object storage."
        ),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Bounding the name lets CEL cost estimation price the root rules that read it.
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 253}},
            },
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": ROOT_RULES,
    }
    missing = EXTRAS.keys() - _apply_extras(root, EXTRAS)
    if missing:
        raise SchemaNotStructural(f"extras attach to paths the models no longer have: {missing}")
    return root


def crd() -> Schema:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "fedkube", "app.kubernetes.io/part-of": "fedkube"},
        },
        "spec": {
            "group": fs.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": fs.KIND,
                "listKind": f"{fs.KIND}List",
                "plural": fs.PLURAL,
                "singular": fs.KIND.lower(),
                "shortNames": ["fj", "fedjob"],
                "categories": ["fedkube"],
            },
            "preserveUnknownFields": False,
            "versions": [
                {
                    "name": fs.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    """The CRD file's text (both copies are byte-identical)."""
    body = yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def repo_root() -> Path:
    """The repository holding this source file (operator/fedop/crd.py)."""
    return Path(__file__).resolve().parents[2]


def generated() -> dict[Path, str]:
    """Every generated file (relative to the repository root) with its text: both copies of
    the FederatedJob CRD and of the FederatedSite CRD (``fedop.site_crd``)."""
    from fedop import site_crd

    job, site = render(), site_crd.render()
    return {
        **dict.fromkeys(OUTPUTS, job),
        **dict.fromkeys(site_crd.OUTPUTS, site),
    }


def stale(root: Path) -> list[Path]:
    """Outputs under ``root`` whose content differs from what the models generate."""
    return [
        p
        for p, text in generated().items()
        if not (root / p).is_file() or (root / p).read_text() != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedop.crd", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when a committed copy is stale")
    mode.add_argument("--stdout", action="store_true", help="print the CRD instead of writing it")
    parser.add_argument(
        "--root", type=Path, default=None, help="repository root (default: this one)"
    )
    args = parser.parse_args(argv)
    root = args.root or repo_root()
    if args.stdout:
        sys.stdout.write("---\n".join(dict.fromkeys(generated().values())))
        return 0
    if args.check:
        old = stale(root)
        for path in old:
            print(f"{path} is stale: run `make crds` and commit the result", file=sys.stderr)
        return 1 if old else 0
    for path, text in generated().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
