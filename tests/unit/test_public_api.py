"""The public surface of fedcore is deliberate: pinned here, and light to import."""

from __future__ import annotations

import subprocess
import sys

import fedcore

EXPECTED = [
    "FedcoreError",
    "FederatedJob",
    "FederatedJobSpec",
    "IntegrityError",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectStore",
    "RoundProtocolError",
    "SpecError",
    "StoreError",
    "StoreUnavailable",
    "SupervisedTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TrainConfig",
    "UpdateRejected",
    "__version__",
    "job_prefix",
    "load_job",
    "load_task",
    "open_store",
    "parse_job",
    "seeded",
]


def test_public_names_are_pinned_and_sorted() -> None:
    assert fedcore.__all__ == EXPECTED
    assert fedcore.__all__ == sorted(fedcore.__all__)


def test_every_public_name_resolves() -> None:
    for name in fedcore.__all__:
        assert getattr(fedcore, name) is not None, name


def test_importing_fedcore_loads_neither_torch_nor_boto3() -> None:
    code = (
        "import sys, fedcore, fedcore.spec, fedcore.layout, fedcore.store; "
        "print(sorted(m for m in ('torch', 'boto3', 'kopf', 'kubernetes') if m in sys.modules))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"
