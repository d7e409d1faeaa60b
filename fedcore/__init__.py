"""fedcore: the federated runtime of fedkube.

It runs inside the cluster's pods and on a laptop alike. This module is the public surface
(``__all__``, pinned by a test). Names that need torch (the task API) load on first use, so
``import fedcore`` stays light: the operator imports ``fedcore.spec``, ``fedcore.layout`` and
``fedcore.store`` and must never pull torch into its image.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedcore.errors import (
    FedcoreError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RoundProtocolError,
    SpecError,
    StoreError,
    StoreUnavailable,
    TaskError,
    UpdateRejected,
)
from fedcore.spec import FederatedJob, FederatedJobSpec, job_prefix, load_job, parse_job
from fedcore.store import ObjectStore, open_store

if TYPE_CHECKING:
    from fedcore.tasks import SupervisedTask, Task, TaskContext, TrainConfig, load_task, seeded

__version__ = "0.1.0"

_LAZY = {
    "SupervisedTask": "fedcore.tasks",
    "Task": "fedcore.tasks",
    "TaskContext": "fedcore.tasks",
    "TrainConfig": "fedcore.tasks",
    "load_task": "fedcore.tasks",
    "seeded": "fedcore.tasks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
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
