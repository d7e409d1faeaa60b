"""Generate the FederatedSite CRD from the pydantic models in ``fedcore.site_spec``.

The same rewriting as the FederatedJob's (``fedop.crd``: inlined ``$ref``, ``nullable``, every
string and list bounded), plus the rules only Kubernetes understands: the reserved env names
of the site's pods and the GPU limit that must match ``procsPerReplica``. ``python -m
fedop.crd`` writes both CRDs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fedcore import site_spec as ss
from fedcore import spec as fs
from fedop.crd import (
    _GPU,
    HEADER,
    Schema,
    SchemaNotStructural,
    _apply_extras,
    _cel_list,
    structural,
)

CRD_NAME = f"{ss.PLURAL}.{fs.API_GROUP}"
OUTPUTS = (Path("crds/federatedsite.yaml"), Path("charts/fedkube/crds/federatedsite.yaml"))

_ENV_RULE = " && ".join(
    [f"!(self.name in {_cel_list(ss.SITE_RESERVED_ENV)})"]
    + [f"!self.name.startsWith('{p}')" for p in fs.RESERVED_ENV_PREFIXES]
)
EXTRAS: dict[str, Schema] = {
    "spec": {
        "x-kubernetes-validations": [
            {
                "rule": "!self.gpu || !has(self.template) || !has(self.template.resources)"
                " || !has(self.template.resources.limits)"
                f" || !has(self.template.resources.limits.{_GPU})"
                f" || string(self.template.resources.limits.{_GPU})"
                " == string(self.procsPerReplica)",
                "message": (
                    "template.resources.limits['nvidia.com/gpu'] disagrees with procsPerReplica "
                    "(one GPU per process); remove the limit (gpu: true sets it) or make "
                    "them equal"
                ),
                "fieldPath": ".template.resources.limits",
                "reason": "FieldValueInvalid",
            }
        ]
    },
    "spec.template.env[]": {
        "x-kubernetes-validations": [
            {
                "rule": _ENV_RULE,
                "message": (
                    "reserved: fedkube sets this variable in the site's pods (torchrun "
                    "rendezvous, signing keys, the store credentials from the bundle); remove "
                    "it from env"
                ),
                "fieldPath": ".name",
                "reason": "FieldValueForbidden",
            }
        ]
    },
    "status.conditions": {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
}

PRINTER_COLUMNS: list[Schema] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Job", "type": "string", "jsonPath": ".status.job"},
    {"name": "Client", "type": "string", "jsonPath": ".status.client"},
    {
        "name": "Round",
        "type": "integer",
        "jsonPath": ".status.currentRound",
        "description": "Newest round the coordinator committed (verified)",
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def openapi_schema() -> Schema:
    spec = structural(ss.FederatedSiteSpec.model_json_schema(by_alias=True, mode="validation"))
    status = structural(ss.FederatedSiteStatus.model_json_schema(by_alias=True, mode="validation"))
    spec["description"] = (
        "The join bundle to run and how this site's own pods look (the coordinator never sees it)."
    )
    status["description"] = "Written by the site's operator; read with kubectl get/describe."
    root: Schema = {
        "description": (
            "A site's share of a coordinator's FederatedJob, run in the site's own cluster: its"
            " DDP group trains on the site's data and talks to nothing but the job's bucket."
        ),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 253}},
            },
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.matches('{fs.JOB_NAME}')",
                "message": (
                    "must start with a lowercase letter and hold only lowercase letters, digits"
                    " and '-' (it prefixes the group's Service name, a DNS-1035 label)"
                ),
                "fieldPath": ".metadata.name",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": f"size(self.metadata.name) <= {fs.MAX_JOB_NAME}",
                "message": f"too long: use at most {fs.MAX_JOB_NAME} characters",
                "fieldPath": ".metadata.name",
                "reason": "FieldValueInvalid",
            },
        ],
    }
    missing = EXTRAS.keys() - _apply_extras(root, EXTRAS)
    if missing:
        raise SchemaNotStructural(f"extras attach to paths the models no longer have: {missing}")
    return root


def crd() -> Schema:
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
                "kind": ss.KIND,
                "listKind": f"{ss.KIND}List",
                "plural": ss.PLURAL,
                "singular": ss.KIND.lower(),
                "shortNames": ["fsite"],
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
    body = yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER.replace("fedcore/spec.py", "fedcore/site_spec.py") + body
