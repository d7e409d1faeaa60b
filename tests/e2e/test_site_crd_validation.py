"""The FederatedSite CRD and ``fedcore.site_spec`` agree: what one refuses, so does the other.

Server-side dry runs against the shared test control plane (the ``cluster`` fixture): the API
server runs the whole validation (schema, CEL rules, strict fields) and stores nothing.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcore import site_spec as ss
from fedcore.errors import SpecError
from tests.cluster.handle import ClusterHandle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "federatedsite.yaml"
Obj = dict[str, Any]


def make_site(**spec: Any) -> Obj:
    body: Obj = {"bundleSecretRef": {"name": "hospital-b-join"}, "replicas": 2}
    body.update(copy.deepcopy(spec))
    return {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedSite",
        "metadata": {"name": "digits"},
        "spec": body,
    }


@pytest.fixture(scope="module")
def site_namespace(cluster: ClusterHandle) -> Iterator[str]:
    cluster.run_kubectl("apply", "--server-side", "--force-conflicts",
                        "--field-manager=fedkube-e2e", "-f", str(CRD))  # fmt: skip
    cluster.run_kubectl("wait", "--for=condition=Established",
                        "crd/federatedsites.fedkube.io", "--timeout=60s")  # fmt: skip
    name = cluster.create_namespace(f"site-crd-{uuid.uuid4().hex[:4]}")
    yield name
    cluster.delete_namespace(name)


def dry_run(cluster: ClusterHandle, namespace: str, obj: Obj) -> subprocess.CompletedProcess[str]:
    return cluster.run_kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-",
        input=json.dumps(obj), check=False,
    )  # fmt: skip


def parsed(obj: Obj) -> bool:
    try:
        ss.parse_site(obj)
    except SpecError:
        return False
    return True


CASES = [
    ("valid", make_site(), True, ""),
    (
        "valid-with-pods",
        make_site(
            gpu=True,
            procsPerReplica=4,
            template={
                "resources": {"limits": {"nvidia.com/gpu": 4}},
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                "volumes": [{"name": "data", "hostPath": {"path": "/data"}}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            },
        ),
        True,
        "",
    ),
    ("no-bundle", {**make_site(), "spec": {"replicas": 1}}, False, "bundleSecretRef"),
    ("zero-replicas", make_site(replicas=0), False, "replicas"),
    (
        "rendezvous-env",
        make_site(template={"env": [{"name": "PET_MASTER_ADDR", "value": "x"}]}),
        False,
        "reserved",
    ),
    (
        "store-env",
        make_site(template={"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}),
        False,
        "reserved",
    ),
    (
        "gpu-limit",
        make_site(
            gpu=True, procsPerReplica=2, template={"resources": {"limits": {"nvidia.com/gpu": 1}}}
        ),
        False,
        "procsPerReplica",
    ),
    ("unknown-field", make_site(replica=2), False, "replica"),
    ("bad-name", {**make_site(), "metadata": {"name": "9digits"}}, False, "metadata.name"),
]


@pytest.mark.parametrize(
    ("obj", "accepted", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_api_server_and_the_models_agree_on_a_federatedsite(
    cluster: ClusterHandle, site_namespace: str, obj: Obj, accepted: bool, words: str
) -> None:
    result = dry_run(cluster, site_namespace, obj)

    assert (result.returncode == 0) == accepted, result.stderr
    assert parsed(obj) == accepted
    assert words in result.stderr
